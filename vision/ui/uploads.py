"""Image uploads checked before Gradio decodes them: a bad file is a message naming the uploaded file.

Gradio's ``Image`` and ``ImageEditor`` decode an upload in their ``preprocess``; a 0-byte, truncated or
non-image file then ends in Gradio's internal "Could not preprocess input component ..." (with a
traceback in the log), and a 20000x20000 PNG is decoded (seconds of CPU, gigabytes) before anything
refuses it. The helpers here check every uploaded file first with :func:`vision.imaging.load_image`,
which reads the header and refuses an image over the pixel limit *before* decoding it, and raise a
``gr.Error`` that names the file as the user uploaded it (never Gradio's temporary path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vision.imaging import ImageError, load_image
from vision.ui.errors import to_gr_error
from vision.ui.notices import warn


def check_image_file(path: str, name: str | None = None, what: str = "image") -> None:
    """Raise :class:`ImageError` ``"<what>: <name>: <reason>"`` unless ``path`` is a usable image.

    ``name``: the file name the user uploaded (default: the path's own name). Images over the pixel
    limit are refused on their header, before decoding.
    """
    name = name or Path(path).name
    try:
        load_image(path)
    except ImageError as err:
        raise ImageError(f"{what}: {str(err).replace(str(path), name)}") from None


def _file_of(value: Any) -> tuple[str, str] | None:
    """(path, uploaded name) of a FileData model or dict as Gradio passes it raw; None for no file."""
    if value is None:
        return None
    if isinstance(value, dict):
        path, orig = value.get("path"), value.get("orig_name")
    else:
        path, orig = getattr(value, "path", None), getattr(value, "orig_name", None)
    return (str(path), orig or Path(str(path)).name) if path else None


def check_files(values: list[Any], what: str) -> None:
    """:func:`check_image_file` on every file among ``values`` (FileData or dicts; None skipped)."""
    for value in values:
        found = _file_of(value)
        if found is not None:
            check_image_file(*found, what=what)


def check_before_decoding(component: Any, what: str) -> Any:
    """Make a ``gr.Image`` or ``gr.ImageEditor`` check every uploaded file (:func:`check_image_file`)
    before its own ``preprocess`` decodes it; a bad file is a ``gr.Error`` naming it, ``what`` naming the
    input ("prompt image"). Returns the component. (The check wraps the instance's ``preprocess``: a
    subclass would make Gradio write a ``.pyi`` stub beside this module at every import.)"""
    decode = component.preprocess

    def preprocess(payload: Any) -> Any:
        if payload is not None and getattr(payload, "id", None) is None:  # editor blobs (id set) are not files
            files = [payload.background, *(payload.layers or []), payload.composite] \
                if hasattr(payload, "background") else [payload]
            try:
                check_files(files, what)
            except ImageError as err:
                raise to_gr_error(err) from None
        return decode(payload)

    component.preprocess = preprocess
    return component


def checked_prompt_upload(path: str | None) -> tuple[Any, str]:
    """(the prompt editor's new value, the status line) for a file chosen with the prompt's upload button.

    The editor's own upload ignores a file its browser code cannot decode (0-byte, truncated, text named
    .png): no event reaches the server and the previous prompt stays. The button sends every file here
    first: a good one becomes the editor's background (a plain image, as the Examples set it); a bad one
    clears the editor, so no stale prompt is segmented, and the status names the file and the reason.
    """
    if not path:
        return None, ""
    name = Path(path).name  # Gradio keeps the uploaded file's name in its cache path
    try:
        check_image_file(path, name, what="prompt image")
    except ImageError as err:
        message = f"{err}. The previous prompt was cleared: upload another image."
        warn(message)
        return None, f"⚠️ {message}"
    return path, f"Prompt image: {name}"


def name_uploads(message: str, paths: list[str]) -> str:
    """``message`` with each of ``paths`` (Gradio's temporary copies) replaced by its file name, the
    name the user uploaded it under (Gradio keeps it as the copy's name)."""
    for path in sorted({p for p in paths if p}, key=len, reverse=True):
        message = message.replace(str(path), Path(path).name)
    return message
