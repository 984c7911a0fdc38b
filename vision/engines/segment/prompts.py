"""The Segment engine's prompts: clicks and a box in image pixels, checked with messages naming the field."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Point = tuple[float, float, int]  # x, y in pixels; label 1 = foreground, 0 = background
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


class SegmentError(ValueError):
    """An input the Segment engine cannot use; the message names the field and says why."""


def _numbers(values: Sequence[Any], n: int, field_name: str) -> list[float]:
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != n or not all(math.isfinite(v) for v in numbers):
        raise SegmentError(f"{field_name}: expected {n} finite numbers, got {values!r}")
    return numbers


def check_points(points: Sequence[Sequence[Any]], size: tuple[int, int], max_points: int) -> list[Point]:
    """Validated clicks: (x, y[, label]) with 0 <= x < W, 0 <= y < H; the label defaults to 1."""
    height, width = size
    if len(points) > max_points:
        raise SegmentError(f"points: {len(points)} given, at most {max_points}")
    out: list[Point] = []
    for i, p in enumerate(points):
        values = list(p)
        if len(values) == 2:
            values.append(1)
        x, y, label = _numbers(values, 3, f"points[{i}]")
        if label not in (0, 1):
            raise SegmentError(f"points[{i}]: label {label:g} must be 1 (foreground) or 0 (background)")
        if not (0 <= x < width and 0 <= y < height):
            raise SegmentError(f"points[{i}]: ({x:g}, {y:g}) is outside the {width}x{height} image "
                               f"(x in 0..{width - 1}, y in 0..{height - 1})")
        out.append((x, y, int(label)))
    return out


def check_box(box: Sequence[Any] | None, size: tuple[int, int]) -> Box | None:
    """A validated box (x0, y0, x1, y1) with x0 < x1, y0 < y1, inside [0, W] x [0, H]."""
    if box is None:
        return None
    x0, y0, x1, y1 = _numbers(list(box), 4, "box")
    height, width = size
    if x1 <= x0 or y1 <= y0:
        raise SegmentError(f"box: ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has zero area (x1 must exceed x0 and y1 exceed y0)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise SegmentError(f"box: ({x0:g}, {y0:g}, {x1:g}, {y1:g}) extends outside the {width}x{height} image")
    return (x0, y0, x1, y1)
