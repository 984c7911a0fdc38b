"""What a request gives back: its files in a fresh folder, written once and served from there.

Every request writes its results (downloads, and the images the page shows) into a folder of its own under
:data:`OUTPUT_DIR`, which Gradio serves in place (``gr.set_static_paths``, see :func:`serve_outputs`).
Why: Gradio 6.17 (and 6.31) stores an output image at a path named after its content hash and rewrites
that file in place on every request (``processing_utils.save_pil_to_cache``), so two requests with
identical outputs (the same photo sent twice) truncated a file that a client was downloading, and that
client received 0 bytes (seen in the 20-request load test, ``tests/test_app_load.py``). A file written
once into a folder no other request uses is never rewritten, and a static path is never copied.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import TypeVar

import numpy as np

OUTPUT_DIR = Path(tempfile.gettempdir()) / "vision-app-outputs"
OUTPUT_MAX_AGE_S = 3600  # files offered for download live an hour

C = TypeVar("C")


def _prune_outputs() -> None:
    if not OUTPUT_DIR.is_dir():
        return
    cutoff = time.time() - OUTPUT_MAX_AGE_S
    for folder in OUTPUT_DIR.iterdir():
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass


def output_folder() -> Path:
    """A fresh folder for one request's files (folders older than an hour are removed)."""
    _prune_outputs()
    folder = OUTPUT_DIR / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def serve_outputs() -> None:
    """Let Gradio serve the files under :data:`OUTPUT_DIR` where they are, never copying them into its
    cache (``gr.set_static_paths``; call it before the page is built)."""
    import gradio as gr

    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    gr.set_static_paths([OUTPUT_DIR])


def written_once(component: C) -> C:
    """Make an output component (``gr.Image``, ``gr.Gallery``, ``gr.AnnotatedImage``, ``gr.ImageSlider``)
    write the images of each value into a fresh :func:`output_folder` instead of Gradio's shared cache.

    Gradio's own ``postprocess`` does the work (formats, masks, captions), on a shallow copy of the
    component whose ``GRADIO_CACHE`` (the folder a component writes its files to) is the request's folder;
    the component itself is never changed, so concurrent requests do not interfere. Returns the component.
    """
    postprocess = component.postprocess
    component_type = type(component)

    def postprocess_into_own_folder(value):
        if value is None:
            return postprocess(value)
        own = copy.copy(component)
        own.GRADIO_CACHE = str(output_folder())
        return component_type.postprocess(own, value)

    component.postprocess = postprocess_into_own_folder
    return component


def save_png(image, folder: Path, name: str) -> str:
    """Save a PIL image or an RGB/grey array as ``folder/name.png``; return its path."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    path = folder / f"{name}.png"
    image.save(path)
    return str(path)


def mask_image(mask: np.ndarray):
    """A bool mask -> 8-bit PNG image (0 / 255); other arrays and images pass through."""
    from vision.imaging import mask_png

    return mask_png(mask) if isinstance(mask, np.ndarray) and mask.dtype == bool else mask


def safe_name(text: str, fallback: str = "item") -> str:
    """``text`` as a file-name stem: letters, digits, '-' and '_' (others become '_'), at most 40 characters."""
    keep = "".join(c if c.isalnum() or c in "-_" else "_" for c in text.strip())[:40].strip("_")
    return keep or fallback

