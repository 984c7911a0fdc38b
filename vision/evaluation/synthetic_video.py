"""A synthetic video clip with exact ground truth, made from scikit-image's photos.

The object is an ellipse cut from one bundled photo (by default the cup of ``coffee()``); its mask is the
ellipse, so the ground truth is exact. Over the clip it moves across a background photo (a crop of
``astronaut()`` by default), grows from 1x to ``max_scale`` x its first size, and a bar cut from a third
photo (``rocket()``) slides across it from the other side, hiding part of it in the middle frames: the
ground truth is the ellipse minus the bar. The exemplar is the same object pasted at another scale and
place on a different photo (``hubble_deep_field()``), with its own exact mask.

Used by the video engine's acceptance test, the app's browser test and the memory benchmark::

    clip = synthetic_clip(frames=24)
    clip.frames[k], clip.masks[k]              # RGB uint8 [H, W, 3], bool [H, W]
    clip.exemplar, clip.exemplar_mask          # the object in another photo
    clip.write_frames("clip_frames/")          # 00000.png, 00001.png, ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from vision.imaging import sample_image

# The object: (photo, crop top, left, bottom, right as fractions of the photo); the ellipse fills the crop.
OBJECTS = {"cup": ("coffee", 0.05, 0.28, 0.72, 0.80), "cat": ("chelsea", 0.05, 0.25, 0.95, 0.72)}


@dataclass
class SyntheticClip:
    """Frames with their exact masks, and an exemplar of the object in another photo."""

    frames: list[np.ndarray]  # RGB uint8 [H, W, 3] each
    masks: list[np.ndarray]  # bool [H, W]: the visible object
    exemplar: np.ndarray  # RGB uint8 [h, w, 3]
    exemplar_mask: np.ndarray  # bool [h, w]
    fps: float = 12.0

    def write_frames(self, folder: str | Path, masks: bool = False) -> Path:
        """The frames as ``<k:05d>.png`` in ``folder`` (and, with ``masks``, ``<k:05d>.gt.png``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for k, frame in enumerate(self.frames):
            Image.fromarray(frame).save(folder / f"{k:05d}.png")
            if masks:
                Image.fromarray(self.masks[k].astype(np.uint8) * 255).save(folder / f"{k:05d}.gt.png")
        return folder


def ellipse(h: int, w: int) -> np.ndarray:
    """bool [h, w]: the ellipse inscribed in an h x w box (pixel centres inside)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy + 0.5 - h / 2) / (h / 2)) ** 2 + ((xx + 0.5 - w / 2) / (w / 2)) ** 2 <= 1.0


def _crop(photo: np.ndarray, top: float, left: float, bottom: float, right: float) -> np.ndarray:
    h, w = photo.shape[:2]
    return np.ascontiguousarray(photo[int(top * h): int(bottom * h), int(left * w): int(right * w)])


def paste(canvas: np.ndarray, patch: np.ndarray, centre: tuple[float, float], height: int) -> np.ndarray:
    """Paste ``patch`` resized to ``height`` rows (aspect kept) as an ellipse centred at ``centre`` (x, y)
    pixels into ``canvas`` (in place); returns the pasted ellipse's mask, bool [H, W] (clipped)."""
    H, W = canvas.shape[:2]
    ph, pw = height, max(2, round(height * patch.shape[1] / patch.shape[0]))
    resized = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_AREA)
    inside = ellipse(ph, pw)
    y0, x0 = round(centre[1] - ph / 2), round(centre[0] - pw / 2)
    ys, xs = slice(max(y0, 0), min(y0 + ph, H)), slice(max(x0, 0), min(x0 + pw, W))
    sub = inside[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
    mask = np.zeros((H, W), dtype=bool)
    mask[ys, xs] = sub
    canvas[mask] = resized[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0][sub]
    return mask


# Backgrounds: (photo, crop top, left, bottom, right as fractions).
BACKGROUNDS = {"astronaut": ("astronaut", 0.0, 0.45, 0.6, 1.0), "chelsea": ("chelsea", 0.0, 0.0, 1.0, 0.6)}


def synthetic_clip(frames: int = 24, size: tuple[int, int] = (240, 320), max_scale: float = 1.5,
                   obj: str = "cup", occlude: bool = True, background: str = "astronaut",
                   reverse: bool = False) -> SyntheticClip:
    """A clip of ``frames`` frames of ``size`` (H, W) pixels; deterministic (no randomness).

    The object starts at 40% of the frame's height, centred at (28%, 50%) of the frame (x, y), and moves
    linearly to (70%, 45%) while its height grows linearly to ``max_scale`` x (``reverse``: right to left).
    With ``occlude`` a bar 14% of the frame wide moves from x = 95% to x = 5% of the frame (``reverse``:
    the other way), in front of the object. ``background``: a key of :data:`BACKGROUNDS`.
    """
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    H, W = size
    photo, *crop = OBJECTS[obj]
    patch = _crop(sample_image(photo), *crop)
    name, *area = BACKGROUNDS[background]
    background = cv2.resize(_crop(sample_image(name), *area), (W, H), interpolation=cv2.INTER_AREA)
    bar = cv2.resize(_crop(sample_image("rocket"), 0.0, 0.4, 1.0, 0.6), (max(2, round(0.14 * W)), H),
                     interpolation=cv2.INTER_AREA)
    out_frames, out_masks = [], []
    for k in range(frames):
        t = k / (frames - 1)
        canvas = background.copy()
        x = 0.28 + 0.42 * t
        centre = ((1 - x if reverse else x) * W, (0.5 - 0.05 * t) * H)
        mask = paste(canvas, patch, centre, round(0.4 * H * (1 + (max_scale - 1) * t)))
        if occlude:
            bar_x = 0.95 - 0.9 * t
            left = round((1 - bar_x if reverse else bar_x) * W - bar.shape[1] / 2)
            cols = slice(max(left, 0), min(left + bar.shape[1], W))
            canvas[:, cols] = bar[:, cols.start - left: cols.stop - left]
            mask[:, cols] = False
        out_frames.append(canvas)
        out_masks.append(mask)
    exemplar = cv2.resize(_crop(sample_image("hubble_deep_field"), 0.1, 0.1, 0.7, 0.9), (300, 220),
                          interpolation=cv2.INTER_AREA)
    exemplar_mask = paste(exemplar, patch, (170, 105), 130)
    return SyntheticClip(out_frames, out_masks, exemplar, exemplar_mask)


DAVIS_SEQUENCES = {"cup-astronaut": {"background": "astronaut"},
                   "cup-chelsea": {"background": "chelsea", "reverse": True}}


def write_davis(root: str | Path, frames: int = 8, size: tuple[int, int] = (240, 320)) -> Path:
    """A two-sequence dataset in the DAVIS-2017 layout (``JPEGImages/480p``, ``Annotations/480p`` with
    object id 1 as a palette index, ``ImageSets/2017/val.txt``) and a ``pairs.txt`` for the one-shot
    layout: each sequence's cup is found from the other sequence's first frame. Returns ``root``."""
    from vision.imaging import label_png

    root = Path(root)
    for name, options in DAVIS_SEQUENCES.items():
        clip = synthetic_clip(frames, size=size, **options)
        images, notes = root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name
        images.mkdir(parents=True, exist_ok=True)
        notes.mkdir(parents=True, exist_ok=True)
        for k, (frame, mask) in enumerate(zip(clip.frames, clip.masks, strict=True)):
            Image.fromarray(frame).save(images / f"{k:05d}.jpg", quality=95)
            label_png(mask.astype(np.uint8)).save(notes / f"{k:05d}.png")
    split = root / "ImageSets" / "2017" / "val.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("".join(f"{n}\n" for n in DAVIS_SEQUENCES))
    a, b = DAVIS_SEQUENCES
    (root / "pairs.txt").write_text(f"# target_seq target_object exemplar_seq exemplar_frame exemplar_object\n"
                                    f"{a} 1 {b} 0 1\n{b} 1 {a} 0 1\n")
    return root
