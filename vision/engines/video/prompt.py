"""What the video engine follows (:class:`VideoPrompt`) and its checks against the video.

One of:

* ``exemplar``: an image prompt as the image-prompt engine takes it (an image, a ``Prompt(image,
  mask=..., box=...)``, a ``Concept`` of several shots, several named concepts): the concept is found in
  every frame (``track="exemplar"``) or on frame ``frame`` (``track="sam2"``, which then propagates it);
* ``mask``: the object's mask (bool [H, W] array, image or path; nonzero = object) on frame ``frame``
  (DAVIS' semi-supervised protocol gives the first frame's);
* ``points`` ((x, y) pixels, with ``labels``: 1 = object, 0 = background; default all 1) and/or
  ``box`` (x0, y0, x1, y1 pixels) on frame ``frame``: SAM turns them into the object's mask.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vision.engines.video.config import VideoError
from vision.imaging import ImageError, load_mask
from vision.videoio import VideoInfo


@dataclass
class VideoPrompt:
    """The object to follow (see the module docstring); ``frame`` is a frame index of the source video."""

    exemplar: Any = None
    mask: Any = None
    points: Sequence[Sequence[float]] = ()
    labels: Sequence[int] | None = None
    box: Sequence[float] | None = None
    frame: int = 0

    @property
    def kind(self) -> str:
        """``"exemplar"``, ``"mask"``, ``"points"`` or ``"box"`` (points with a box count as points)."""
        if self.exemplar is not None:
            return "exemplar"
        if self.mask is not None:
            return "mask"
        return "points" if len(self.points) else "box"

    @property
    def point_labels(self) -> list[int]:
        return [1] * len(self.points) if self.labels is None else [int(v) for v in self.labels]

    def check(self, info: VideoInfo) -> VideoPrompt:
        """The prompt itself when it fits the video; else :class:`VideoError` naming the video and field."""
        given = [name for name, present in (("exemplar", self.exemplar is not None), ("mask", self.mask is not None),
                                            ("points/box", len(self.points) > 0 or self.box is not None)) if present]
        if not given:
            raise VideoError("prompt: give an exemplar image, a mask, a click (point) or a box of the object")
        if len(given) > 1:
            raise VideoError(f"prompt: give one of exemplar, mask or points/box, not {' and '.join(given)}")
        if not isinstance(self.frame, (int, np.integer)) or not 0 <= self.frame < info.count:
            raise VideoError(f"{info.path}: prompt frame {self.frame!r} does not exist (frames 0..{info.count - 1})")
        if self.kind in ("points", "box"):
            self._check_clicks(info)
        return self

    def _check_clicks(self, info: VideoInfo) -> None:
        where = f"{info.path} (frame {self.frame}, {info.width}x{info.height} pixels)"
        labels = self.point_labels
        if len(labels) != len(self.points):
            raise VideoError(f"prompt: {len(labels)} labels for {len(self.points)} points")
        if any(v not in (0, 1) for v in labels):
            raise VideoError(f"prompt: point labels are 1 (object) or 0 (background), got {labels}")
        for point in self.points:
            x, y = _numbers(point, 2, "point")
            if not (0 <= x < info.width and 0 <= y < info.height):
                raise VideoError(f"point {x:g},{y:g} is outside the frame of {where}")
        if self.box is not None:
            x0, y0, x1, y1 = _numbers(self.box, 4, "box")
            if x1 <= x0 or y1 <= y0:
                raise VideoError(f"box {self.box} has no area: it is x0,y0,x1,y1 with x1 > x0 and y1 > y0")
            if x1 <= 0 or y1 <= 0 or x0 >= info.width or y0 >= info.height:
                raise VideoError(f"box {x0:g},{y0:g},{x1:g},{y1:g} is outside the frame of {where}")
        if not any(labels) and self.box is None:
            raise VideoError("prompt: every point is a background point (label 0): click on the object too")

    def load_mask(self, info: VideoInfo) -> np.ndarray:
        """The prompt mask as bool [H, W] of the video's frame size (:class:`VideoError` when it is another
        size or empty)."""
        name = str(self.mask) if isinstance(self.mask, (str, os.PathLike)) else "prompt mask"
        try:
            mask = load_mask(self.mask)
        except (ImageError, OSError) as err:
            raise VideoError(f"{name}: {err}") from None
        if mask.shape != (info.height, info.width):
            raise VideoError(f"{name}: {mask.shape[1]}x{mask.shape[0]} pixels, but the frames of {info.path} are "
                             f"{info.width}x{info.height}")
        if not mask.any():
            raise VideoError(f"{name}: the mask is empty (no pixel set): mark the object on frame {self.frame}")
        return mask


def _numbers(values: Sequence[Any], n: int, what: str) -> list[float]:
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != n or not np.all(np.isfinite(numbers)):
        raise VideoError(f"a {what} is {n} numbers in pixels, got {values!r}")
    return numbers
