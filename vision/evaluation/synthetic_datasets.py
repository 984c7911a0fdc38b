"""Small few-shot datasets with exact masks, in each published layout, made from scikit-image's photos.

Each class is an object cut from one bundled photo (an ellipse inside a crop of astronaut, coffee,
chelsea or rocket; classes beyond four use other crops of the same photos). Every image of a class is a
background (a random crop of the immunohistochemistry or Hubble photo, or a mirrored photo of another
class) with the object pasted at a random scale and place; its mask is the pasted ellipse, so the
ground truth is exact. In the COCO and PASCAL layouts every other image also holds a smaller object of
the next class (masks hold class ids, and the harness must pick the episode's class), and PASCAL
masks get VOC's 255 boundary band. Deterministic for a seed.

``python -m vision eval synthetic --layout perseg --root DIR`` writes one; the tests build tiny ones
and a real-weight smoke run uses a larger one (see :mod:`vision.evaluation.ipseg_eval`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vision.imaging import sample_image

OBJECT_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
BACKGROUND_PHOTOS = ("immunohistochemistry", "hubble_deep_field")
# Crops (top, left, bottom, right as fractions) of each object photo: the k-th class uses crop k // 4.
CROPS = ((0.1, 0.2, 0.9, 0.8), (0.0, 0.0, 0.7, 0.55), (0.3, 0.45, 1.0, 1.0))
PASCAL_BOUNDARY = 3  # width (pixels) of the 255 band around each PASCAL object


def _resize(arr: np.ndarray, hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    mode = Image.NEAREST if nearest else Image.BICUBIC
    return np.asarray(Image.fromarray(arr).resize((hw[1], hw[0]), mode))


def _ellipse(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy + 0.5 - h / 2) / (h / 2)) ** 2 + ((xx + 0.5 - w / 2) / (w / 2)) ** 2 <= 1.0


class Painter:
    """Pictures of the synthetic objects (:meth:`picture`), deterministic for ``seed``: ``classes`` objects,
    images of ``size`` (H, W); ``backgrounds``: the photos to crop backgrounds from (default: the background
    photos and mirrored photos of the objects, each class excluding its own photo)."""

    def __init__(self, classes: int, size: tuple[int, int], seed: int, backgrounds: tuple[str, ...] | None = None):
        if not 1 <= classes <= len(OBJECT_PHOTOS) * len(CROPS):
            raise ValueError(f"classes must be in 1..{len(OBJECT_PHOTOS) * len(CROPS)}, got {classes}")
        self.size = size
        self.rng = np.random.default_rng(seed)
        photos = {n: sample_image(n) for n in OBJECT_PHOTOS + BACKGROUND_PHOTOS}
        self.objects = []
        for k in range(classes):
            photo = photos[OBJECT_PHOTOS[k % len(OBJECT_PHOTOS)]]
            top, left, bottom, right = CROPS[k // len(OBJECT_PHOTOS)]
            h, w = photo.shape[:2]
            self.objects.append(photo[int(top * h): int(bottom * h), int(left * w): int(right * w)])
        self.background_names = BACKGROUND_PHOTOS + OBJECT_PHOTOS if backgrounds is None else tuple(backgrounds)
        # the object photos are mirrored so that a background never repeats an object's own pixels
        self.backgrounds = [photos[n][:, ::-1] if n in OBJECT_PHOTOS else photos[n] for n in self.background_names]

    def background(self, exclude: int) -> np.ndarray:
        """A random crop of a background photo other than object ``exclude``'s own, resized to ``size``."""
        own = OBJECT_PHOTOS[exclude % len(OBJECT_PHOTOS)]
        choices = [i for i, name in enumerate(self.background_names) if name != own]
        photo = self.backgrounds[choices[int(self.rng.integers(len(choices)))]]
        h, w = photo.shape[:2]
        ch, cw = int(h * self.rng.uniform(0.5, 0.9)), int(w * self.rng.uniform(0.5, 0.9))
        y, x = int(self.rng.integers(h - ch + 1)), int(self.rng.integers(w - cw + 1))
        return _resize(np.ascontiguousarray(photo[y: y + ch, x: x + cw]), self.size)

    def paste(self, image: np.ndarray, k: int, scale: tuple[float, float], region: tuple[float, float, float, float]
              ) -> np.ndarray:
        """Paste object k (scaled to ``scale`` x the image's shorter side) inside ``region`` (fractions
        top, left, bottom, right); returns its mask."""
        H, W = self.size
        obj = self.objects[k]
        side = self.rng.uniform(*scale) * min(H, W)
        aspect = obj.shape[0] / obj.shape[1]
        oh, ow = max(4, int(side * min(1.0, aspect))), max(4, int(side * min(1.0, 1 / aspect)))
        patch = _resize(obj, (oh, ow))
        top, left, bottom, right = region
        y = int(self.rng.integers(int(top * H), max(int(top * H) + 1, int(bottom * H) - oh)))
        x = int(self.rng.integers(int(left * W), max(int(left * W) + 1, int(right * W) - ow)))
        oh, ow = min(oh, H - y), min(ow, W - x)
        inside = _ellipse(oh, ow)
        mask = np.zeros(self.size, dtype=bool)
        mask[y: y + oh, x: x + ow] = inside
        image[mask] = patch[:oh, :ow][inside]
        return mask

    def picture(self, k: int, second: int | None) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        """An image with object k (and, if given, a smaller object ``second``): (image, [(class, mask)])."""
        image = self.background(k).copy()
        if second is None:
            return image, [(k, self.paste(image, k, (0.4, 0.6), (0.05, 0.05, 0.95, 0.95)))]
        first = self.paste(image, k, (0.35, 0.5), (0.05, 0.05, 0.95, 0.55))
        other = self.paste(image, second, (0.2, 0.3), (0.05, 0.6, 0.95, 0.98))
        return image, [(k, first & ~other), (second, other)]


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))


def _binary_png(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def _label_png(objects: list[tuple[int, np.ndarray]], label_of, boundary: int = 0) -> np.ndarray:
    import cv2

    first = objects[0][1]
    out = np.zeros(first.shape, dtype=np.uint8)
    for _k, mask in objects:
        if boundary:
            ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=boundary).astype(bool)
            out[ring & (out == 0)] = 255
    for k, mask in objects:
        out[mask] = label_of(k)
    return out


def coco_label(k: int) -> int:
    """COCO class id of synthetic class k: k + 1 (so class k falls in fold k % 4)."""
    return k + 1


def pascal_label(k: int) -> int:
    """VOC class id of synthetic class k: fold k % 4, the (k // 4)-th class of that fold."""
    return 5 * (k % 4) + 1 + k // 4


def class_name(k: int) -> str:
    return f"{OBJECT_PHOTOS[k % len(OBJECT_PHOTOS)]}{k // len(OBJECT_PHOTOS) or ''}"


def build(layout: str, root: str | Path, classes: int = 4, images: int = 4, size: tuple[int, int] = (240, 320),
          seed: int = 0) -> Path:
    """Write a synthetic dataset in ``layout`` (perseg | fss | coco | pascal) under ``root``; returns root.

    ``images`` per class (the first is PerSeg's reference ``00``); ``size`` = (H, W) of every image."""
    if images < 2:
        raise ValueError("a few-shot dataset needs at least 2 images per class (a prompt and a query)")
    root = Path(root)
    painter = Painter(classes, size, seed)
    names = []
    for k in range(classes):
        for i in range(images):
            second = (k + 1) % classes if layout in ("coco", "pascal") and classes > 1 and i % 2 else None
            image, objects = painter.picture(k, second)
            if layout == "perseg":
                _save(root / "Images" / class_name(k) / f"{i:02d}.jpg", image)
                _save(root / "Annotations" / class_name(k) / f"{i:02d}.png", _binary_png(objects[0][1]))
            elif layout == "fss":
                _save(root / class_name(k) / f"{i + 1}.jpg", image)
                _save(root / class_name(k) / f"{i + 1}.png", _binary_png(objects[0][1]))
            elif layout == "coco":
                name = f"COCO_val2014_{k * images + i + 1:012d}"
                _save(root / "val2014" / f"{name}.jpg", image)
                _save(root / "annotations" / "val2014" / f"{name}.png", _label_png(objects, coco_label))
            elif layout == "pascal":
                name = f"2008_{k * images + i + 1:06d}"
                names.append(name)
                _save(root / "JPEGImages" / f"{name}.jpg", image)
                _save(root / "SegmentationClassAug" / f"{name}.png",
                      _label_png(objects, pascal_label, PASCAL_BOUNDARY))
            else:
                raise ValueError(f"unknown layout {layout!r}; choose perseg, fss, coco or pascal")
    if layout == "fss":
        (root / "test.txt").write_text("".join(f"{class_name(k)}\n" for k in range(classes)), encoding="utf-8")
    if layout == "pascal":
        split = root / "ImageSets" / "Segmentation" / "val.txt"
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    return root
