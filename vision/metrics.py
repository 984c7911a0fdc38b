"""Semantic-segmentation metrics (mIoU from a confusion matrix) and benchmark dataset folders.

The protocol is mmseg's, as Trident's reference evaluates: predictions at the original image size,
batch size 1, label 255 ignored everywhere; ADE20k, Pascal Context-59 and VOC20 use
``reduce_zero_label`` (0 becomes 255, every other label drops by one). IoU of a class = TP / (TP + FP +
FN) over the non-ignored pixels of the whole split; a class absent from both predictions and labels
has no IoU (NaN) and is left out of the mean, like mmseg.

Folder layouts (``--root`` points at the folder that holds the first entry):

=============  ==========================  ==============================  ===================================
preset         images                      labels                          list of images
=============  ==========================  ==============================  ===================================
voc21, voc20   JPEGImages/*.jpg            SegmentationClass/*.png         ImageSets/Segmentation/val.txt
context60/59   JPEGImages/*.jpg            SegmentationClassContext/*.png  ImageSets/SegmentationContext/val.txt
coco_object    images/val2017/*.jpg        annotations/val2017/*_instanceTrainIds.png   (all images)
coco_stuff     images/val2017/*.jpg        annotations/val2017/*_labelTrainIds.png      (all images)
cityscapes     leftImg8bit/val/*/*_leftImg8bit.png  gtFine/val/*/*_gtFine_labelTrainIds.png  (all images)
ade20k         images/validation/*.jpg     annotations/validation/*.png    (all images)
=============  ==========================  ==============================  ===================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IGNORE_INDEX = 255


class DatasetError(ValueError):
    """A dataset folder that does not have the expected layout; the message says what is missing."""


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 -> 255 (ignored), k -> k-1, 255 stays 255."""
    out = label.astype(np.int64) - 1
    out[label == 0] = IGNORE_INDEX
    out[label == IGNORE_INDEX] = IGNORE_INDEX
    return out


class ConfusionMatrix:
    """Accumulates a [K, K] confusion matrix (rows: ground truth, columns: prediction) over images."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.images = 0

    def update(self, pred: np.ndarray, label: np.ndarray) -> None:
        pred, label = np.asarray(pred), np.asarray(label)
        if pred.shape != label.shape:
            raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
        valid = label != self.ignore_index
        gt = label[valid].astype(np.int64)
        pr = pred[valid].astype(np.int64)
        if gt.size and (gt.min() < 0 or gt.max() >= self.num_classes):
            raise ValueError(f"label values {sorted(set(np.unique(gt)) - set(range(self.num_classes)))} are outside "
                             f"0..{self.num_classes - 1} (and not the ignore label {self.ignore_index})")
        if pr.size and (pr.min() < 0 or pr.max() >= self.num_classes):
            raise ValueError(f"predictions must lie in 0..{self.num_classes - 1}")
        k = self.num_classes
        self.matrix += np.bincount(gt * k + pr, minlength=k * k).reshape(k, k)
        self.images += 1

    @property
    def intersection(self) -> np.ndarray:
        return np.diag(self.matrix)

    @property
    def union(self) -> np.ndarray:
        return self.matrix.sum(0) + self.matrix.sum(1) - self.intersection

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from labels and predictions."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.union > 0, self.intersection / np.maximum(self.union, 1), np.nan)

    def accuracy(self) -> np.ndarray:
        """Per-class pixel accuracy (recall); NaN for a class absent from the labels."""
        gt = self.matrix.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(gt > 0, self.intersection / np.maximum(gt, 1), np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan

    def macc(self) -> float:
        acc = self.accuracy()
        return float(np.nanmean(acc)) if np.isfinite(acc).any() else math.nan

    def aacc(self) -> float:
        total = self.matrix.sum()
        return float(self.intersection.sum() / total) if total else math.nan

    def summary(self, names: Sequence[str]) -> dict:
        """JSON-able: mIoU, mAcc, aAcc (fractions) and per-class IoU/Acc (``None`` where undefined)."""

        def clean(v: float):
            return None if not np.isfinite(v) else round(float(v), 6)

        return {"mIoU": clean(self.miou()), "mAcc": clean(self.macc()), "aAcc": clean(self.aacc()),
                "images": self.images,
                "per_class": {n: {"IoU": clean(i), "Acc": clean(a)}
                              for n, i, a in zip(names, self.iou(), self.accuracy())}}

    def table(self, names: Sequence[str]) -> str:
        """A per-class table (percent) with the means at the bottom."""
        width = max([len("class"), *(len(n) for n in names)])
        rows = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", "-" * (width + 16)]

        def pct(v: float) -> str:
            return "   n/a" if not np.isfinite(v) else f"{100 * v:6.2f}"

        for n, i, a in zip(names, self.iou(), self.accuracy()):
            rows.append(f"{n:<{width}}  {pct(i)}  {pct(a)}")
        rows.append("-" * (width + 16))
        rows.append(f"{'mIoU':<{width}}  {pct(self.miou())}")
        rows.append(f"{'mAcc':<{width}}  {pct(self.macc())}")
        rows.append(f"{'aAcc':<{width}}  {pct(self.aacc())}")
        return "\n".join(rows)


# ------------------------------------------------------------------------------------------------ datasets


@dataclass(frozen=True)
class DatasetLayout:
    """Where a benchmark's images and labels live under its root (see the module docstring)."""

    images: str
    labels: str
    image_suffix: str
    label_suffix: str
    split: str | None = None  # list of image ids; None: every image under ``images`` (recursively)
    reduce_zero_label: bool = False


_VOC = DatasetLayout("JPEGImages", "SegmentationClass", ".jpg", ".png", "ImageSets/Segmentation/val.txt")
_CONTEXT = DatasetLayout("JPEGImages", "SegmentationClassContext", ".jpg", ".png",
                         "ImageSets/SegmentationContext/val.txt")
LAYOUTS: dict[str, DatasetLayout] = {
    "voc21": _VOC,
    "voc20": DatasetLayout(**{**_VOC.__dict__, "reduce_zero_label": True}),
    "context60": _CONTEXT,
    "context59": DatasetLayout(**{**_CONTEXT.__dict__, "reduce_zero_label": True}),
    "coco_object": DatasetLayout("images/val2017", "annotations/val2017", ".jpg", "_instanceTrainIds.png"),
    "coco_stuff": DatasetLayout("images/val2017", "annotations/val2017", ".jpg", "_labelTrainIds.png"),
    "cityscapes": DatasetLayout("leftImg8bit/val", "gtFine/val", "_leftImg8bit.png", "_gtFine_labelTrainIds.png"),
    "ade20k": DatasetLayout("images/validation", "annotations/validation", ".jpg", ".png", reduce_zero_label=True),
}


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    label: Path


def dataset_samples(preset: str, root: str | Path, limit: int | None = None) -> list[Sample]:
    """The (image, label) pairs of a benchmark's validation split under ``root``, sorted by id."""
    if preset not in LAYOUTS:
        raise DatasetError(f"no dataset layout for preset {preset!r}; known: {', '.join(LAYOUTS)}")
    layout, root = LAYOUTS[preset], Path(root)
    images, labels = root / layout.images, root / layout.labels
    for folder in (images, labels):
        if not folder.is_dir():
            raise DatasetError(f"{folder} is not a folder: --root must hold {layout.images}/ and {layout.labels}/ "
                               f"(the {preset} layout)")
    if layout.split is not None:
        split = root / layout.split
        if not split.is_file():
            raise DatasetError(f"{split} not found: the {preset} layout lists its images there")
        ids = [line.strip() for line in split.read_text().splitlines() if line.strip()]
    else:
        ids = sorted(str(p.relative_to(images))[: -len(layout.image_suffix)]
                     for p in images.rglob(f"*{layout.image_suffix}"))
    if limit is not None:
        ids = ids[: max(0, limit)]
    samples = []
    for i in ids:
        image, label = images / f"{i}{layout.image_suffix}", labels / f"{i}{layout.label_suffix}"
        for path in (image, label):
            if not path.is_file():
                raise DatasetError(f"{path} is missing (listed in the {preset} split)")
        samples.append(Sample(i, image, label))
    if not samples:
        raise DatasetError(f"no images found under {images} (*{layout.image_suffix})")
    return samples


def load_label(path: str | Path, reduce_zero: bool = False) -> np.ndarray:
    """A label PNG (palette or grayscale: pixel value = class index) as an int64 array."""
    with Image.open(path) as image:
        label = np.asarray(image if image.mode in ("P", "L", "I", "I;16") else image.convert("L")).astype(np.int64)
    return reduce_zero_label(label) if reduce_zero else label


def evaluate(predict: Callable[[Path], np.ndarray], samples: Iterable[Sample], num_classes: int,
             reduce_zero: bool = False, on_image: Callable[[int, Sample], None] | None = None) -> ConfusionMatrix:
    """Run ``predict(image_path) -> [H, W] labels`` on every sample and accumulate the confusion matrix."""
    matrix = ConfusionMatrix(num_classes)
    for n, sample in enumerate(samples):
        label = load_label(sample.label, reduce_zero)
        matrix.update(predict(sample.image), label)
        if on_image is not None:
            on_image(n, sample)
    return matrix
