"""The tabs' examples: skimage.data photographs as files, and the example buttons that fill a form."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

APP_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket")  # skimage.data photographs used as examples


def sample_paths(names: tuple[str, ...] = APP_SAMPLES, max_side: int | None = None) -> dict[str, str]:
    """skimage.data photographs written once as PNG files (Gradio examples take files)."""
    from PIL import Image

    from vision.imaging import sample_image

    folder = Path(tempfile.gettempdir()) / "vision-app-samples"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        suffix = f"-{max_side}" if max_side else ""
        path = folder / f"{name}{suffix}.png"
        if not path.is_file():
            image = Image.fromarray(sample_image(name))
            if max_side:
                image.thumbnail((max_side, max_side))
            tmp = path.with_suffix(f".{os.getpid()}.tmp.png")
            image.save(tmp)
            os.replace(tmp, path)
        out[name] = str(path)
    return out


def example_button(label: str, row: list, outputs: list, elem_id: str):
    """One example as a button whose click fills ``outputs`` with ``row`` (the label says what it holds).

    A button, not ``gr.Examples``: in a tab mounted after the page loads, Gradio 6.17's examples table
    leaves blank every cell whose component another tab's table showed first (a page error "reading '0'"
    per cell; the Generate and Story rows were blank). Returns the ``gr.Button``."""
    import gradio as gr

    button = gr.Button(label, size="sm", elem_id=elem_id)
    button.click(lambda: tuple(row), None, outputs, queue=False, api_visibility="undocumented")
    return button
