"""CorrCLIP's region masks: one id map per image from a mask generator, cached by image content.

An id map is [H, W] int32 over the original image: 0 where no mask lies, 1..R for the regions.

Generators (``RegionSpec.generator``):

- ``sam_t`` / ``sam_b`` / ``sam_h``: SAM's automatic generator (the project's :func:`vision.sam.everything`,
  ``SamAutomaticMaskGenerator``'s algorithm on an image encoded once by :func:`vision.sam.runner_for`:
  PyTorch on a GPU, the fastest installed CPU backend otherwise) on the hub's SAM, with the reference's
  on-line SAM 2 settings (``points_per_side`` 8 in its code, 32 for the paper's pre-generated masks; IoU
  and stability thresholds 0.4). Differences from the reference's
  ``SAM2AutomaticMaskGenerator(multimask_output=False)``: SAM (v1) instead of SAM 2 (the hub holds no
  SAM 2), and SAM v1's generator keeps its three masks per point (it has no single-mask switch; its
  box NMS then removes the duplicates).
- ``mask2former``: transformers' ``Mask2FormerForUniversalSegmentation`` (COCO panoptic, Swin-L) with
  its image processor and ``post_process_panoptic_segmentation`` at the image's size, as the reference
  (which runs it under fp16 autocast on CUDA; the hub's dtype here). Its "no segment" value -1 becomes 0.

Masks become an id map as the reference's ``generate_mask`` does: sorted by area, smallest first, each
painted over the previous ones with the next id, so where masks overlap the larger one wins.

:data:`REGION_CACHE` keeps the id maps of recent images keyed by their content and the generator (model
and settings), so a second class list on the same image costs no mask generation.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vision.common import LRUCache, content_key

SAM_GENERATORS = ("sam_t", "sam_b", "sam_h")
GENERATORS = (*SAM_GENERATORS, "mask2former")
CACHE_SIZE = 16  # images whose region masks are kept


@dataclass(frozen=True)
class RegionSpec:
    """Which generator makes the region masks, and its settings (SAM only): ``points_per_side`` (the
    grid of point prompts), ``pred_iou_thresh`` and ``stability_score_thresh`` (masks below either are
    dropped), ``backend`` (where SAM runs: :mod:`vision.sam.backends`; "auto": PyTorch on a GPU, the
    fastest installed on a CPU)."""

    generator: str = "sam_b"
    points_per_side: int = 8
    pred_iou_thresh: float = 0.4
    stability_score_thresh: float = 0.4
    backend: str = "auto"

    def problems(self) -> list[str]:
        """One message per unusable setting, naming the field (empty when usable)."""
        found = []
        if self.generator not in GENERATORS:
            found.append(f"mask_generator must be one of {', '.join(GENERATORS)}, not {self.generator!r}")
        if not 1 <= self.points_per_side <= 128:
            found.append(f"points_per_side must be in 1..128, got {self.points_per_side}")
        for name in ("pred_iou_thresh", "stability_score_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                found.append(f"{name} must be in 0..1, got {getattr(self, name)}")
        from vision.sam.backends import BACKENDS, missing_package

        if self.backend not in BACKENDS:
            found.append(f"sam_backend={self.backend!r} must be one of {', '.join(BACKENDS)}")
        elif missing_package(self.backend):
            found.append(f"sam_backend: {missing_package(self.backend)}")
        return found

    @property
    def key(self) -> tuple[Any, ...]:
        """What the id map depends on besides the image."""
        if self.generator in SAM_GENERATORS:
            return (self.generator, self.points_per_side, self.pred_iou_thresh, self.stability_score_thresh,
                    self.backend)
        return (self.generator,)

    @property
    def label(self) -> str:
        """Short description for records and the UI: ``sam_b (8 points/side)`` or ``mask2former``."""
        if self.generator in SAM_GENERATORS:
            return f"{self.generator} ({self.points_per_side} points/side)"
        return self.generator


@dataclass(frozen=True)
class RegionMasks:
    """An image's id map ``ids`` [H, W] int32 (0: no mask), how it was made (``source``; ``backend``: where
    SAM ran), and the seconds it took (0 when it came from the cache or the caller)."""

    ids: np.ndarray
    source: str
    seconds: float = 0.0
    cached: bool = False
    backend: str = ""

    @property
    def count(self) -> int:
        """Number of regions (ids other than 0)."""
        values = np.unique(self.ids)
        return int((values != 0).sum())


def paint_by_area(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Binary masks ([H, W] bool each) -> id map [H, W] int32: smallest area first, each painted over the
    earlier ones with ids 1, 2, ... (the reference's ``generate_mask``; ``sorted`` is stable, so equal
    areas keep the generator's order)."""
    ids = np.zeros(shape, dtype=np.int32)
    for index, mask in enumerate(sorted(masks, key=lambda m: int(m.sum())), start=1):
        ids[mask] = index
    return ids


def sam_region_ids(hub: Any, rgb: np.ndarray, spec: RegionSpec) -> tuple[np.ndarray, str]:
    """Id map [H, W] int32 of ``rgb`` [H, W, 3] uint8 from SAM's automatic generator on hub model
    ``spec.generator``, and the backend that ran it."""
    from vision.sam import EverythingSettings, everything, runner_for

    runner = runner_for(hub, spec.generator, spec.backend)
    encoded, _ = runner.encode(np.ascontiguousarray(rgb))
    settings = EverythingSettings(points_per_side=spec.points_per_side, pred_iou_thresh=spec.pred_iou_thresh,
                                  stability_score_thresh=spec.stability_score_thresh)
    found = everything(encoded, settings)
    return paint_by_area([m["segmentation"] for m in found], rgb.shape[:2]), runner.backend_name


def mask2former_region_ids(model: Any, processor: Any, rgb: np.ndarray) -> np.ndarray:
    """Id map [H, W] int32 of ``rgb`` from Mask2Former's panoptic segmentation (segment ids 1..R,
    0 where no segment; the processor's "nothing found" -1 also becomes 0)."""
    from vision.hub import model_lock

    parameter = next(model.parameters())
    inputs = processor(images=rgb, return_tensors="pt")
    inputs = {k: v.to(parameter.device, parameter.dtype if v.is_floating_point() else v.dtype)
              for k, v in inputs.items()}
    with model_lock(model), torch.inference_mode():
        outputs = model(**inputs)
    result = processor.post_process_panoptic_segmentation(outputs, target_sizes=[rgb.shape[:2]],
                                                          label_ids_to_fuse=set())[0]
    ids = result["segmentation"].to(torch.int32).cpu().numpy()
    return np.where(ids < 0, 0, ids).astype(np.int32)


class RegionCache:
    """Makes and keeps id maps: ``get(hub, rgb, spec)`` -> :class:`RegionMasks`, at most ``size`` entries
    keyed by the image's content, the generator's settings and the generator model itself (a weak
    reference tells a model reloaded at the same address apart), least recently used dropped first.
    :data:`REGION_CACHE` is the one every engine shares, so a new engine (other settings) on the same
    image and generator makes no new masks either."""

    def __init__(self, size: int = CACHE_SIZE):
        self._cache: LRUCache[tuple[Any, np.ndarray, str]] = LRUCache(size)

    def get(self, hub: Any, rgb: np.ndarray, spec: RegionSpec) -> RegionMasks:
        model = hub.get(spec.generator)
        key = (content_key(rgb), spec.key, id(model))
        found = self._cache.get(key)
        if found is not None and found[0]() is model:
            return RegionMasks(found[1], spec.label, 0.0, cached=True, backend=found[2])
        start = time.perf_counter()
        ids, backend = make_region_ids(hub, rgb, spec)
        self._cache.put(key, (weakref.ref(model), ids, backend))
        return RegionMasks(ids, spec.label, time.perf_counter() - start, backend=backend)

    def clear(self) -> None:
        self._cache.clear()

    @property
    def hits(self) -> int:
        return self._cache.hits


REGION_CACHE = RegionCache()


def make_region_ids(hub: Any, rgb: np.ndarray, spec: RegionSpec) -> tuple[np.ndarray, str]:
    """The id map [H, W] int32 of ``rgb`` [H, W, 3] uint8 by ``spec``'s generator (models from ``hub``), and
    the backend that ran it ("torch", "onnx", "openvino")."""
    if spec.generator in SAM_GENERATORS:
        return sam_region_ids(hub, rgb, spec)
    if spec.generator == "mask2former":
        return mask2former_region_ids(hub.get("mask2former"), hub.get("mask2former_processor"), rgb), "torch"
    raise ValueError(f"mask_generator must be one of {', '.join(GENERATORS)}, not {spec.generator!r}")


def check_region_ids(ids: Any, shape: tuple[int, int]) -> np.ndarray:
    """A caller's id map (e.g. the paper's pre-generated masks) as [H, W] int32, checked against the
    image's ``shape``; errors name the argument."""
    array = np.asarray(ids)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"regions must be an integer id map [H, W], got {array.dtype} of shape {array.shape}")
    if array.shape != tuple(shape):
        raise ValueError(f"regions has shape {array.shape}, the image {tuple(shape)}: one id per pixel is needed")
    return array.astype(np.int32)
