"""The tabs' inputs as the engines take them: Gradio values (editor, file, gallery) to images and paths,
typed numbers, points, boxes and class names to lists, each refusal naming the field."""

from __future__ import annotations

from typing import Any

import numpy as np


def require(value: Any, what: str) -> Any:
    """``value`` or a ValueError that says which input is missing."""
    if value is None or (isinstance(value, (str, list, tuple)) and not value):
        raise ValueError(f"Please provide {what}.")
    return value


def editor_image_and_mask(value: dict | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A ``gr.ImageEditor`` value (files, ``type="filepath"``, or arrays) -> (RGB image, painted mask or None).

    The image is the background (what the user uploaded) read by :func:`vision.imaging.load_image`, as the
    CLI reads it; the mask is every pixel painted on any layer (alpha > 0). An editor with nothing painted
    gives ``None``: the engine picks the region.
    """
    from vision.imaging import ImageError, load_image

    if not value or value.get("background") is None:
        raise ValueError("Please upload a prompt image (optionally paint over the concept).")
    try:
        image = load_image(value["background"])
    except ImageError as err:
        raise ImageError(f"prompt image: {err}") from None
    painted = np.zeros(image.shape[:2], dtype=bool)
    for layer in value.get("layers") or []:
        alpha = _alpha(layer)
        if alpha is not None and alpha.shape == painted.shape:
            painted |= alpha > 0
    return image, (painted if painted.any() else None)


def _alpha(layer: Any) -> np.ndarray | None:
    """The alpha channel [H, W] of an editor layer (a file or an RGBA array); None without one."""
    from PIL import Image

    if isinstance(layer, (str, bytes)) or hasattr(layer, "__fspath__"):
        with Image.open(layer) as image:
            return np.asarray(image.getchannel("A")) if "A" in image.getbands() else None
    layer = np.asarray(layer)
    return layer[..., 3] if layer.ndim == 3 and layer.shape[2] == 4 else None


def file_path(value: Any) -> str | None:
    """An uploaded file as Gradio passes it, preprocessed (a path) or raw (``{"path": ...}``) -> path."""
    if isinstance(value, dict):
        value = value.get("path")
    return str(value) if value else None


def gallery_paths(value: list | None) -> list[str]:
    """A ``gr.Gallery`` input value (``[(path, caption), ...]``) -> list of file paths."""
    return [str(item[0] if isinstance(item, (tuple, list)) else item) for item in value or []]


def parse_numbers(text: str | None, size: int, field: str) -> list[list[float]]:
    """Typed groups of numbers -> one list per group. Groups are separated by ``;`` or new lines,
    numbers by ``,`` or spaces; each group has ``size`` numbers (``size=3`` also takes ``x,y``: label 1).

    >>> parse_numbers("10,20; 30 40 0", 3, "points")
    [[10.0, 20.0, 1.0], [30.0, 40.0, 0.0]]
    """
    groups = [g.strip() for g in (text or "").replace("\n", ";").split(";") if g.strip()]
    out = []
    for group in groups:
        try:
            numbers = [float(v) for v in group.replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"{field}: {group!r} is not a list of numbers") from None
        if size == 3 and len(numbers) == 2:
            numbers.append(1.0)
        if len(numbers) != size:
            raise ValueError(f"{field}: {group!r} has {len(numbers)} numbers, expected {size}"
                             + (" (x, y and optionally a label 1/0)" if size == 3 else ""))
        out.append(numbers)
    return out


def parse_box(text: str | None, field: str = "box") -> list[float] | None:
    """``"x0, y0, x1, y1"`` -> 4 numbers; empty text -> None."""
    boxes = parse_numbers(text, 4, field)
    if len(boxes) > 1:
        raise ValueError(f"{field}: one box only, got {len(boxes)}")
    return boxes[0] if boxes else None


def append_point(points_text: str | None, x: int, y: int, label: int) -> str:
    """A click added to typed points (``"x, y, label"`` groups separated by ``;``, as :func:`parse_numbers`
    reads them)."""
    return "; ".join(filter(None, [(points_text or "").strip(), f"{x}, {y}, {label}"]))


CLASS_SYNTAX = "classes separated by ';', synonyms of a class by '|'"
CLASS_EXAMPLE = "cat|kitten; grass; background|sky"


def parse_class_text(text: str | None) -> list[list[str]]:
    """Class names typed in a textbox -> one list of names per class, in the CLI's syntax (``--labels``):
    ``;`` separates classes and ``|`` a class's synonyms (``"cat|kitten; grass"`` -> ``[["cat", "kitten"],
    ["grass"]]``). An empty text gives ``[]``; a line break is refused (ValueError): it is no separator
    in that syntax, and reading it as one would make the textbox and the CLI disagree.
    """
    from vision.engines.trident.classes import parse_class_text as parse

    text = (text or "").strip()
    if "\n" in text or "\r" in text:
        raise ValueError(f"Class names: write them on one line, {CLASS_SYNTAX} (e.g. '{CLASS_EXAMPLE}'); "
                         "a line break does not separate classes.")
    return parse(text)
