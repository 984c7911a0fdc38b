"""Few-shot segmentation metrics: class mIoU and FB-IoU (the FSS convention) and boundary IoU.

Each episode contributes a binary prediction and a binary ground truth of its query image (pixels
marked ignored, PASCAL's 255 boundary, are left out of every count). Per class, a 2x2
:class:`vision.metrics.ConfusionMatrix` (background 0 / foreground 1) accumulates the pixels of all of
the class's episodes, as HSNet's and Matcher's evaluators do:

* class IoU = foreground intersection / foreground union summed over the class's episodes;
* **mIoU** = the mean of the class IoUs over the classes evaluated;
* **FB-IoU** = the mean of foreground IoU and background IoU, each summed over every episode of
  every class;
* **bIoU** (boundary IoU, Cheng et al. 2021, as PerSAM reports it on PerSeg): the boundary of a mask is
  the mask minus its erosion by ``d = max(1, round(0.02 x image diagonal))`` pixels (3x3 steps, the
  outside of the image counting as background); boundary IoU = |B(pred) & B(gt)| / |B(pred) | B(gt)|,
  accumulated per class like the IoU and averaged over classes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from vision.metrics import IGNORE_INDEX, ConfusionMatrix

BOUNDARY_DILATION_RATIO = 0.02


def boundary_width(shape: tuple[int, int], ratio: float = BOUNDARY_DILATION_RATIO) -> int:
    """Boundary width d in pixels for an [H, W] image: ``max(1, round(ratio x diagonal))``."""
    return max(1, int(round(ratio * math.hypot(shape[0], shape[1]))))


def mask_boundary(mask: np.ndarray, ratio: float = BOUNDARY_DILATION_RATIO) -> np.ndarray:
    """The inner boundary band of a bool [H, W] mask: pixels of the mask within d pixels (3x3 erosion
    steps) of the background or of the image border; d from :func:`boundary_width`."""
    import cv2

    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask.astype(np.uint8), 1)  # the border counts as background
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=boundary_width(mask.shape, ratio))
    return mask & ~eroded[1:-1, 1:-1].astype(bool)


def _binary(name: str, mask: np.ndarray) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a [H, W] mask, got shape {arr.shape}")
    return arr.astype(bool)


class FewShotMeter:
    """Accumulates episodes per class; ``boundary=True`` also accumulates boundary IoU."""

    def __init__(self, boundary: bool = False, ratio: float = BOUNDARY_DILATION_RATIO):
        self.boundary = boundary
        self.ratio = ratio
        self.matrices: dict[str, ConfusionMatrix] = {}
        self.boundary_counts: dict[str, np.ndarray] = {}  # class -> [intersection, union]
        self.episodes: dict[str, int] = {}

    def update(self, name: str, pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> dict:
        """Add one episode of class ``name``; returns its own numbers {"iou", "fb_iou"(, "biou")}."""
        pred, gt = _binary("prediction", pred), _binary("ground truth", gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
        label = gt.astype(np.int64)
        if ignore is not None:
            label[_binary("ignore mask", ignore)] = IGNORE_INDEX
        episode = ConfusionMatrix(2)
        episode.update(pred.astype(np.int64), label)
        total = self.matrices.setdefault(name, ConfusionMatrix(2))
        total.matrix += episode.matrix
        total.images += 1
        self.episodes[name] = self.episodes.get(name, 0) + 1
        iou = episode.iou()
        out = {"iou": float(iou[1]), "fb_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan}
        if self.boundary:
            bp, bg = mask_boundary(pred, self.ratio), mask_boundary(gt, self.ratio)
            if ignore is not None:
                keep = ~_binary("ignore mask", ignore)
                bp, bg = bp & keep, bg & keep
            counts = np.array([(bp & bg).sum(), (bp | bg).sum()], dtype=np.int64)
            self.boundary_counts[name] = self.boundary_counts.get(name, np.zeros(2, np.int64)) + counts
            out["biou"] = counts[0] / counts[1] if counts[1] else math.nan
        return out

    @property
    def classes(self) -> list[str]:
        return list(self.matrices)

    def class_iou(self) -> dict[str, float]:
        """Foreground IoU of each class over its episodes (NaN when the class had no foreground at all)."""
        return {name: float(m.iou()[1]) for name, m in self.matrices.items()}

    def class_biou(self) -> dict[str, float]:
        return {name: (c[0] / c[1] if c[1] else math.nan) for name, c in self.boundary_counts.items()}

    def miou(self) -> float:
        return _nanmean(self.class_iou().values())

    def biou(self) -> float:
        return _nanmean(self.class_biou().values()) if self.boundary else math.nan

    def fb_iou(self) -> float:
        if not self.matrices:
            return math.nan
        total = ConfusionMatrix(2)
        for m in self.matrices.values():
            total.matrix += m.matrix
        return total.miou()

    def merge(self, other: FewShotMeter) -> None:
        """Add another meter's counts (e.g. several folds into one overall meter)."""
        for name, m in other.matrices.items():
            mine = self.matrices.setdefault(name, ConfusionMatrix(2))
            mine.matrix += m.matrix
            mine.images += m.images
            self.episodes[name] = self.episodes.get(name, 0) + other.episodes[name]
        for name, c in other.boundary_counts.items():
            self.boundary_counts[name] = self.boundary_counts.get(name, np.zeros(2, np.int64)) + c


def _nanmean(values: Iterable[float]) -> float:
    arr = np.array(list(values), dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan
