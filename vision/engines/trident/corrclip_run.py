"""CorrCLIP as a method of the class-name engine: what ``TridentEngine`` runs for ``method="corrclip"``.

The steps (stages of :mod:`vision.engines.trident.corrclip`, which lists the reference differences):

1. text embeddings of the class names (the engine's, cached across engines);
2. region masks of the image: the caller's id map (``regions=``), else the engine's
   :class:`~vision.engines.trident.regions.RegionCache` (a second class list on the same image makes no
   new masks), timed on their own as ``masks``;
3. the sliding windows (``windows``): DINO's value features, merging, scope, CLIP's three branches;
4. probabilities, background threshold and map correction (``labels``).

Progress: one :class:`~vision.engines.contract.Progress` per step and per window (position
``{"window", "windows"}``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from vision import imaging
from vision.common import stage
from vision.engines.contract import ProgressReporter
from vision.engines.trident import corrclip, splice
from vision.engines.trident.classes import Classes
from vision.engines.trident.modes import mode_for
from vision.engines.trident.regions import RegionMasks, check_region_ids
from vision.engines.trident.results import TridentResult

WINDOWS_START, WINDOWS_END = 0.4, 0.95  # share of the run at which the sliding windows start and end


def region_masks(engine: Any, rgb: np.ndarray, regions: Any) -> RegionMasks:
    """Step 2: the caller's id map [H, W] (checked), or the cached / generated one of ``engine.config``."""
    if regions is not None:
        return RegionMasks(check_region_ids(regions, rgb.shape[:2]), "given")
    return engine.region_cache.get(engine.hub, rgb, engine.config.regions)


def segment(engine: Any, rgb: np.ndarray, classes: Classes, return_probs: bool, report: ProgressReporter,
            regions: Any = None) -> TridentResult:
    """CorrCLIP on ``rgb`` [H, W, 3] uint8 with the engine's config, hub and caches (steps 1-4 above)."""
    cfg = engine.config
    rules = corrclip.REFERENCE_RULES if cfg.reference else corrclip.PRODUCT_RULES
    timings: dict[str, float] = {}
    device = engine.hub.device
    started = time.perf_counter()
    report(0.0, "text embeddings", stage=0, stages=4)
    with stage(timings, "text", device):
        text = engine.text_embeddings(classes.unique_queries)
    report(0.05, f"region masks ({'given' if regions is not None else cfg.regions.label})", stage=1, stages=4)
    with stage(timings, "masks", device):
        masks = region_masks(engine, rgb, regions)

    def on_window(index: int, count: int, out: corrclip.WindowOutput) -> None:
        done = WINDOWS_START + (WINDOWS_END - WINDOWS_START) * (index + 1) / count
        report(done, f"window {index + 1}/{count}", window=index + 1, windows=count)

    report(WINDOWS_START, "CLIP and DINO windows", stage=2, stages=4)
    size = splice.keep_ratio_shape(*rgb.shape[:2], cfg.short_side, cfg.max_long_side)
    count = len(splice.window_boxes(*size, cfg.window, cfg.stride))
    with stage(timings, "windows", device):
        logits = corrclip.image_logits(engine.hub.get(cfg.clip).visual, engine.hub.get(cfg.vfm), rgb, masks.ids,
                                       text, cfg.short_side, cfg.max_long_side, cfg.window, cfg.stride, rules,
                                       mode_for(cfg).resize_pos, on_window)
    report(WINDOWS_END, "labels and map correction", stage=3, stages=4)
    with stage(timings, "labels", device):
        ids = torch.as_tensor(masks.ids, device=logits.device).long()
        probs, coarse, labels = corrclip.classify(logits, classes, cfg.logit_scale, cfg.prob_thd, ids, rules)
    labels_np = labels.to(torch.int32).cpu().numpy()
    overlay = imaging.overlay_labels(rgb, labels_np, n_colours=len(classes.names))
    timings["total"] = time.perf_counter() - started
    report.done()
    info = {"resized": list(size), "windows": count, "regions": masks.count, "mask_generator": masks.source,
            "mask_backend": masks.backend, "regions_cached": masks.cached,
            "truncated_names": engine.truncated_names(classes.queries)}
    return TridentResult(
        labels=labels_np, coarse=coarse.to(torch.int32).cpu().numpy(),
        probs=probs.float().cpu().numpy() if return_probs else None,
        overlay=imaging.tiny_banner(overlay) if engine.tiny else overlay, classes=classes, config=cfg,
        timings=timings, info=info, tiny=engine.tiny, regions=masks.ids)
