"""Trident: training-free open-vocabulary semantic segmentation (ICCV 2025), "splice, then segment".

Given an RGB image and class names, :class:`TridentEngine` returns a label map, per-class probabilities,
the coarse (pre-refinement) label map, an overlay and per-stage timings (:class:`TridentResult`).
The algorithm follows ``specs/trident.md`` (the reference code's behaviour):

1. The image is resized so its short side is S (long side <= 2048), each side rounded up to a multiple
   of CLIP's patch and to at least 336, and cut into 336x336 windows on mmseg's sliding grid (stride s).
2. All windows go through DINO (``dino_b16``; ``dinov2_b14`` is a labelled deviation) in ONE batch and
   through CLIP (``clip_b16``; ``clip_h14`` option) in ONE batch, up to CLIP's second-to-last block.
3. CLIP's last block becomes proxy attention: softmax(3 (S - 1.2 mean S)) with S the cosine similarity of
   the window's DINO tokens, the mean over all windows of the image, negatives masked; values from CLIP's
   own projection; no residual, no MLP (:mod:`vision.engines.trident_ops`).
4. The windows' outputs are spliced onto the full-image token grid (overlaps averaged).
5. One SAM encoder pass on the whole image (two, one per half, for Cityscapes) gives the last block's
   attention and values; their thresholded cosine affinity aggregates the spliced features globally.
6. LN_post + projection, cosine with the text embeddings (80 ImageNet templates, cached per model and
   class list), bilinear upsampling, softmax at scale 40, max over each class's names; pixels whose
   best probability is under ``prob_thd`` become background.
7. SAM prompt refinement reuses the image embedding of step 5 (no second encoder pass): per class, one
   point + box per confident connected component (>= 225 px at half resolution) and a dense mask prompt,
   one batched ``predict_torch``, masks with predicted IoU > 0.8 relabel the pixels they cover.

Class names: a list with one entry per class; an entry is ``"name; synonym; ..."`` (or a list of names).
The background class is the one given by ``background=`` or else the class one of whose names is
"background". Inputs are checked: no classes, a single class, more than :data:`MAX_CLASSES` classes, an
empty class, or a name used twice raise :class:`ValueError` with the reason; names longer than CLIP's
77-token context are truncated by CLIP's tokenizer (the result's ``info["truncated_names"]`` lists them);
any Unicode text is accepted. Images of any size are accepted (smaller ones are upscaled: S >= 336).

Presets: :data:`PRESETS` holds the paper's eight benchmark settings plus "open" (S=448, stride 224,
``prob_thd`` free, default 0). With tiny models (``ModelHub(tiny=True)``) every output is noise and is
labelled so (``result.tiny``, the record's notice, a stamp on the overlay).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vision import imaging
from vision.classnames import CLASS_LISTS, ClassList
from vision.engines import trident_ops as ops
from vision.hub import model_lock
from vision.templates import OPENAI_IMAGENET_TEMPLATES

MAX_CLASSES = 255  # label maps are written as 8-bit indexed PNGs
CLIP_CONTEXT = 77
TEXT_BATCH = 640  # prompts per text-encoder forward
TEXT_CACHE_SIZE = 32  # (model, class list) entries kept


@dataclass(frozen=True)
class TridentConfig:
    """Every setting of one Trident run; :meth:`from_preset` gives the paper's per-benchmark values.

    ``short_side`` (S), ``stride`` and ``window``: the splice grid. ``prob_thd``: pixels whose best class
    probability is below it become background (needs a background class). ``coarse_thresh``: below it a
    pixel is "uncertain" and never prompted during refinement. ``cos_fac`` (k) and ``refine_neg_cos``:
    SAM affinity threshold e_i = k * mean cos (negative e_i -> 0.6 when ``refine_neg_cos`` is off),
    capped at ``cos_cap``. ``split_halves``: Cityscapes' left and right halves get their own SAM pass.
    ``beta``/``gamma``: proxy attention S' = gamma (S - beta mean S). ``clip``/``vfm``/``sam``: hub names.
    """

    preset: str = "open"
    short_side: int = 448
    stride: int = 224
    window: int = 336
    prob_thd: float = 0.0
    coarse_thresh: float = 0.2
    cos_fac: float = 1.2
    refine_neg_cos: bool = True
    cos_cap: float = 0.9
    split_halves: bool = False
    refine: bool = True
    logit_scale: float = 40.0
    beta: float = 1.2
    gamma: float = 3.0
    min_area: int = 225
    mask_coeff: float = 0.005
    sam_iou_thresh: float = 0.8
    max_long_side: int = 2048
    clip: str = "clip_b16"
    vfm: str = "dino_b16"
    sam: str = "sam_b"

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "TridentConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown Trident preset {name!r}; known: {', '.join(PRESETS)}")
        return PRESETS[name].replace(**overrides)

    def replace(self, **changes: Any) -> "TridentConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        if self.clip not in ("clip_b16", "clip_h14"):
            raise ValueError(f"clip must be clip_b16 or clip_h14, not {self.clip!r}")
        if self.vfm not in ("dino_b16", "dinov2_b14"):
            raise ValueError(f"vfm must be dino_b16 or dinov2_b14 (a deviation), not {self.vfm!r}")
        if self.sam not in ("sam_b", "sam_h"):
            raise ValueError(f"sam must be sam_b or sam_h, not {self.sam!r}")
        if not 0 < self.stride <= self.window:
            raise ValueError(f"stride must be in 1..window ({self.window}), got {self.stride}")
        if self.short_side < 1 or self.max_long_side < self.window:
            raise ValueError("short_side must be positive and max_long_side at least the window")
        if not 0.0 <= self.prob_thd <= 1.0 or not 0.0 <= self.coarse_thresh <= 1.0:
            raise ValueError("prob_thd and coarse_thresh are probabilities (0..1)")


def _preset(name: str, s: int, stride: int, prob_thd: float, coarse: float, k: float, neg: bool,
            halves: bool = False) -> TridentConfig:
    return TridentConfig(preset=name, short_side=s, stride=stride, prob_thd=prob_thd, coarse_thresh=coarse,
                         cos_fac=k, refine_neg_cos=neg, split_halves=halves)


PRESETS: dict[str, TridentConfig] = {
    "voc21": _preset("voc21", 448, 224, 0.2, 0.2, 1.2, True),
    "context60": _preset("context60", 576, 224, 0.15, 0.15, 1.2, True),
    "coco_object": _preset("coco_object", 448, 224, 0.25, 0.25, 1.2, True),
    "voc20": _preset("voc20", 336, 112, 0.0, 0.2, 0.0, True),
    "context59": _preset("context59", 576, 224, 0.0, 0.15, 1.2, True),
    "coco_stuff": _preset("coco_stuff", 448, 224, 0.0, 0.05, 1.2, True),
    "cityscapes": _preset("cityscapes", 688, 224, 0.0, 0.10, 3.0, False, halves=True),
    "ade20k": _preset("ade20k", 576, 224, 0.0, 0.05, 1.2, False),
    "open": _preset("open", 448, 224, 0.0, 0.2, 1.2, True),
}


# ------------------------------------------------------------------------------------------------ classes


@dataclass(frozen=True)
class Classes:
    """Parsed class names: ``names[i]`` are class i's names, ``background`` its background index."""

    names: tuple[tuple[str, ...], ...]
    background: int | None = None
    display: tuple[str, ...] = ()

    @property
    def queries(self) -> tuple[str, ...]:
        return tuple(n for names in self.names for n in names)

    @property
    def query_class(self) -> list[int]:
        return [i for i, names in enumerate(self.names) for _ in names]


def parse_classes(classes: Any, background: int | None = None) -> Classes:
    """Check and normalise class names (see the module docstring for the rules and errors)."""
    if isinstance(classes, Classes) and background is None:
        return classes
    display: tuple[str, ...] = ()
    if isinstance(classes, Classes):
        display, classes = classes.display, classes.names
    if isinstance(classes, ClassList):
        display, background = classes.display, classes.background if background is None else background
        classes = classes.names
    if isinstance(classes, str):
        raise ValueError("classes must be a list with one entry per class (synonyms of a class: 'a; b')")
    parsed: list[tuple[str, ...]] = []
    for i, entry in enumerate(classes or ()):
        parts = entry.split(";") if isinstance(entry, str) else list(entry)
        names = tuple(" ".join(str(p).split()) for p in parts if str(p).strip())
        if not names:
            raise ValueError(f"class {i} has no name (entry {entry!r})")
        parsed.append(names)
    if not parsed:
        raise ValueError("no class names given: pass at least two classes, e.g. ['cat', 'dog', 'background']")
    if len(parsed) < 2:
        raise ValueError(f"at least two classes are needed to segment, got one: {'; '.join(parsed[0])!r} "
                         "(add e.g. 'background', or check the separator between classes)")
    if len(parsed) > MAX_CLASSES:
        raise ValueError(f"{len(parsed)} classes given; at most {MAX_CLASSES} are supported "
                         "(label maps are 8-bit indexed PNGs)")
    seen: dict[str, int] = {}
    for i, names in enumerate(parsed):
        for name in names:
            key = name.casefold()
            if key in seen:
                where = f"classes {seen[key]} and {i}" if seen[key] != i else f"class {i}"
                raise ValueError(f"duplicate class name {name!r} ({where}); each name may appear once")
            seen[key] = i
    if background is None:
        background = seen.get("background")
    elif not 0 <= background < len(parsed):
        raise ValueError(f"background index {background} is not a class index (0..{len(parsed) - 1})")
    if len(display) != len(parsed):
        display = tuple(names[0] for names in parsed)
    return Classes(tuple(parsed), background, tuple(display))


# ------------------------------------------------------------------------------------------------- result


@dataclass
class TridentResult:
    """Outputs for one image. ``labels``/``coarse``: [H, W] int32 class indices; ``probs``: [K, H, W]
    float32 class probabilities (``None`` when not requested); ``overlay``: [H, W, 3] uint8;
    ``timings``: seconds per stage; ``info``: grid sizes, prompt counts, truncated names."""

    labels: np.ndarray
    coarse: np.ndarray
    probs: np.ndarray | None
    overlay: np.ndarray
    classes: Classes
    config: TridentConfig
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    tiny: bool = False

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.classes.display

    def to_record(self) -> dict[str, Any]:
        """A JSON-able summary: classes, pixel share of each class present, timings, settings."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.classes.names))
        total = max(1, self.labels.size)
        record = {
            "engine": "trident",
            "preset": self.config.preset,
            "classes": list(self.classes.display),
            "background": self.classes.background,
            "height": int(self.labels.shape[0]),
            "width": int(self.labels.shape[1]),
            "pixel_fraction": {self.classes.display[i]: round(float(c) / total, 5)
                               for i, c in enumerate(counts) if c},
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "config": dataclasses.asdict(self.config),
            **{k: v for k, v in self.info.items()},
            "tiny": self.tiny,
        }
        if self.tiny:
            from vision.tiny import TINY_NOTICE

            record["notice"] = TINY_NOTICE
        return record

    def to_files(self) -> dict[str, Any]:
        """``labels.png`` and ``coarse.png`` (indexed-palette PNGs, pixel value = class index) and
        ``overlay.png``; images for :mod:`vision.batch` to encode and write."""
        return {"labels.png": imaging.label_png(self.labels), "coarse.png": imaging.label_png(self.coarse),
                "overlay.png": self.overlay}


# ------------------------------------------------------------------------------------------------- engine


@dataclass
class _SamView:
    """One SAM encoder pass: the image columns [x0, x1), its last block's attention and values, and the
    predictor state (the image embedding that refinement reuses)."""

    x0: int
    x1: int
    grid: tuple[int, int]
    attention: ops.SamAttention | None
    state: dict[str, Any]


class TridentEngine:
    """Runs Trident with models from the hub. Thread-safe (one image at a time per engine)."""

    def __init__(self, hub: Any = None, config: TridentConfig | None = None):
        if hub is None:
            from vision.hub import get_hub

            hub = get_hub()
        self.hub = hub
        self.config = config or PRESETS["open"]
        self.config.validate()
        self._text_cache: OrderedDict[tuple[str, tuple[str, ...]], torch.Tensor] = OrderedDict()
        self._truncated: dict[tuple[str, ...], list[str]] = {}
        self._predictors: dict[int, Any] = {}
        self._lock = threading.RLock()

    # --------------------------------------------------------------------------------------- text side

    @torch.no_grad()
    def text_embeddings(self, queries: Sequence[str], clip_name: str | None = None) -> torch.Tensor:
        """[Q, D] unit text embeddings: each name through the 80 templates, each embedding normalised,
        averaged, re-normalised. Cached per (CLIP model, name list)."""
        clip_name = clip_name or self.config.clip
        key = (clip_name, tuple(queries))
        with self._lock:
            if key in self._text_cache:
                self._text_cache.move_to_end(key)
                return self._text_cache[key]
        model = self.hub.get(clip_name)
        tokenizer = self.hub.get("clip_tokenizer")
        device = next(model.parameters()).device
        prompts = [t.format(q) for q in queries for t in OPENAI_IMAGENET_TEMPLATES]
        chunks = []
        for start in range(0, len(prompts), TEXT_BATCH):
            tokens = tokenizer(prompts[start:start + TEXT_BATCH]).to(device)
            chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
        per_prompt = torch.cat(chunks).view(len(queries), len(OPENAI_IMAGENET_TEMPLATES), -1)
        embeddings = F.normalize(per_prompt.mean(dim=1), dim=-1)
        with self._lock:
            self._text_cache[key] = embeddings
            while len(self._text_cache) > TEXT_CACHE_SIZE:
                self._text_cache.popitem(last=False)
        return embeddings

    def set_text_embeddings(self, queries: Sequence[str], embeddings: torch.Tensor,
                            clip_name: str | None = None) -> None:
        """Put precomputed unit text embeddings [Q, D] for ``queries`` into the cache (benchmarks use this to
        leave the once-per-class-list text encoding out of per-image timings)."""
        if embeddings.shape[0] != len(queries):
            raise ValueError(f"{embeddings.shape[0]} embeddings for {len(queries)} names")
        with self._lock:
            self._text_cache[(clip_name or self.config.clip, tuple(queries))] = F.normalize(embeddings.float(), dim=-1)

    def truncated_names(self, queries: Sequence[str]) -> list[str]:
        """Names whose longest templated prompt exceeds CLIP's 77-token context (it gets truncated)."""
        key = tuple(queries)
        if key not in self._truncated:
            encode = getattr(self.hub.get("clip_tokenizer"), "encode", None)
            longest = max(OPENAI_IMAGENET_TEMPLATES, key=len)
            self._truncated[key] = [] if encode is None else [
                q for q in queries if len(encode(longest.format(q))) + 2 > CLIP_CONTEXT]
        return list(self._truncated[key])

    # -------------------------------------------------------------------------------------- image side

    def _predictor(self, sam: Any) -> Any:
        from segment_anything import SamPredictor

        predictor = self._predictors.get(id(sam))
        if predictor is None or predictor.model is not sam:
            predictor = self._predictors[id(sam)] = SamPredictor(sam)
        return predictor

    @torch.no_grad()
    def segment(self, image: Any, classes: Any = None, *, config: TridentConfig | None = None,
                background: int | None = None, return_probs: bool = True) -> TridentResult:
        """Segment ``image`` (path, bytes, PIL or RGB uint8 array) into ``classes``.

        ``classes=None`` uses the preset's benchmark class list (presets other than "open").
        """
        cfg = config or self.config
        cfg.validate()
        if classes is None:
            if cfg.preset not in CLASS_LISTS:
                raise ValueError("no class names given (the 'open' preset has no default class list)")
            classes = CLASS_LISTS[cfg.preset]
        parsed = parse_classes(classes, background)
        if cfg.prob_thd > 0 and parsed.background is None:
            raise ValueError(f"prob_thd={cfg.prob_thd} turns uncertain pixels into background, but no class is "
                             "the background: add a 'background' class or set prob_thd to 0")
        rgb = imaging.load_image(image)
        with self._lock:
            return self._segment(rgb, parsed, cfg, return_probs)

    def _segment(self, rgb: np.ndarray, classes: Classes, cfg: TridentConfig, return_probs: bool) -> TridentResult:
        timings: dict[str, float] = {}
        device = torch.device(self.hub.device)
        started = time.perf_counter()

        with _stage(timings, "text", device):
            text = self.text_embeddings(classes.queries, cfg.clip)
        clip = self.hub.get(cfg.clip)
        vfm = self.hub.get(cfg.vfm)
        sam = self.hub.get(cfg.sam)
        visual = clip.visual

        with _stage(timings, "prepare", device):
            height, width = rgb.shape[:2]
            patch = int(visual.patch_size[0])
            if cfg.window % patch:
                raise ValueError(f"the window ({cfg.window}) must be a multiple of CLIP's patch ({patch})")
            rh, rw = ops.resized_shape(height, width, cfg.short_side, patch, cfg.window, cfg.max_long_side)
            resized = cv2.resize(rgb, (rw, rh), interpolation=cv2.INTER_LINEAR)
            pixels = torch.from_numpy(resized).to(device).permute(2, 0, 1)[None].float() / 255.0
            boxes = ops.window_boxes(rh, rw, cfg.window, cfg.stride)
            windows = ops.crop_windows(pixels, boxes)

        with _stage(timings, "dino", device):
            vfm_patch = int(getattr(vfm.config, "patch_size", 16))
            vfm_grid = (cfg.window // vfm_patch, cfg.window // vfm_patch)
            vfm_in = ops.normalise(windows, ops.IMAGENET_MEAN, ops.IMAGENET_STD).to(vfm.dtype)
            hidden = vfm(pixel_values=vfm_in, interpolate_pos_encoding=True).last_hidden_state
            tokens = hidden[:, -vfm_grid[0] * vfm_grid[1]:]  # drop the class (and any register) tokens
            weights = ops.proxy_attention_weights(tokens, cfg.beta, cfg.gamma)

        with _stage(timings, "clip", device):
            x, clip_grid = ops.clip_trunk(visual, ops.normalise(windows, ops.CLIP_MEAN, ops.CLIP_STD))
            out = ops.proxy_block(visual.transformer.resblocks[-1], x, clip_grid, weights, vfm_grid)
            maps = out.float().transpose(1, 2).reshape(len(boxes), -1, *vfm_grid)
            if vfm_grid != clip_grid:
                maps = F.interpolate(maps, size=clip_grid, mode="bilinear", align_corners=False)
            token_boxes = [tuple(v // patch for v in b) for b in boxes]
            spliced = ops.splice(maps, token_boxes, (rh // patch, rw // patch))

        predictor = self._predictor(sam)
        with _stage(timings, "sam_encoder", device):
            views = self._sam_views(predictor, rgb, cfg)

        with _stage(timings, "aggregate", device):
            logits = []
            for view in views:
                affinity = ops.sam_affinity(view.attention.attn, view.attention.values, cfg.cos_fac,
                                            cfg.refine_neg_cos, cfg.cos_cap)
                view.attention = None  # [h, N, N]: free it before refinement
                block = ops.crop_resize(spliced, view.x0 / width, view.x1 / width, view.grid)
                feats = affinity @ block.flatten(1).T  # [N, C]
                feats = visual.ln_post(feats.to(visual.proj.dtype)) @ visual.proj
                feats = F.normalize(feats.float(), dim=-1)
                view_logits = (feats @ text.T).T.reshape(-1, *view.grid)
                logits.append(F.interpolate(view_logits[None], size=(height, view.x1 - view.x0),
                                            mode="bilinear", align_corners=False)[0])
            query_probs = (cfg.logit_scale * torch.cat(logits, dim=2)).softmax(dim=0)
            probs, start = [], 0
            for names in classes.names:  # a class's probability: the max over its names
                probs.append(query_probs[start:start + len(names)].amax(dim=0))
                start += len(names)
            probs = torch.stack(probs)
            best, coarse = probs.max(dim=0)
            if cfg.prob_thd > 0:
                coarse[best < cfg.prob_thd] = classes.background

        labels = coarse
        info: dict[str, Any] = {"resized": [rh, rw], "windows": len(boxes), "sam_passes": len(views),
                                "sam_grid": [list(v.grid) for v in views], "prompts": 0, "kept_masks": 0,
                                "truncated_names": self.truncated_names(classes.queries)}
        if cfg.refine:
            with _stage(timings, "refine", device):
                parts = []
                for view in views:
                    for key, value in view.state.items():
                        setattr(predictor, key, value)
                    part, stats = ops.sam_refine(predictor, probs[:, :, view.x0:view.x1],
                                                 coarse[:, view.x0:view.x1], cfg.coarse_thresh, cfg.min_area,
                                                 cfg.mask_coeff, cfg.sam_iou_thresh)
                    parts.append(part)
                    info["prompts"] += stats.prompted
                    info["kept_masks"] += stats.kept
                labels = torch.cat(parts, dim=1)
        predictor.reset_image()

        labels_np = labels.to(torch.int32).cpu().numpy()
        overlay = imaging.overlay_labels(rgb, labels_np, n_colours=len(classes.names))
        if self.hub.tiny:
            overlay = _stamp_tiny(overlay)
        timings["total"] = time.perf_counter() - started
        return TridentResult(
            labels=labels_np, coarse=coarse.to(torch.int32).cpu().numpy(),
            probs=probs.float().cpu().numpy() if return_probs else None, overlay=overlay, classes=classes,
            config=cfg, timings=timings, info=info, tiny=bool(self.hub.tiny))

    def _sam_views(self, predictor: Any, rgb: np.ndarray, cfg: TridentConfig) -> list[_SamView]:
        """One SAM encoder pass per view (the whole image, or its two halves with ``split_halves``),
        recording the last block's attention; returns it with each view's predictor state."""
        width = rgb.shape[1]
        cuts = [0, width // 2, width] if cfg.split_halves and width >= 2 else [0, width]
        encoder = predictor.model.image_encoder
        token = int(encoder.patch_embed.proj.kernel_size[0])
        views = []
        for x0, x1 in zip(cuts[:-1], cuts[1:]):
            part = np.ascontiguousarray(rgb[:, x0:x1])
            ih, iw = predictor.transform.get_preprocess_shape(part.shape[0], part.shape[1], encoder.img_size)
            grid = (max(1, ih // token), max(1, iw // token))
            # The capture patches the shared SAM's last block: no other engine runs SAM meanwhile.
            with model_lock(predictor.model), ops.capture_sam_attention(encoder, grid) as captured:
                predictor.set_image(part)
            state = {"features": predictor.features, "original_size": predictor.original_size,
                     "input_size": predictor.input_size, "is_image_set": True}
            views.append(_SamView(x0, x1, grid, captured, state))
        return views


@contextlib.contextmanager
def _stage(timings: dict[str, float], name: str, device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def _stamp_tiny(image: np.ndarray) -> np.ndarray:
    """Write "TINY MODE - random weights, noise" across the top of an overlay."""
    out = image.copy()
    scale = max(0.4, min(out.shape[1] / 900, 1.5))
    cv2.rectangle(out, (0, 0), (out.shape[1], int(28 * scale)), (0, 0, 0), thickness=-1)
    cv2.putText(out, "TINY MODE: random weights, output is noise", (6, int(20 * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                0.6 * scale, (255, 255, 0), max(1, int(scale)), cv2.LINE_AA)
    return out
