"""SAM's "everything" mode on an encoded image: every mask a grid of single-point prompts finds.

:func:`everything` gives what ``SamAutomaticMaskGenerator(model, points_per_side, points_per_batch,
pred_iou_thresh, stability_score_thresh, min_mask_region_area=...).generate(image)`` gives (one crop
layer, binary masks; same records, same order: ``tests/test_sam_runner.py`` compares them), from a
:class:`~vision.sam.image.SamImage`, so the image is encoded once for clicks and this mode alike, on any
backend. It uses SAM's own helpers (``segment_anything.utils.amg``) and differs only in doing less:

* the predicted-IoU filter runs on the low-res logits before upscaling (it reads only the IoUs), so only
  masks that pass it are upscaled to the image (SAM upscales every mask of the batch first);
* masks are upscaled a few at a time and kept bit-packed until NMS (SAM encodes each to RLE and decodes
  it again: lossless either way), so memory stays bounded at 32x32 points;
* the crop-edge filter is left out: with one crop, the crop is the image and removes nothing.

Per batch of ``points_per_batch`` grid points: decoder (3 masks per point) -> IoU filter -> upscale ->
stability score (IoU of the mask thresholded at +-``stability_score_offset``; counted by NumPy: faster,
same numbers) filter -> boxes. Then box NMS (``box_nms_thresh`` 0.7, by predicted IoU) over all
batches, and SAM's small-region clean-up when ``min_mask_region_area`` > 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from segment_anything.utils import amg
from torchvision.ops import batched_nms

from vision.sam.image import SamImage

UPSCALE_CHUNK = 16  # masks upscaled to the image at once (bounds the float32 [K, H, W] logits in memory)


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
    data["masks"] = _unpack(data["masks"], width)
    if settings.min_mask_region_area > 0 and len(keep):
        data = _clean_small_regions(data, settings.min_mask_region_area, settings.box_nms_thresh)
    return [{"segmentation": data["masks"][i].numpy(), "area": int(data["masks"][i].sum()),
             "bbox": amg.box_xyxy_to_xywh(data["boxes"][i]).tolist(), "predicted_iou": float(data["iou_preds"][i]),
             "point_coords": [data["points"][i].tolist()], "stability_score": float(data["stability_score"][i]),
             "crop_box": [0, 0, width, height]} for i in range(len(data["masks"]))]


@torch.no_grad()
def _batch_masks(image: SamImage, points: np.ndarray, settings: EverythingSettings) -> dict[str, torch.Tensor]:
    """The masks of one batch of grid points [P, 2] (image pixels) that pass both quality filters; masks
    packed 8 pixels a byte along W ([K, H, ceil(W / 8)] uint8: 1/8 of the memory until NMS)."""
    coords = image.points_to_frame(points)[:, None, :]
    labels = torch.ones(coords.shape[:2], dtype=torch.int, device=coords.device)
    low_res, iou = image.decode(coords, labels, multimask_output=True)  # [P, 3, 4g, 4g], [P, 3]
    prompt = torch.as_tensor(points)[:, None].expand(-1, iou.shape[1], -1)  # the point of each mask
    keep = iou > settings.pred_iou_thresh if settings.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
    # [3P] masks in SAM's order (point by point), the ones that pass only: one copy of the kept logits
    low_res, iou, prompt = low_res[keep], iou[keep], prompt[keep.cpu()]
    kept: dict[str, list] = {"masks": [], "iou_preds": [], "points": [], "stability_score": [], "boxes": []}
    for start in range(0, len(low_res), UPSCALE_CHUNK):  # full-resolution logits of a few masks at a time
        logits = image.upscale(low_res[start:start + UPSCALE_CHUNK]).cpu()
        stability = stability_scores(logits, image.mask_threshold, settings.stability_score_offset)
        stable = stability >= settings.stability_score_thresh if settings.stability_score_thresh > 0 else \
            torch.ones_like(stability, dtype=torch.bool)
        masks = logits[stable] > image.mask_threshold
        kept["masks"].append(torch.from_numpy(np.packbits(masks.numpy(), axis=-1)))
        kept["boxes"].append(amg.batched_mask_to_box(masks).to(torch.int64))
        kept["stability_score"].append(stability[stable])
        kept["iou_preds"].append(iou[start:start + UPSCALE_CHUNK].cpu()[stable])
        kept["points"].append(prompt[start:start + UPSCALE_CHUNK][stable])
    width = image.original_size[1]
    empty = {"masks": torch.zeros(0, image.original_size[0], (width + 7) // 8, dtype=torch.uint8),
             "iou_preds": torch.zeros(0), "points": torch.zeros(0, 2, dtype=prompt.dtype),
             "stability_score": torch.zeros(0), "boxes": torch.zeros(0, 4, dtype=torch.int64)}
    return {name: torch.cat(values) if values else empty[name] for name, values in kept.items()}


def stability_scores(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """``amg.calculate_stability_score``: the IoU [K] of each of the masks [K, H, W] (CPU logits)
    thresholded at ``threshold`` +- ``offset``, the same float32 ratio of the same counts, counted by
    NumPy (torch's sum of booleans took ~5 of the ~7 ms per 1024 x 681 mask here)."""
    high, low = np.float32(threshold + offset), np.float32(threshold - offset)
    # one mask at a time: count_nonzero over a whole array is ~2x faster than along axes
    counts = np.array([(np.count_nonzero(mask > high), np.count_nonzero(mask > low)) for mask in logits.numpy()],
                      dtype=np.int32).reshape(-1, 2)
    return torch.from_numpy(counts[:, 0]) / torch.from_numpy(counts[:, 1])


def _unpack(packed: torch.Tensor, width: int) -> torch.Tensor:
    """Packed masks [K, H, ceil(W / 8)] uint8 -> bool [K, H, W]."""
    return torch.from_numpy(np.unpackbits(packed.numpy(), axis=-1, count=width).astype(bool))


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
