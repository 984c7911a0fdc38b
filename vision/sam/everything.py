"""SAM's "everything" mode on an encoded image: every mask a grid of single-point prompts finds.

:func:`everything` gives what ``SamAutomaticMaskGenerator(model, points_per_side, points_per_batch,
pred_iou_thresh, stability_score_thresh, min_mask_region_area=...).generate(image)`` gives (one crop
layer, binary masks; same records, same order: ``tests/test_sam_runner.py`` compares them), from a
:class:`~vision.sam.image.SamImage`, so the image is encoded once for clicks and this mode alike, on any
backend. It uses SAM's own helpers (``segment_anything.utils.amg``) and differs only in doing less:

* the predicted-IoU filter runs on the low-res logits before upscaling (it reads only the IoUs), so only
  masks that pass it are upscaled to the image (SAM upscales every mask of the batch first);
* masks stay boolean tensors (SAM encodes each to RLE and decodes it again: lossless);
* the crop-edge filter is left out: with one crop, the crop is the image and removes nothing.

Per batch of ``points_per_batch`` grid points: decoder (3 masks per point) -> IoU filter -> upscale ->
stability score (IoU of the mask thresholded at +-``stability_score_offset``) filter -> boxes. Then
box NMS (``box_nms_thresh`` 0.7, by predicted IoU) over all batches, and SAM's small-region clean-up
when ``min_mask_region_area`` > 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from segment_anything.utils import amg
from torchvision.ops import batched_nms

from vision.sam.image import SamImage


@dataclass(frozen=True)
class EverythingSettings:
    """SamAutomaticMaskGenerator's settings (its defaults)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0


def everything(image: SamImage, settings: EverythingSettings,
               on_batch: Callable[[int, int], Any] | None = None) -> list[dict[str, Any]]:
    """Masks of ``image`` as SamAutomaticMaskGenerator's records: ``segmentation`` bool [H, W], ``area``
    (px), ``bbox`` [x, y, w, h], ``predicted_iou``, ``point_coords`` [[x, y]] (image pixels),
    ``stability_score``, ``crop_box`` [0, 0, W, H]; in NMS order (highest predicted IoU first).
    ``on_batch(done, total)`` is called after each batch of prompts."""
    height, width = image.original_size
    points = amg.build_point_grid(settings.points_per_side) * np.array([[width, height]])
    batches = [points[i:i + settings.points_per_batch] for i in range(0, len(points), settings.points_per_batch)]
    found = {"masks": [], "iou_preds": [], "points": [], "stability_score": [], "boxes": []}
    for done, batch in enumerate(batches, 1):
        for name, value in _batch_masks(image, batch, settings).items():
            found[name].append(value)
        if on_batch is not None:
            on_batch(done, len(batches))
    data = {name: torch.cat(values) for name, values in found.items()}
    keep = batched_nms(data["boxes"].float(), data["iou_preds"], torch.zeros(len(data["boxes"])),
                       iou_threshold=settings.box_nms_thresh)
    data = {name: value[keep] for name, value in data.items()}
    if settings.min_mask_region_area > 0 and len(keep):
        data = _clean_small_regions(data, settings.min_mask_region_area, settings.box_nms_thresh)
    return [{"segmentation": data["masks"][i].numpy(), "area": int(data["masks"][i].sum()),
             "bbox": amg.box_xyxy_to_xywh(data["boxes"][i]).tolist(), "predicted_iou": float(data["iou_preds"][i]),
             "point_coords": [data["points"][i].tolist()], "stability_score": float(data["stability_score"][i]),
             "crop_box": [0, 0, width, height]} for i in range(len(data["masks"]))]


@torch.no_grad()
def _batch_masks(image: SamImage, points: np.ndarray, settings: EverythingSettings) -> dict[str, torch.Tensor]:
    """The masks of one batch of grid points [P, 2] (image pixels) that pass both quality filters."""
    coords = image.points_to_frame(points)[:, None, :]
    labels = torch.ones(coords.shape[:2], dtype=torch.int, device=coords.device)
    low_res, iou = image.decode(coords, labels, multimask_output=True)
    low_res, iou = low_res.flatten(0, 1), iou.flatten(0, 1)
    prompt = torch.as_tensor(points).repeat_interleave(3, dim=0)  # the point of each of the 3P masks
    keep = iou > settings.pred_iou_thresh if settings.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
    logits = image.upscale(low_res[keep]).cpu()
    iou, prompt = iou[keep].cpu(), prompt[keep.cpu()]
    stability = amg.calculate_stability_score(logits, image.mask_threshold, settings.stability_score_offset)
    if settings.stability_score_thresh > 0:
        stable = stability >= settings.stability_score_thresh
        logits, iou, prompt, stability = logits[stable], iou[stable], prompt[stable], stability[stable]
    masks = logits > image.mask_threshold
    return {"masks": masks, "iou_preds": iou, "points": prompt, "stability_score": stability,
            "boxes": amg.batched_mask_to_box(masks)}


def _clean_small_regions(data: dict[str, torch.Tensor], min_area: int, nms_thresh: float) -> dict[str, torch.Tensor]:
    """SAM's ``postprocess_small_regions``: holes and islands under ``min_area`` px removed from every mask
    (``amg.remove_small_regions``), then box NMS preferring masks that did not change."""
    cleaned, unchanged = [], []
    for mask in data["masks"].numpy():
        mask, holes_changed = amg.remove_small_regions(mask, min_area, mode="holes")
        mask, islands_changed = amg.remove_small_regions(mask, min_area, mode="islands")
        cleaned.append(torch.as_tensor(mask))
        unchanged.append(float(not (holes_changed or islands_changed)))
    masks = torch.stack(cleaned)
    boxes = amg.batched_mask_to_box(masks)
    keep = batched_nms(boxes.float(), torch.as_tensor(unchanged), torch.zeros(len(boxes)), iou_threshold=nms_thresh)
    changed = torch.as_tensor(unchanged) == 0  # SAM keeps the old mask and box where nothing changed
    data = {**data, "masks": torch.where(changed[:, None, None], masks, data["masks"]),
            "boxes": torch.where(changed[:, None], boxes, data["boxes"])}
    return {name: value[keep] for name, value in data.items()}
