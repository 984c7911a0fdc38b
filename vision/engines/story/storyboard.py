"""The storyboard: every frame of a round in one grid image."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from vision.engines.story.config import StoryError

STORYBOARD_GAP = 4  # white gutter (pixels) around and between storyboard tiles
STORYBOARD_MAX_WIDTH = 4096  # tiles are scaled down so that a storyboard is at most this wide


def storyboard_columns(n: int) -> int:
    """Columns of the storyboard grid for ``n`` frames: ``min(n, max(4, ceil(sqrt(n))))``.

    A comic-strip row of 4 up to 16 frames (1 -> 1x1, 3 -> 3x1, 7 -> 4x2, 12 -> 4x3, 16 -> 4x4), then a
    near-square grid (17 -> 5x4, 100 -> 10x10, 200 -> 15x14). Frames fill rows left to right; the
    unused cells of the last row stay white.
    """
    if n < 1:
        raise StoryError("a storyboard needs at least one frame")
    return min(n, max(4, math.ceil(math.sqrt(n))))


def storyboard_layout(n: int) -> tuple[int, int]:
    """(rows, columns) of the storyboard for ``n`` frames."""
    cols = storyboard_columns(n)
    return math.ceil(n / cols), cols


def make_storyboard(frames: Sequence[np.ndarray], gap: int = STORYBOARD_GAP,
                    max_width: int = STORYBOARD_MAX_WIDTH) -> np.ndarray:
    """Grid of frames (RGB uint8, all the same size) with a white ``gap`` around every tile.

    Tile (i) sits at row ``i // cols``, column ``i % cols``, top-left corner
    ``(gap + row * (h + gap), gap + col * (w + gap))``. Tiles are scaled down (never up) so that the
    whole grid is at most ``max_width`` pixels wide.
    """
    rows, cols = storyboard_layout(len(frames))
    h, w = frames[0].shape[:2]
    scale = min(1.0, (max_width - gap * (cols + 1)) / (cols * w))
    if scale < 1.0:
        h, w = max(1, int(h * scale)), max(1, int(w * scale))
    board = np.full((gap + rows * (h + gap), gap + cols * (w + gap), 3), 255, dtype=np.uint8)
    for i, frame in enumerate(frames):
        if frame.shape[:2] != (h, w):
            frame = np.asarray(Image.fromarray(frame).resize((w, h), Image.BICUBIC))
        r, c = divmod(i, cols)
        y, x = gap + r * (h + gap), gap + c * (w + gap)
        board[y : y + h, x : x + w] = frame
    return board
