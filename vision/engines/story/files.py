"""The output folder: file names, atomic PNG/JSON writes and reads."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "vision-story/1"
STORYBOARD = "storyboard.png"


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_png(path: Path, image: np.ndarray) -> None:
    atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"))


def save_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True)
    atomic_write(path, lambda f: f.write(text), mode="w")


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def frame_name(i: int, n: int) -> str:
    return f"frame_{i:0{max(3, len(str(n - 1)))}d}.png"


def round_dir(r: int) -> str:
    return f"round_{r:02d}"
