"""SAM for IPSeg: the image encoded once (:class:`SamView`, in the frame SAM sees it in) and PerSAM's
three-step refinement cascade (:func:`sam_cascade`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from vision.imaging import resize


@dataclass
class SamView:
    """An image [H, W] encoded by SAM once, and the pixel frame its prompts and masks live in.

    Default frame: the image itself (``SamPredictor`` keeps the aspect: longest side to the encoder's
    size, zero padding bottom/right). Stretched frame (reference mode): the image resized to the
    encoder's square (1024x1024 for SAM), aspect not kept, as the reference feeds SAM; masks come back
    to [H, W] by nearest resizing.
    """

    # A vision.sam.SamImage of the frame: it predicts with SamPredictor's API (predict(), features,
    # input_size), so a stand-in predictor works too.
    predictor: Any
    image_hw: tuple[int, int]
    frame_hw: tuple[int, int]

    @classmethod
    def encode(cls, model: Any, image: np.ndarray, stretch: bool, runner: Any = None) -> SamView:
        """``image`` (RGB uint8 [H, W, 3]) in its frame, encoded by ``runner`` (a
        :class:`~vision.sam.SamRunner` of ``model``: its backend; default: torch, nothing cached)."""
        from vision.sam import SamRunner

        runner = runner or SamRunner(model)
        side = model.image_encoder.img_size
        frame = cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR) if stretch else image
        encoded, _ = runner.encode(np.ascontiguousarray(frame), cache=False)
        return cls(encoded, tuple(image.shape[:2]), tuple(frame.shape[:2]))

    @property
    def stretched(self) -> bool:
        return self.frame_hw != self.image_hw

    def valid_region(self, n: int) -> tuple[slice, slice]:
        """Cells of SAM's n x n embedding that cover the image: all of them in the stretched frame, else
        the top-left cells that cover the resized image (partly covered border cells included)."""
        if self.stretched:
            return slice(0, n), slice(0, n)
        side = self.predictor.model.image_encoder.img_size
        new_h, new_w = self.predictor.input_size
        return slice(0, min(n, math.ceil(new_h * n / side))), slice(0, min(n, math.ceil(new_w * n / side)))

    def mask_to_image(self, mask: np.ndarray) -> np.ndarray:
        """A bool mask of the frame -> bool [H, W] of the image (nearest)."""
        return mask if not self.stretched else resize(np.asarray(mask, dtype=bool), self.image_hw)


def mask_bbox(mask: np.ndarray) -> np.ndarray | None:
    """(x0, y0, x1, y1) of the True pixels of a bool mask (inclusive pixel indices), or None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)


@dataclass
class CascadeOutput:
    mask: np.ndarray  # bool, in the predictor's frame
    iou: float  # SAM's predicted IoU of the kept mask
    logits: np.ndarray  # low-res logits [1, 256, 256] of the kept mask
    box: np.ndarray | None  # the step-3 box (None when step 2's mask was empty)
    steps: list[dict[str, Any]] = field(default_factory=list)  # per step: kept index and IoU


def sam_cascade(predictor: Any, coords: np.ndarray, labels: np.ndarray) -> CascadeOutput:
    """PerSAM's three-step refinement on a predictor whose image is already set (no re-encoding).

    1. ``predict(point_coords, point_labels, multimask_output=False)`` -> logits L1.
    2. ``predict(point_coords, point_labels, mask_input=L1, multimask_output=True)`` -> keep the mask with
       the highest predicted IoU.
    3. ``predict(point_coords, point_labels, box=bbox(mask 2), mask_input=its logits,
       multimask_output=True)`` -> keep the highest predicted IoU. When mask 2 is empty the box is left
       out (``box=None``) instead of passing a degenerate one.

    ``coords`` [N, 2] (x, y) are in the predictor's input frame.
    """
    coords = np.asarray(coords, dtype=np.float32).reshape(-1, 2)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    steps = []
    masks, ious, logits = predictor.predict(point_coords=coords, point_labels=labels, multimask_output=False)
    steps.append({"kept": 0, "iou": float(ious[0])})
    masks, ious, logits = predictor.predict(point_coords=coords, point_labels=labels,
                                            mask_input=logits[0:1], multimask_output=True)
    best = int(np.argmax(ious))
    steps.append({"kept": best, "iou": float(ious[best])})
    box = mask_bbox(masks[best])
    masks, ious, logits = predictor.predict(point_coords=coords, point_labels=labels, box=box,
                                            mask_input=logits[best : best + 1], multimask_output=True)
    best = int(np.argmax(ious))
    steps.append({"kept": best, "iou": float(ious[best]), "box": box is not None})
    return CascadeOutput(np.asarray(masks[best], dtype=bool), float(ious[best]), logits[best : best + 1], box, steps)
