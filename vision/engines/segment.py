"""Segment: SAM's promptable segmentation (clicks and/or a box) and its "everything" mode.

Pipeline, for any hub SAM (``sam_t``, ``sam_b``, ``sam_h``; all ``segment_anything`` ``Sam`` objects):

1. **Image embedding**, cached. The image (RGB uint8 [H, W, 3]) is resized so its longest side is 1024,
   normalised with SAM's pixel mean/std, zero-padded to 1024x1024 and encoded to [1, C, 64, 64]
   (``SamPredictor.set_image``). The embedding is kept in an LRU cache keyed by the image's *content*
   (hash of its pixels and shape) and the model, so the second and later prompts on one image cost the
   prompt encoder and mask decoder only; the "everything" mode shares that cache.
2. **Prompts.** Points ``(x, y, label)`` in pixels of the original image (label 1 = foreground, 0 =
   background) and/or a box ``(x0, y0, x1, y1)``; ``SamPredictor.predict`` maps them to the 1024 frame.
   ``multimask=None`` follows SAM's advice (and its ONNX demo): three masks for one click with no box (the
   ambiguous case), one mask otherwise; ``True``/``False`` force it. Masks come best first by SAM's
   predicted IoU, which each result lists.
3. **Everything.** ``SamAutomaticMaskGenerator`` over a ``points_per_side`` grid (SAM's defaults:
   32x32, IoU threshold 0.88, stability 0.95); masks sorted by area, largest first.

``reference=True`` (preset ``"sam"``) is SAM's own behaviour. Changed otherwise (the default):

* on a CPU, the "everything" grid is capped at ``cpu_points_per_side`` (8: 64 prompts, not 1024): SAM's
  decoder repeats the image embedding once per prompt, and sam_t on chelsea() took 21 s of CPU at 8x8 (5
  masks) and 89 s at 16x16 (6 masks) in ``bench/results/sam.md``; small masks may be missed. The result
  says so in ``notes``.

Bad input (:class:`SegmentError`, a ``ValueError`` whose message names the field): a point outside the
image, a label other than 0/1, more than ``max_points`` points, a box with zero area or outside the
image, no prompt at all, an image with a side under ``min_side`` or over the pixel limit of
:mod:`vision.imaging`.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

from vision.hub import SAM_MODELS, model_lock
from vision.imaging import MAX_PIXELS, ImageInput, load_image, overlay_labels, overlay_mask, tiny_banner

Point = tuple[float, float, int]  # x, y in pixels; label 1 = foreground, 0 = background
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


class SegmentError(ValueError):
    """An input the Segment engine cannot use; the message names the field and says why."""


@dataclass(frozen=True)
class SegmentConfig:
    """Settings; the defaults are SAM's (the demo's mask choice, the generator's thresholds)."""

    sam_model: str = "sam_t"
    multimask: bool | None = None  # None: three masks for a lone click, one mask otherwise
    max_points: int = 64
    min_side: int = 8  # px; smaller images are refused
    cache_size: int = 8  # image embeddings kept (LRU; 4 MiB each for C = 256)
    points_per_side: int = 32  # everything mode: SAM's grid
    cpu_points_per_side: int = 8  # ...capped to this on a CPU unless reference=True
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    min_mask_region_area: int = 0
    reference: bool = False

    def validate(self) -> "SegmentConfig":
        problems = []
        if self.sam_model not in SAM_MODELS:
            problems.append(f"sam_model={self.sam_model!r} must be one of {', '.join(SAM_MODELS)}")
        if self.max_points < 1 or self.cache_size < 1 or self.min_side < 1:
            problems.append("max_points, cache_size and min_side must be >= 1")
        if self.points_per_side < 1 or self.cpu_points_per_side < 1 or self.points_per_batch < 1:
            problems.append("points_per_side, cpu_points_per_side and points_per_batch must be >= 1")
        if problems:
            raise SegmentError("invalid Segment settings: " + "; ".join(problems))
        return self


PRESETS = {
    "default": SegmentConfig(),
    "sam": SegmentConfig(reference=True),  # SAM's own behaviour: the full 32x32 grid everywhere
}


@dataclass
class SegmentResult:
    """Masks for one image, best first (prompt mode) or largest first (everything mode)."""

    image: np.ndarray  # RGB uint8 [H, W, 3]
    masks: list[np.ndarray]  # bool [H, W] each
    scores: list[float]  # SAM's predicted IoU of each mask
    mode: str  # "points" or "everything"
    sam_model: str
    name: str = ""  # the input's id (batch mode) or file name
    points: list[Point] = field(default_factory=list)
    box: Box | None = None
    multimask: bool = False
    embedding_cached: bool = False  # the image embedding came from the cache (no encoder pass)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: encoder (0 if cached), decoder, total
    stability: list[float] = field(default_factory=list)  # everything mode: SAM's stability scores
    points_per_side: int | None = None  # everything mode: the grid that ran
    tiny: bool = False
    reference: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return self.image.shape[:2]

    @property
    def mask(self) -> np.ndarray:
        """The best mask (prompt mode) or the union of all masks (everything mode): bool [H, W]."""
        if self.mode == "everything":
            return self.labels() > 0
        return self.masks[0] if self.masks else np.zeros(self.size, dtype=bool)

    def labels(self) -> np.ndarray:
        """Everything mode as a label map uint8 [H, W]: mask k (largest first) is k + 1 where no larger
        mask covers the pixel; at most 255 masks."""
        labels = np.zeros(self.size, dtype=np.uint8)
        for k, m in reversed(list(enumerate(self.masks[:255]))):
            labels[m] = k + 1
        return labels

    def rle(self) -> list[dict]:
        """COCO RLE of every mask (``{"size": [H, W], "counts": str}``), in the order of ``masks``."""
        from pycocotools import mask as coco_mask

        out = []
        for m in self.masks:
            code = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
            out.append({"size": [int(v) for v in code["size"]], "counts": code["counts"].decode("ascii")})
        return out

    def overlay(self) -> np.ndarray:
        """The image with the best mask (or every mask, one colour each) tinted, the clicks drawn
        (foreground green, background red) and the box outlined; a banner in tiny mode."""
        if self.mode == "everything":
            out = overlay_labels(self.image, self.labels()) if self.masks else self.image.copy()
        else:
            out = overlay_mask(self.image, self.mask, colour=(30, 144, 255))
        canvas = Image.fromarray(out)
        draw = ImageDraw.Draw(canvas)
        r = max(3, min(self.size) // 80)
        for x, y, label in self.points:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(0, 200, 0) if label else (230, 0, 0), outline=(255, 255, 255))
        if self.box is not None:
            draw.rectangle(list(self.box), outline=(0, 255, 0), width=max(1, r // 2))
        out = np.asarray(canvas)
        return tiny_banner(out) if self.tiny else out

    def to_record(self) -> dict:
        """JSON-able summary: mode, model, prompts, scores (best first), areas, cache hit, timings, notes."""
        record: dict[str, Any] = {
            "mode": self.mode, "sam_model": self.sam_model, "width": self.size[1], "height": self.size[0],
            "scores": [round(s, 6) for s in self.scores], "areas": [int(m.sum()) for m in self.masks],
            "embedding_cached": self.embedding_cached, "reference": self.reference,
            "timings": {k: round(v, 4) for k, v in self.timings.items()}, "notes": list(self.notes),
        }
        if self.mode == "points":
            record.update(score=round(self.scores[0], 6), points=[list(p) for p in self.points],
                          box=list(self.box) if self.box is not None else None, multimask=self.multimask)
        else:
            record.update(masks=len(self.masks), points_per_side=self.points_per_side,
                          stability=[round(s, 6) for s in self.stability])
        if self.name:
            record["target"] = self.name
        if self.tiny:
            record["tiny"] = True  # random-weight models: the masks are noise
        return record

    def to_files(self) -> dict[str, Any]:
        """``mask.png`` (best mask or union, 0/255), ``overlay.png``, ``rle.json`` (COCO RLE of every mask
        with its score); everything mode adds ``labels.png`` (indexed label map)."""
        files: dict[str, Any] = {
            "mask.png": self.mask, "overlay.png": self.overlay(),
            "rle.json": {"size": list(self.size), "mode": self.mode,
                         "masks": [{"segmentation": r, "score": round(s, 6)} for r, s in zip(self.rle(), self.scores)]},
        }
        if self.mode == "everything":
            from vision.imaging import label_png

            files["labels.png"] = label_png(self.labels())
        return files


def image_key(image: np.ndarray) -> str:
    """Content key of an RGB image: a hash of its shape and pixels."""
    digest = hashlib.blake2b(str(image.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


class EmbeddingCache:
    """LRU cache of SAM image embeddings: key -> (features [1, C, g, g], original (H, W), input (h, w))."""

    def __init__(self, size: int):
        self.size = size
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: tuple, value: tuple) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class CachedPredictor(SamPredictor):
    """A ``SamPredictor`` whose ``set_image`` consults an :class:`EmbeddingCache` first
    (SamAutomaticMaskGenerator calls it too); it records whether the last image was a hit and how long
    the encoder took (seconds, 0 on a hit)."""

    def __init__(self, model: Any, cache: EmbeddingCache, model_name: str):
        super().__init__(model)
        self.cache, self.model_name = cache, model_name
        self.cache_hit, self.encoder_seconds = False, 0.0

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        key = (self.model_name, id(self.model), image_key(image), image_format)
        found = self.cache.get(key)
        self.cache_hit = found is not None
        if found is not None:
            self.reset_image()
            self.features, self.original_size, self.input_size = found
            self.is_image_set = True
            self.encoder_seconds = 0.0
            return
        start = time.perf_counter()
        super().set_image(image, image_format)
        self.encoder_seconds = time.perf_counter() - start
        self.cache.put(key, (self.features, self.original_size, self.input_size))


def _numbers(values: Sequence[Any], n: int, field_name: str) -> list[float]:
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != n or not all(math.isfinite(v) for v in numbers):
        raise SegmentError(f"{field_name}: expected {n} finite numbers, got {values!r}")
    return numbers


def check_points(points: Sequence[Sequence[Any]], size: tuple[int, int], max_points: int) -> list[Point]:
    """Validated clicks: (x, y[, label]) with 0 <= x < W, 0 <= y < H; the label defaults to 1."""
    height, width = size
    if len(points) > max_points:
        raise SegmentError(f"points: {len(points)} given, at most {max_points}")
    out: list[Point] = []
    for i, p in enumerate(points):
        values = list(p)
        if len(values) == 2:
            values.append(1)
        x, y, label = _numbers(values, 3, f"points[{i}]")
        if label not in (0, 1):
            raise SegmentError(f"points[{i}]: label {label:g} must be 1 (foreground) or 0 (background)")
        if not (0 <= x < width and 0 <= y < height):
            raise SegmentError(f"points[{i}]: ({x:g}, {y:g}) is outside the {width}x{height} image "
                               f"(x in 0..{width - 1}, y in 0..{height - 1})")
        out.append((x, y, int(label)))
    return out


def check_box(box: Sequence[Any] | None, size: tuple[int, int]) -> Box | None:
    """A validated box (x0, y0, x1, y1) with x0 < x1, y0 < y1, inside [0, W] x [0, H]."""
    if box is None:
        return None
    x0, y0, x1, y1 = _numbers(list(box), 4, "box")
    height, width = size
    if x1 <= x0 or y1 <= y0:
        raise SegmentError(f"box: ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has zero area (x1 must exceed x0 and y1 exceed y0)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise SegmentError(f"box: ({x0:g}, {y0:g}, {x1:g}, {y1:g}) extends outside the {width}x{height} image")
    return (x0, y0, x1, y1)


class Segment:
    """The engine: one per config; holds the embedding cache. Thread-safe."""

    def __init__(self, config: SegmentConfig = SegmentConfig(), hub: Any = None):
        from vision.hub import get_hub

        self.config = config.validate()
        self.hub = hub or get_hub()
        self.cache = EmbeddingCache(config.cache_size)  # its ``misses`` count the encoder passes

    def _model(self) -> Any:
        return self.hub.get(self.config.sam_model)

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

    def segment(self, image: ImageInput, points: Sequence[Sequence[Any]] = (), box: Sequence[Any] | None = None,
                multimask: bool | None = None, name: str = "") -> SegmentResult:
        """Masks for the clicks and/or box on ``image`` (best first, with SAM's predicted IoUs)."""
        start = time.perf_counter()
        rgb = self.load(image)
        clicks = check_points(points, rgb.shape[:2], self.config.max_points)
        rect = check_box(box, rgb.shape[:2])
        if not clicks and rect is None:
            raise SegmentError("points/box: give at least one point or a box (or use the everything mode)")
        multimask = self.config.multimask if multimask is None else multimask
        if multimask is None:
            multimask = len(clicks) == 1 and rect is None
        model = self._model()
        predictor = CachedPredictor(model, self.cache, self.config.sam_model)
        with model_lock(model):
            predictor.set_image(rgb)
            decode_start = time.perf_counter()
            masks, scores, _ = predictor.predict(
                point_coords=np.array([c[:2] for c in clicks], np.float32) if clicks else None,
                point_labels=np.array([c[2] for c in clicks], np.int64) if clicks else None,
                box=np.array(rect, np.float32) if rect is not None else None, multimask_output=multimask)
        decoder = time.perf_counter() - decode_start
        order = np.argsort(-scores, kind="stable")
        return SegmentResult(
            image=rgb, masks=[masks[i] for i in order], scores=[float(scores[i]) for i in order], mode="points",
            sam_model=self.config.sam_model, points=clicks, box=rect, multimask=multimask,
            embedding_cached=predictor.cache_hit, tiny=self.hub.tiny, reference=self.config.reference, name=name,
            timings={"encoder": predictor.encoder_seconds, "decoder": decoder, "total": time.perf_counter() - start},
        )

    def grid_side(self, model: Any) -> tuple[int, list[str]]:
        """The everything-mode grid for ``model``'s device, and a note when it was capped."""
        side = self.config.points_per_side
        on_cpu = next(model.parameters()).device.type == "cpu"
        if on_cpu and not self.config.reference and side > self.config.cpu_points_per_side:
            capped = self.config.cpu_points_per_side
            return capped, [f"points_per_side capped at {capped} on CPU (SAM uses {side}): {capped ** 2} prompts "
                            f"instead of {side ** 2}, small objects may be missed; reference=True runs SAM's grid"]
        return side, []

    def everything(self, image: ImageInput, name: str = "") -> SegmentResult:
        """Every mask SAM's automatic mask generator finds on ``image``, largest first."""
        start = time.perf_counter()
        rgb = self.load(image)
        model = self._model()
        side, notes = self.grid_side(model)
        cfg = self.config
        generator = SamAutomaticMaskGenerator(
            model, points_per_side=side, points_per_batch=cfg.points_per_batch, pred_iou_thresh=cfg.pred_iou_thresh,
            stability_score_thresh=cfg.stability_score_thresh, min_mask_region_area=cfg.min_mask_region_area)
        generator.predictor = predictor = CachedPredictor(model, self.cache, cfg.sam_model)
        generate_start = time.perf_counter()
        with model_lock(model):
            found = generator.generate(rgb)
        generator_seconds = time.perf_counter() - generate_start - predictor.encoder_seconds
        found.sort(key=lambda m: -m["area"])
        total = time.perf_counter() - start
        return SegmentResult(
            image=rgb, masks=[m["segmentation"] for m in found], scores=[float(m["predicted_iou"]) for m in found],
            stability=[float(m["stability_score"]) for m in found], mode="everything", sam_model=cfg.sam_model,
            embedding_cached=predictor.cache_hit, points_per_side=side, tiny=self.hub.tiny, reference=cfg.reference,
            notes=notes, name=name,
            timings={"encoder": predictor.encoder_seconds, "decoder": generator_seconds, "total": total},
        )
