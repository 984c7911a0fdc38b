"""Segment: SAM's promptable segmentation (clicks and/or a box) and its "everything" mode.

Follows the engine contract (:mod:`vision.engines.contract`)::

    engine = SegmentEngine(SegmentConfig.from_preset("default", backend="onnx"))
    result = engine(image, points=[(240, 170)], progress=callback)     # clicks and/or a box
    result = engine.everything(image, progress=callback)               # every mask SAM finds

Pipeline, for any hub SAM (``sam_t``, ``sam_b``, ``sam_h``; all ``segment_anything`` ``Sam`` objects):

1. **Image embedding**, cached (:class:`~vision.sam.runner.SamRunner`). The image (RGB uint8 [H, W, 3])
   is resized so its longest side is 1024, normalised with SAM's pixel mean/std, zero-padded to
   1024x1024 and encoded to [1, C, 64, 64]. The encoded image (:class:`~vision.sam.image.SamImage`) is
   kept in an LRU cache keyed by the image's *content*, so the second and later prompts on one image
   cost the prompt encoder and mask decoder only; the "everything" mode shares that cache.
2. **Prompts.** Points ``(x, y, label)`` in pixels of the original image (label 1 = foreground, 0 =
   background) and/or a box ``(x0, y0, x1, y1)``, mapped to the 1024 frame as ``SamPredictor`` does.
   ``multimask=None`` follows SAM's advice (and its ONNX demo): three masks for one click with no box (the
   ambiguous case), one mask otherwise; ``True``/``False`` force it. Masks come best first by SAM's
   predicted IoU, which each result lists; only the masks returned are upscaled to the image.
3. **Everything.** A ``points_per_side`` grid of single clicks (SAM's defaults: 32x32, IoU threshold
   0.88, stability 0.95), SamAutomaticMaskGenerator's algorithm (:mod:`vision.sam.everything`); masks
   sorted by area, largest first.

**Backend** (``backend``): where the encoder and decoder run (:mod:`vision.sam.backends`): ``torch``, or
``onnx`` / ``openvino`` (the project's own ONNX exports, made on first use and cached beside the
weights); ``auto`` is torch on a GPU and the fastest installed one on a CPU. An export that fails falls
back to torch and the result's ``notes`` say why; a backend asked for whose package is missing is refused
by ``validate()``, naming the package. Every result and record says which backend ran.

``reference=True`` (preset ``"sam"``) is SAM's own behaviour. Changed otherwise (the default):

* on a CPU, the "everything" grid is capped at ``cpu_points_per_side`` (16: 256 prompts, not 1024): the
  decoder runs once per prompt (~0.56 GMAC on OpenVINO / ONNX Runtime with the split decoder, ~1.75 on
  torch), so 32x32 takes ~19 s on 2 cores on OpenVINO and minutes on torch, 16x16 ~6 s on OpenVINO
  (``bench/results/cpu.md``); small masks may be missed. The result says so in ``notes``.

Progress (``progress`` callable, :class:`~vision.engines.contract.Progress`): "encoding" (skipped on a
cache hit), "decoding"; the everything mode reports each batch of prompts (``batch``, ``batches``).

Bad input (:class:`SegmentError`, a ``ValueError`` whose message names the field): a point outside the
image, a label other than 0/1, more than ``max_points`` points, a box with zero area or outside the
image, no prompt at all, an image with a side under ``min_side`` or over the pixel limit of
:mod:`vision.imaging`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vision.engines.contract import Engine, EngineConfig, ProgressCallback, ProgressReporter
from vision.engines.segment.prompts import Box, Point, SegmentError, check_box, check_points
from vision.engines.segment.result import SegmentResult
from vision.hub import SAM_MODELS
from vision.imaging import MAX_PIXELS, ImageInput, load_image
from vision.sam.backends import BACKENDS, missing_package
from vision.sam.everything import EverythingSettings, everything
from vision.sam.image import UpscaledMasks
from vision.sam.runner import SamRunner, runner_for

__all__ = ["SegmentConfig", "SegmentEngine", "SegmentError", "SegmentResult", "Point", "Box", "PRESETS",
           "check_points", "check_box"]


@dataclass(frozen=True)
class SegmentConfig(EngineConfig):
    """Settings; the defaults are SAM's (the demo's mask choice, the generator's thresholds)."""

    ENGINE: ClassVar[str] = "segment"
    ERROR: ClassVar[type[ValueError]] = SegmentError
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "sam": {"reference": True},  # SAM's own behaviour: the full 32x32 grid everywhere
    }

    preset: str = "default"
    sam_model: str = "sam_t"
    backend: str = "auto"  # torch | onnx | openvino | auto (torch on a GPU, the fastest installed on a CPU)
    multimask: bool | None = None  # None: three masks for a lone click, one mask otherwise
    max_points: int = 64
    min_side: int = 8  # px; smaller images are refused
    cache_size: int = 8  # encoded images kept (LRU; 4 MiB each for C = 256)
    points_per_side: int = 32  # everything mode: SAM's grid
    cpu_points_per_side: int = 16  # ...capped to this on a CPU unless reference=True
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    min_mask_region_area: int = 0
    reference: bool = False

    def problems(self) -> list[str]:
        problems = []
        if self.sam_model not in SAM_MODELS:
            problems.append(f"sam_model={self.sam_model!r} must be one of {', '.join(SAM_MODELS)}")
        if self.backend not in BACKENDS:
            problems.append(f"backend={self.backend!r} must be one of {', '.join(BACKENDS)}")
        elif missing_package(self.backend):
            problems.append(missing_package(self.backend))
        if self.max_points < 1 or self.cache_size < 1 or self.min_side < 1:
            problems.append("max_points, cache_size and min_side must be >= 1")
        if self.points_per_side < 1 or self.cpu_points_per_side < 1 or self.points_per_batch < 1:
            problems.append("points_per_side, cpu_points_per_side and points_per_batch must be >= 1")
        return problems


PRESETS = {name: SegmentConfig.from_preset(name) for name in SegmentConfig.PRESETS}


class SegmentEngine(Engine):
    """The engine: one per config; holds the SAM runner and its cache of encoded images. Thread-safe."""

    CONFIG = SegmentConfig

    def __init__(self, config: SegmentConfig | None = None, hub: Any = None):
        super().__init__(config, hub)
        self._runner: SamRunner | None = None
        self._runner_lock = threading.Lock()
        self._backend_notes: list[str] | None = None  # said once, in the first result

    # ------------------------------------------------------------------------------------------ parts
    @property
    def runner(self) -> SamRunner:
        """The SAM runner (built on first use: it loads the model and, for onnx/openvino, its export)."""
        with self._runner_lock:
            if self._runner is None:
                cfg = self.config
                self._runner = runner_for(self.hub, cfg.sam_model, cfg.backend, cfg.cache_size)
                self._backend_notes = list(self._runner.notes)
            return self._runner

    @property
    def cache(self):
        """The LRU cache of encoded images (``misses`` counts the encoder passes)."""
        return self.runner.cache

    def with_config(self, **changes: Any) -> SegmentEngine:
        """Another engine with ``changes`` to the settings, sharing this one's runner (model, backend and
        cache of encoded images) when ``sam_model``, ``backend`` and ``cache_size`` are unchanged."""
        engine = SegmentEngine(self.config.replace(**changes), self.hub)
        if all(getattr(engine.config, k) == getattr(self.config, k) for k in ("sam_model", "backend", "cache_size")):
            engine._share(self.runner)
        return engine

    def _share(self, runner: SamRunner) -> None:
        """Use ``runner`` (another engine's) instead of building one; its backend notes were said there."""
        with self._runner_lock:
            self._runner, self._backend_notes = runner, []

    def load(self, image: ImageInput) -> np.ndarray:
        """Any image input -> RGB uint8 [H, W, 3], refusing images too small or over the pixel limit."""
        rgb = load_image(image)
        height, width = rgb.shape[:2]
        if height * width > MAX_PIXELS:
            raise SegmentError(f"image: {width}x{height} pixels exceeds the limit of {MAX_PIXELS} "
                               "(VISION_MAX_PIXELS); resize it first")
        if min(height, width) < self.config.min_side:
            raise SegmentError(f"image: {width}x{height} pixels is too small to segment "
                               f"(each side must be at least {self.config.min_side} px)")
        return rgb

    def _encode(self, rgb: np.ndarray, report: ProgressReporter) -> tuple[Any, bool]:
        return self.runner.encode(rgb, on_encode=lambda: report(0.05, "SAM image encoder"))

    def _notes(self) -> list[str]:
        notes, self._backend_notes = self._backend_notes or [], []
        return notes

    # ------------------------------------------------------------------------------------------ calls
    def __call__(self, image: ImageInput, points: Sequence[Sequence[Any]] = (), box: Sequence[Any] | None = None,
                 multimask: bool | None = None, name: str = "",
                 progress: ProgressCallback | None = None) -> SegmentResult:
        """Masks for the clicks and/or box on ``image`` (best first, with SAM's predicted IoUs)."""
        start = time.perf_counter()
        report = ProgressReporter(progress)
        rgb = self.load(image)
        clicks = check_points(points, rgb.shape[:2], self.config.max_points)
        rect = check_box(box, rgb.shape[:2])
        if not clicks and rect is None:
            raise SegmentError("points/box: give at least one point or a box (or use the everything mode)")
        multimask = self.config.multimask if multimask is None else multimask
        if multimask is None:
            multimask = len(clicks) == 1 and rect is None
        encoded, cached = self._encode(rgb, report)
        report(0.8, "SAM mask decoder")
        decode_start = time.perf_counter()
        low_res, iou = encoded.decode(
            encoded.points_to_frame([c[:2] for c in clicks])[None] if clicks else None,
            _labels(clicks, encoded.device), encoded.boxes_to_frame(rect)[None] if rect else None,
            multimask_output=multimask)
        order = iou[0].argsort(descending=True, stable=True)
        masks = UpscaledMasks(encoded, low_res[0, order], now=1)  # the best mask now, the others when read
        decoder = time.perf_counter() - decode_start
        report.done()
        return SegmentResult(
            image=rgb, masks=masks, scores=iou[0, order].tolist(), task="points", config=self.config,
            backend=self.runner.backend_name, points=clicks, box=rect, multimask=multimask, embedding_cached=cached,
            tiny=self.tiny, name=name, notes=self._notes(),
            timings={"encoder": 0.0 if cached else encoded.encoder_seconds, "decoder": decoder,
                     "total": time.perf_counter() - start})

    def grid_side(self, model: Any) -> tuple[int, list[str]]:
        """The everything-mode grid for ``model``'s device, and a note when it was capped."""
        side = self.config.points_per_side
        on_cpu = next(model.parameters()).device.type == "cpu"
        if on_cpu and not self.config.reference and side > self.config.cpu_points_per_side:
            capped = self.config.cpu_points_per_side
            return capped, [f"points_per_side capped at {capped} on CPU (SAM uses {side}): {capped ** 2} prompts "
                            f"instead of {side ** 2}, small objects may be missed; reference=True runs SAM's grid"]
        return side, []

    def everything(self, image: ImageInput, name: str = "", progress: ProgressCallback | None = None) -> SegmentResult:
        """Every mask SAM's automatic mask generator finds on ``image``, largest first."""
        start = time.perf_counter()
        report = ProgressReporter(progress)
        rgb = self.load(image)
        cfg = self.config
        side, notes = self.grid_side(self.runner.sam)
        encoded, cached = self._encode(rgb, report)
        settings = EverythingSettings(points_per_side=side, points_per_batch=cfg.points_per_batch,
                                      pred_iou_thresh=cfg.pred_iou_thresh,
                                      stability_score_thresh=cfg.stability_score_thresh,
                                      min_mask_region_area=cfg.min_mask_region_area)
        generate_start = time.perf_counter()
        found = everything(encoded, settings, on_batch=lambda done, total: report(
            0.3 + 0.7 * done / total, f"SAM mask decoder, {done}/{total} batches of prompts",
            batch=done, batches=total))
        found.sort(key=lambda m: -m["area"])
        report.done()
        return SegmentResult(
            image=rgb, masks=[m["segmentation"] for m in found], scores=[m["predicted_iou"] for m in found],
            stability=[m["stability_score"] for m in found], task="everything", config=cfg,
            backend=self.runner.backend_name, embedding_cached=cached, points_per_side=side, tiny=self.tiny,
            notes=self._notes() + notes, name=name,
            timings={"encoder": 0.0 if cached else encoded.encoder_seconds,
                     "decoder": time.perf_counter() - generate_start, "total": time.perf_counter() - start})


def _labels(clicks: list[Point], device: Any) -> Any:
    import torch

    return torch.tensor([[c[2] for c in clicks]], dtype=torch.int, device=device) if clicks else None
