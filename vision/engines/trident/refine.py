"""Trident's SAM prompt refinement: prompts from the coarse map's components, one SAM call per class.

:class:`OpenPrompts` and :class:`ReferencePrompts` are the two ways of building the prompts (box
convention, coordinate frame, dense mask prompt) that the engine's ``reference`` switch chooses between;
the reasons are in :mod:`vision.engines.trident.engine`'s docstring (items 4 and 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

MASK_PROMPT_SIZE = 256  # SAM's low-resolution mask side


@dataclass
class Prompts:
    """Prompts of one class in half-resolution pixels: points [n, 2] (x, y) and boxes [n, 4] (x1, y1, x2, y2)."""

    points: torch.Tensor
    boxes: torch.Tensor


def exclusive_boxes(components: np.ndarray, stats: np.ndarray, keep: list[int]) -> torch.Tensor:
    """Bounding boxes [n, 4] whose x2/y2 lie one pixel past the component (left + width), from OpenCV's stats."""
    from torchvision.ops import box_convert

    return box_convert(torch.as_tensor(stats[keep, :4], dtype=torch.float32), "xywh", "xyxy")


def inclusive_boxes(components: np.ndarray, stats: np.ndarray, keep: list[int]) -> torch.Tensor:
    """Bounding boxes [n, 4] whose x2/y2 are the component's last pixel (``torchvision.ops.masks_to_boxes``)."""
    from torchvision.ops import masks_to_boxes

    masks = torch.from_numpy(np.stack([components == i for i in keep]))
    return masks_to_boxes(masks).float()


def component_prompts(mask: np.ndarray, prob: np.ndarray, min_area: int, boxes=exclusive_boxes) -> Prompts:
    """One point and one box per 8-connected component of ``mask`` ([h, w] bool) with at least
    ``min_area`` pixels: the point is the argmax of ``prob`` ([h, w]) inside the component (first in
    raster order on ties), the box is given by ``boxes`` (:func:`exclusive_boxes` or
    :func:`inclusive_boxes`). Coordinates are pixels of ``mask``."""
    count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    if not keep:
        return Prompts(torch.zeros(0, 2), torch.zeros(0, 4))
    points = []
    for i in keep:
        flat = int(np.argmax(np.where(components == i, prob, -np.inf)))
        y, x = divmod(flat, mask.shape[1])
        points.append((x, y))
    return Prompts(torch.tensor(points, dtype=torch.float32), boxes(components, stats, keep))


def dense_mask_prompt(prob: torch.Tensor, image_size: tuple[int, int], threshold: float, coeff: float,
                      size: int = MASK_PROMPT_SIZE) -> torch.Tensor:
    """SAM's dense (mask) prompt from a class probability map ``prob`` [h, w]: resized bilinearly to the
    shape SAM's ``ResizeLongestSide`` gives ``image_size`` (H, W) at long side ``size`` (the map may be
    at a lower resolution than the image), zero-padded bottom/right to ``size`` x ``size``, and
    ``coeff * P`` where ``P > threshold``, else 0. Returns [size, size]."""
    from segment_anything.utils.transforms import ResizeLongestSide

    nh, nw = ResizeLongestSide.get_preprocess_shape(image_size[0], image_size[1], size)
    p = F.interpolate(prob[None, None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0, 0]
    p = torch.where(p > threshold, coeff * p, torch.zeros_like(p))
    return F.pad(p, (0, size - nw, 0, size - nh))


class OpenPrompts:
    """The project's prompts: exclusive boxes; points and boxes scaled to full resolution and mapped to
    SAM's input frame from the image the predictor holds; one [n, 1, 256, 256] dense prompt (SAM's
    documented shape) from the full-resolution probabilities."""

    boxes = staticmethod(exclusive_boxes)

    def frame(self, half_size: tuple[int, int], full_size: tuple[int, int],
              sam_size: tuple[int, int]) -> tuple[tuple[float, float], tuple[int, int]]:
        """((sx, sy) from half-resolution pixels to prompt pixels, the image size SAM maps them from)."""
        return (full_size[1] / half_size[1], full_size[0] / half_size[0]), tuple(sam_size)

    def mask_input(self, prob: torch.Tensor, prob_half: torch.Tensor, threshold: float, coeff: float,
                   n: int) -> torch.Tensor:
        """``predict_torch``'s ``mask_input`` for ``n`` prompts of a class with probabilities ``prob``
        [H, W] (``prob_half``: the same at half resolution)."""
        dense = dense_mask_prompt(prob, tuple(prob.shape), threshold, coeff)
        return dense[None, None].expand(n, 1, -1, -1)


class ReferencePrompts(OpenPrompts):
    """The reference's prompts: inclusive boxes; points and boxes left in half-resolution pixels and
    mapped to SAM's frame as if the image were the half-resolution one; one [1, 256, 256] dense prompt
    (no batch dimension) from the half-resolution probabilities."""

    boxes = staticmethod(inclusive_boxes)

    def frame(self, half_size, full_size, sam_size):
        return (1.0, 1.0), tuple(half_size)

    def mask_input(self, prob, prob_half, threshold, coeff, n):
        return dense_mask_prompt(prob_half, tuple(prob.shape), threshold, coeff)[None]


def _kept_logits(predictor: Any, prompts: Any, to_frame: torch.Tensor, frame_size: tuple[int, int],
                 mask_input: torch.Tensor, iou_thresh: float, size: tuple[int, int]) -> torch.Tensor | None:
    """One batched ``predict_torch`` for a class's n component prompts (points and boxes in half-resolution
    pixels, scaled by ``to_frame`` into ``frame_size``); the logits [m, H, W] (``size``) of the masks
    whose predicted IoU exceeds ``iou_thresh``, or None when none does."""
    device = to_frame.device
    n = prompts.points.shape[0]
    points = predictor.transform.apply_coords_torch(prompts.points.to(device) * to_frame, frame_size)[:, None, :]
    boxes = predictor.transform.apply_boxes_torch(prompts.boxes.to(device) * to_frame.repeat(2), frame_size)
    logits, iou, _ = predictor.predict_torch(points, torch.ones((n, 1), dtype=torch.int64, device=device),
                                             boxes=boxes, mask_input=mask_input, multimask_output=False,
                                             return_logits=True)
    kept = iou[:, 0] > iou_thresh
    if not bool(kept.any()):
        return None
    logits = logits[kept, 0].float()  # [m, H', W'] at the size of the predictor's image
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    return logits


@dataclass
class RefineStats:
    prompted: int = 0  # components prompted (all classes)
    kept: int = 0  # masks whose predicted IoU passed
    classes_prompted: int = 0


def sam_refine(predictor: Any, probs: torch.Tensor, coarse: torch.Tensor, coarse_thresh: float,
               min_area: int = 225, mask_coeff: float = 0.005, iou_thresh: float = 0.8,
               rules: OpenPrompts | None = None) -> tuple[torch.Tensor, RefineStats]:
    """Refine a coarse label map [H, W] with SAM prompts; ``probs`` [K, H, W] are the class probabilities.

    ``predictor`` is a ``segment_anything.SamPredictor`` whose image (of this region, possibly at another
    size) is already set. At half resolution, pixels with max P < ``coarse_thresh`` are uncertain and never
    prompted. For each class, each 8-connected component (>= ``min_area`` half-resolution pixels) of its
    certain label mask gives a point (argmax of P_c) and its box; ``rules`` (:class:`OpenPrompts` by
    default, or :class:`ReferencePrompts`) sets the box convention, the coordinate frame and the dense
    prompt. One batched ``predict_torch`` per class (``multimask_output=False``); masks with predicted
    IoU > ``iou_thresh`` are kept, their logits resized to H x W. R_c = max over kept masks of
    sigmoid(logit) * P_c inside the mask; covered pixels take argmax_c R_c (the lowest class on ties),
    the others keep their coarse label.
    """
    rules = rules or OpenPrompts()
    k, h, w = probs.shape
    device = probs.device
    h2, w2 = max(1, h // 2), max(1, w // 2)
    half = F.interpolate(probs[None].float(), size=(h2, w2), mode="bilinear", align_corners=False)[0]
    coarse_half = F.interpolate(coarse[None, None].float(), size=(h2, w2), mode="nearest")[0, 0].long()
    certain = half.max(dim=0).values >= coarse_thresh
    (sx, sy), frame_size = rules.frame((h2, w2), (h, w), predictor.original_size)
    to_frame = torch.tensor([sx, sy], device=device)
    threshold = getattr(getattr(predictor, "model", None), "mask_threshold", 0.0)
    best = torch.zeros((h, w), dtype=torch.float32, device=device)
    best_class = torch.zeros((h, w), dtype=torch.long, device=device)
    covered = torch.zeros((h, w), dtype=torch.bool, device=device)
    stats = RefineStats()
    half_np = half.cpu().numpy()
    labels_np = ((coarse_half == torch.arange(k, device=device)[:, None, None]) & certain).cpu().numpy()
    for c in range(k):
        if not labels_np[c].any():
            continue
        prompts = component_prompts(labels_np[c], half_np[c], min_area, rules.boxes)
        n = prompts.points.shape[0]
        if n == 0:
            continue
        stats.prompted += n
        stats.classes_prompted += 1
        mask_input = rules.mask_input(probs[c], half[c], coarse_thresh, mask_coeff, n).to(device)
        logits = _kept_logits(predictor, prompts, to_frame, frame_size, mask_input, iou_thresh, (h, w))
        if logits is None:
            continue
        stats.kept += logits.shape[0]
        inside = logits > threshold
        score = torch.where(inside, torch.sigmoid(logits) * probs[c].float(), torch.zeros_like(logits)).amax(dim=0)
        inside = inside.any(dim=0)
        better = inside & (~covered | (score > best))
        best = torch.where(better, score, best)
        best_class = torch.where(better, torch.full_like(best_class, c), best_class)
        covered |= inside
    return torch.where(covered, best_class, coarse.long()), stats
