"""IPSeg: segment a visual concept in target images from an image prompt (training-free).

Algorithm (spec: ``shared/specs/ipseg.md``; paper: IJCV 2024, reference ``luckybird1994/IPSeg``):

1. **Features.** DINOv2-B/14 on the image letterboxed to 840 px: ``hidden_states[-1]`` (the last block,
   *before* the final LayerNorm), CLS dropped -> 60x60x768. Stable Diffusion 1.5 (faithful mode): the
   image letterboxed to 960 px, VAE latent mean x 0.18215 (latent 120x120), noised once at t = 100 with
   ``DDPMScheduler.add_noise`` (seeded noise), one UNet pass with the empty-prompt text embedding;
   forward hooks on ``up_blocks[0].resnets[1]`` (s5, 1280x15x15), ``up_blocks[1].attentions[1]`` (s4,
   1280x30x30) and ``up_blocks[2].attentions[1]`` (s3, 640x60x60) of the hub's shared UNet. The hooks
   are removed after the pass, and the pass stops right after the last hooked layer (the rest of the
   UNet would not change the features). Every map is cropped to the cells that cover the real image and
   resized (nearest) to the 60x60 grid (see :mod:`vision.engines.ipseg_points` for the coordinates).
2. **Prompt region.** The user's mask, box or scribble on the prompt image, else an automatic
   foreground: the first principal component of the prompt's DINOv2 tokens, thresholded at its mean,
   the sign chosen so the centre of the image is foreground (``"auto-pca"``; no SAM refinement). Masks
   and boxes go to the grid by nearest sampling and a 3x3 erosion (fallback: un-eroded, then every cell
   the mask touches); scribbles (thin strokes) by "any pixel in the cell", not eroded. Each result says
   which source ran.
3. **Prototype and similarity.** ``p_f`` = L2-normalised mean of the prompt's raw features over the
   region, for f in {dino, s5, s4, s3}; ``S = c_dino + 0.1 (0.3 c_s5 + 0.2 c_s4 + 0.1 c_s3)`` with ``c_f``
   the cosine map over the target. In the DINOv2-only fast mode (``sd_weight = 0``) ``S = c_dino`` and
   the SD models are never loaded. k-shot: ``kshot="mean"`` (default) averages the per-image normalised
   prototypes (and re-normalises); ``"max"`` keeps them all and takes, per cell, the highest S.
4. **Points.** Positive: seeded k-means (K = 4, 20 iterations) of the 32 highest cells; negative: the
   same on the 32 lowest. Cells map to image pixels at their centres.
5. **SAM.** ``SamPredictor.set_image`` ONCE per target (every concept and instance reuses the
   embedding), then PerSAM's three-step cascade (:func:`~vision.engines.ipseg_points.sam_cascade`).

Beyond the paper: a presence score (mean of the 32 highest S; a target scoring below
``presence_threshold`` is "absent": no mask), several instances per target (``max_instances``: after an
instance, its cells and the cells its points came from are excluded and the next instance is sought
while the top-32 mean of the remaining cells stays >= ``presence_threshold``, or, with no threshold,
>= ``instance_ratio`` x the first instance's score), several concepts per call, several prompt images per
concept, and a prompt cache (prompt image content + region + feature settings -> prototypes) so that a
batch of N targets costs one prompt pass.

Documented behaviour for awkward inputs (:class:`IPSegError`, a ``ValueError`` whose message is for the
user): a prompt mask of another size is resized (nearest) with a warning when its aspect ratio matches
the image within 5%, and refused otherwise; an empty mask, an empty/degenerate box or an empty scribble
is refused; a prompt with no salient region (near-uniform pixels, or a principal component that splits
nothing off) is refused with advice to give a mask or box; an image whose shorter side is below
``min_side`` (default 14 px, one DINOv2 patch) is refused.

No presence threshold is set by default (the paper always answers with a mask): calibrate one on real
weights for your data (the score is a cosine, about -1..1.06).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from vision.engines import ipseg_points as P
from vision.hub import model_lock
from vision.imaging import ImageError, ImageInput, letterbox, load_image, load_mask, overlay_mask, palette

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SD_FEATURES = ("s5", "s4", "s3")
# (module path in the UNet, feature name): SD1.5 decoder layers hooked for s5, s4, s3.
SD_HOOKS = (("up_blocks.0.resnets.1", "s5"), ("up_blocks.1.attentions.1", "s4"), ("up_blocks.2.attentions.1", "s3"))


class IPSegError(ValueError):
    """An input IPSeg cannot use; the message says why and what to do (shown to the user as is)."""


class IPSegWarning(UserWarning):
    """An input IPSeg adjusted (e.g. a resized prompt mask); also listed in the result's ``notes``."""


@dataclass(frozen=True)
class IPSegConfig:
    """Settings; the defaults are the paper's (with SAM-B as the light segmenter)."""

    dino_model: str = "dinov2_b14"
    dino_size: int = 840  # letterbox side for DINOv2 (840 / 14 = the 60x60 grid)
    sd_weight: float = 0.1  # weight of the SD term; 0 = DINOv2-only fast mode (SD never loaded)
    sd_layer_weights: tuple[float, float, float] = (0.3, 0.2, 0.1)  # s5, s4, s3
    sd_size: int = 960  # letterbox side for SD (latent 120)
    sd_timestep: int = 100
    latent_scale: float = 0.18215
    sam_model: str = "sam_b"  # or "sam_h" (the paper's)
    top_k: int = 32
    clusters: int = 4
    kmeans_iters: int = 20
    seed: int = 0  # k-means initialisation and the SD noise
    kshot: str = "mean"  # several prompt images: "mean" of prototypes or per-cell "max" of similarities
    presence_threshold: float | None = None  # below it a concept is "absent" (no mask); None: always a mask
    max_instances: int = 1  # masks per concept per target
    instance_ratio: float = 0.8  # extra instances (no threshold): score >= ratio x first instance's score
    min_side: int = 14  # images with a shorter side are refused (one DINOv2 patch)

    @classmethod
    def fast(cls, **changes: Any) -> "IPSegConfig":
        """DINOv2-only fast mode: no Stable Diffusion features (and SD weights never loaded)."""
        return cls(**{"sd_weight": 0.0, **changes})

    @property
    def use_sd(self) -> bool:
        return self.sd_weight != 0

    @property
    def mode(self) -> str:
        return "dinov2+sd15" if self.use_sd else "dinov2-only"

    def validate(self) -> "IPSegConfig":
        problems = []
        if self.dino_size <= 0 or self.dino_size % 14:
            problems.append(f"dino_size={self.dino_size} must be a positive multiple of 14 (the patch size)")
        if self.use_sd and (self.sd_size <= 0 or self.sd_size % 64):
            problems.append(f"sd_size={self.sd_size} must be a positive multiple of 64 (latent divisible by 8)")
        if self.kshot not in ("mean", "max"):
            problems.append(f"kshot={self.kshot!r} must be 'mean' or 'max'")
        if self.sam_model not in ("sam_b", "sam_h"):
            problems.append(f"sam_model={self.sam_model!r} must be 'sam_b' or 'sam_h'")
        if self.top_k < 1 or self.clusters < 1 or self.kmeans_iters < 1 or self.max_instances < 1:
            problems.append("top_k, clusters, kmeans_iters and max_instances must be >= 1")
        if not 0 <= self.sd_timestep < 1000:
            problems.append(f"sd_timestep={self.sd_timestep} must be in 0..999")
        if problems:
            raise IPSegError("invalid IPSeg settings: " + "; ".join(problems))
        return self

    def feature_key(self) -> tuple:
        """The settings that change prompt prototypes (part of the prompt-cache key)."""
        sd = (self.sd_size, self.sd_timestep, self.latent_scale, self.seed) if self.use_sd else None
        return (self.dino_model, self.dino_size, sd)


# ---------------------------------------------------------------------------------------------- inputs
@dataclass
class Prompt:
    """One prompt image with at most one of: ``mask`` (array, image or path; nonzero = concept),
    ``box`` (x0, y0, x1, y1 in pixels) or ``scribble`` (strokes on the concept, array/image/path).
    None of them: automatic foreground."""

    image: ImageInput
    mask: Any = None
    box: Sequence[float] | None = None
    scribble: Any = None


@dataclass
class Concept:
    """A concept to find: one or more prompt images (k-shot) and a name for the outputs."""

    prompts: list[Prompt]
    name: str = "concept"


def as_concepts(concepts: Any) -> list[Concept]:
    """Normalise what :meth:`IPSeg.segment` accepts into a list of :class:`Concept`.

    An image (path, array, PIL, bytes) or a :class:`Prompt` is one single-shot concept; a
    :class:`Concept` is itself; a list of images/Prompts is ONE k-shot concept; a list of Concepts is
    several concepts; a dict ``{name: image | Prompt | list of them}`` is several named concepts.
    """
    def prompts_of(value: Any) -> list[Prompt]:
        values = value if isinstance(value, (list, tuple)) else [value]
        return [v if isinstance(v, Prompt) else Prompt(v) for v in values]

    if isinstance(concepts, Concept):
        out = [concepts]
    elif isinstance(concepts, Mapping):
        out = [Concept(prompts_of(v), str(k)) for k, v in concepts.items()]
    elif isinstance(concepts, (list, tuple)) and concepts and all(isinstance(c, Concept) for c in concepts):
        out = list(concepts)
    else:
        out = [Concept(prompts_of(concepts))]
    if not out or any(not c.prompts for c in out):
        raise IPSegError("no prompt image given")
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise IPSegError(f"concept names must differ, got {names}")
    return out


# --------------------------------------------------------------------------------------------- results
@dataclass
class Instance:
    """One mask of a concept in a target."""

    mask: np.ndarray  # bool [H, W]
    score: float  # mean of the top-k similarity of the cells it was sought in
    sam_iou: float  # SAM's predicted IoU of the kept mask
    positive: np.ndarray  # [N, 2] (x, y) pixels
    negative: np.ndarray  # [M, 2] (x, y) pixels
    positive_cells: np.ndarray  # [N, 2] (row, col) grid cells
    negative_cells: np.ndarray
    box_used: bool  # step 3 of the cascade had a box

    def to_record(self) -> dict:
        box = P.mask_bbox(self.mask)
        return {"score": round(self.score, 6), "sam_iou": round(self.sam_iou, 6), "area": int(self.mask.sum()),
                "bbox": None if box is None else [int(v) for v in box], "box_used": self.box_used,
                "points": {"positive": np.round(self.positive.astype(np.float64), 2).tolist(),
                           "negative": np.round(self.negative.astype(np.float64), 2).tolist()},
                "cells": {"positive": self.positive_cells.tolist(), "negative": self.negative_cells.tolist()}}


@dataclass
class ConceptResult:
    name: str
    presence: float  # mean of the top-k values of S over the whole target
    present: bool
    instances: list[Instance]
    similarity: np.ndarray  # S on the grid, float32 [g, g]
    prompt_regions: list[dict]  # per prompt image: {"source": mask|box|scribble|auto-pca, "grid": how}

    @property
    def mask(self) -> np.ndarray | None:
        """Union of the instances' masks (None when the concept has no instance)."""
        if not self.instances:
            return None
        return np.logical_or.reduce([i.mask for i in self.instances])

    def to_record(self) -> dict:
        return {"name": self.name, "present": self.present, "presence": round(self.presence, 6),
                "prompt_regions": self.prompt_regions, "instances": [i.to_record() for i in self.instances]}


@dataclass
class IPSegResult:
    """IPSeg's answer for one target image (see :meth:`to_record` and :meth:`to_files`)."""

    image: np.ndarray  # the target, RGB uint8 [H, W, 3]
    concepts: list[ConceptResult]
    timings: dict[str, float]  # seconds per stage
    prompt_cached: bool  # every prompt came from the cache (no prompt pass for this target)
    config: IPSegConfig
    tiny: bool = False  # made with tiny random-weight models (the masks are noise)
    notes: list[str] = field(default_factory=list)
    name: str = ""

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    @property
    def masks(self) -> list[np.ndarray]:
        """Every instance mask of every concept (bool [H, W]), concept by concept."""
        return [i.mask for c in self.concepts for i in c.instances]

    @property
    def mask(self) -> np.ndarray:
        """Union of all masks (bool [H, W]; all False when every concept is absent)."""
        out = np.zeros(self.size, dtype=bool)
        for m in self.masks:
            out |= m
        return out

    @property
    def presence(self) -> float:
        """Presence score of the first concept."""
        return self.concepts[0].presence

    @property
    def similarity(self) -> np.ndarray:
        """Similarity map of the first concept on the grid (float32 [g, g])."""
        return self.concepts[0].similarity

    def to_record(self) -> dict:
        """JSON-able summary: presence, instances (scores, points, boxes), regions, timings."""
        record = {
            "present": any(c.present for c in self.concepts), "score": round(self.presence, 6),
            "category": self.concepts[0].name, "width": self.size[1], "height": self.size[0],
            "concepts": [c.to_record() for c in self.concepts], "mode": self.config.mode,
            "sam_model": self.config.sam_model, "prompt_cached": self.prompt_cached,
            "timings": {k: round(v, 4) for k, v in self.timings.items()}, "notes": list(self.notes),
        }
        if self.name:
            record["target"] = self.name
        if self.tiny:
            record["tiny"] = True  # random-weight models: the masks are noise
        return record

    def overlay(self) -> np.ndarray:
        """The target with each instance tinted (one colour each) and its points drawn (positive
        green, negative red); in tiny mode a banner says the masks are random-weight noise."""
        colours = palette(len(self.masks) + 1)[1:]
        out = self.image
        for colour, m in zip(colours, self.masks):
            out = overlay_mask(out, m, colour=tuple(int(v) for v in colour))
        canvas = Image.fromarray(out)
        draw = ImageDraw.Draw(canvas)
        r = max(2, min(self.size) // 80)
        for inst in (i for c in self.concepts for i in c.instances):
            for points, fill in ((inst.positive, (0, 255, 0)), (inst.negative, (255, 0, 0))):
                for x, y in points:
                    draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(0, 0, 0))
        if self.tiny:
            from vision.tiny import TINY_NOTICE

            draw.rectangle([0, 0, canvas.width, 12], fill=(0, 0, 0))
            draw.text((2, 0), TINY_NOTICE, fill=(255, 255, 0))
        return np.asarray(canvas)

    def to_files(self) -> dict[str, Any]:
        """``{"mask.png": union mask, "overlay.png": overlay}``; with several masks also one
        ``<concept>_<k>.inst.png`` per instance (k from 0)."""
        files: dict[str, Any] = {"mask.png": self.mask, "overlay.png": self.overlay()}
        if len(self.masks) > 1:
            for c in self.concepts:
                slug = re.sub(r"[^A-Za-z0-9_-]+", "-", c.name).strip("-") or "concept"
                for k, inst in enumerate(c.instances):
                    files[f"{slug}_{k}.inst.png"] = inst.mask
        return files


@dataclass
class PromptFeatures:
    """What a prompt image contributes: prototypes per feature type and the region they came from."""

    prototypes: dict[str, torch.Tensor]  # feature -> [C], L2-normalised
    region: np.ndarray  # bool [g, g]
    source: str  # "mask", "box", "scribble" or "auto-pca"
    grid_detail: str  # how the region reached the grid ("eroded", "uneroded", "touched", ...)
    notes: list[str]


class _FeaturesReady(Exception):
    """Raised by the last SD hook to end the UNet pass early (everything after it is unused)."""


# ---------------------------------------------------------------------------------------------- engine
class IPSeg:
    """The IPSeg pipeline on the shared models of a :class:`vision.hub.ModelHub`.

    >>> engine = IPSeg()                                   # paper defaults; IPSegConfig.fast() for DINOv2 only
    >>> result = engine.segment(Prompt("dog.jpg", mask="dog_mask.png"), "park.jpg")
    >>> result.mask, result.presence, result.timings
    >>> results = engine.segment_batch({"dog": "dog.jpg", "ball": Prompt("ball.jpg", box=(10, 10, 90, 90))},
    ...                                ["a.jpg", "b.jpg"])   # prompts computed once for both targets
    """

    def __init__(self, config: IPSegConfig | None = None, hub: Any = None, cache_size: int = 64):
        from vision.hub import get_hub

        self.config = (config or IPSegConfig()).validate()
        self.hub = hub if hub is not None else get_hub()
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, PromptFeatures] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._embedding: tuple[Any, torch.Tensor] | None = None  # (text encoder, empty-prompt embedding)
        self._scheduler = None
        self.cache_hits = 0
        self.cache_misses = 0

    # ----------------------------------------------------------------------------------------- public
    def segment(self, concepts: Any, target: ImageInput, name: str = "") -> IPSegResult:
        """Segment the concept(s) in one target image (see :func:`as_concepts` for ``concepts``)."""
        return self._segment(as_concepts(concepts), target, name)

    def segment_batch(self, concepts: Any, targets: Sequence[ImageInput]) -> list[IPSegResult]:
        """Segment the concept(s) in every target; the prompt pass runs once for the whole batch."""
        parsed = as_concepts(concepts)
        return [self._segment(parsed, t, str(t) if isinstance(t, (str, os.PathLike)) else "") for t in targets]

    def prepare(self, concepts: Any) -> list[Concept]:
        """Compute (and cache) the prompt features now, e.g. once per batch worker. Returns the concepts
        with their prompt images decoded, so that later cache lookups only hash pixels."""
        prepared = []
        for concept in as_concepts(concepts):
            prompts = [dataclasses.replace(p, image=_load(p.image, "prompt image")) for p in concept.prompts]
            for prompt in prompts:
                self.prompt_features(prompt)
            prepared.append(Concept(prompts, concept.name))
        return prepared

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    def prompt_features(self, prompt: Prompt) -> tuple[PromptFeatures, bool]:
        """The prompt's prototypes (cached by image content + region + feature settings) and whether they
        came from the cache."""
        image = _load(prompt.image, "prompt image")
        self._check_size(image, "prompt image")
        region = self._user_region(prompt, image.shape[:2])
        key = (_digest(image), None if region is None else (region[0], _digest(region[1])),
               self.config.feature_key())
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return self._cache[key], True
        features = self.features(image)
        notes = list(region[2]) if region is not None else []
        if region is None:
            grid_region, detail = self._auto_region(image, features["dino"])
            source = "auto-pca"
        else:
            source, mask = region[0], region[1]
            grid = features["dino"].shape[-1]
            if source == "scribble":
                grid_region, detail = P.mask_touches_grid(mask, grid), "touched"
            else:
                grid_region, detail = P.region_from_mask(mask, grid)
        protos = {f: P.prototype(feat, grid_region) for f, feat in features.items()}
        entry = PromptFeatures(protos, grid_region, source, detail, notes)
        with self._cache_lock:
            self.cache_misses += 1
            self._cache[key] = entry
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return entry, False

    def features(self, image: np.ndarray, timings: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
        """{"dino": [768, g, g]} (+ {"s5", "s4", "s3"} in faithful mode) over the image's grid, float32."""
        timings = {} if timings is None else timings
        start = time.perf_counter()
        feats = {"dino": _synced(self.dino_features(image))}
        timings["dino"] = time.perf_counter() - start
        if self.config.use_sd:
            start = time.perf_counter()
            feats.update({k: _synced(v) for k, v in self.sd_features(image, feats["dino"].shape[-1]).items()})
            timings["sd"] = time.perf_counter() - start
        return feats

    def dino_features(self, image: np.ndarray) -> torch.Tensor:
        """DINOv2 tokens of the last block before the final LayerNorm, CLS dropped, on the image's grid
        ([C, g, g] float32, g = dino_size / 14)."""
        model = self.hub.get(self.config.dino_model)
        device, dtype = _device_dtype(model)
        square, box = letterbox(image, self.config.dino_size)
        x = torch.as_tensor(square, dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
        x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        with torch.no_grad():
            tokens = model(pixel_values=x.to(device=device, dtype=dtype), output_hidden_states=True).hidden_states[-1]
        patches = tokens[0, 1:].float()
        side = int(round(patches.shape[0] ** 0.5))
        if side * side != patches.shape[0]:
            raise RuntimeError(f"DINOv2 returned {patches.shape[0]} patch tokens, not a square grid")
        fmap = patches.T.reshape(-1, side, side)
        return P.crop_to_grid(fmap, box, side)

    def sd_features(self, image: np.ndarray, grid: int) -> dict[str, torch.Tensor]:
        """SD1.5 decoder features s5, s4, s3 on the image's grid ([C, grid, grid] float32 each)."""
        raw, box = self.sd_raw_features(image)
        return {name: P.crop_to_grid(feat[0].float(), box, grid) for name, feat in raw.items()}

    def sd_raw_features(self, image: np.ndarray) -> tuple[dict[str, torch.Tensor], Any]:
        """The hooked UNet outputs on the letterboxed square ({"s5": [1, C, n/8, n/8], "s4": [1, C, n/4,
        n/4], "s3": [1, C, n/2, n/2]} for latent side n) and the letterbox placement."""
        cfg = self.config
        vae = self.hub.get("sd15_vae")
        square, box = letterbox(image, cfg.sd_size)
        device, dtype = _device_dtype(vae)
        x = torch.as_tensor(square, dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1.0
        with torch.no_grad():
            latent = vae.encode(x.to(device=device, dtype=dtype)).latent_dist.mean * cfg.latent_scale
            generator = torch.Generator("cpu").manual_seed(cfg.seed)  # CPU noise: the same on every device
            noise = torch.randn(latent.shape, generator=generator, dtype=torch.float32).to(latent.device)
            timestep = torch.tensor([cfg.sd_timestep], dtype=torch.long, device=latent.device)
            noisy = self.scheduler().add_noise(latent.float(), noise, timestep)
            embedding = self.empty_embedding()
            unet = self.hub.get("sd15_unet")  # asked for last: a memory budget may offload the others
            u_device, u_dtype = _device_dtype(unet)
            embedding = embedding.to(device=u_device, dtype=u_dtype)
            with model_lock(unet):  # the hooks go on the shared UNet: no other engine runs it meanwhile
                raw = run_hooked_unet(unet, noisy.to(device=u_device, dtype=u_dtype), timestep.to(u_device),
                                      embedding)
        return raw, box

    def scheduler(self) -> Any:
        """A DDPM scheduler with the hub's SD1.5 noise schedule (for ``add_noise``)."""
        if self._scheduler is None:
            from diffusers import DDPMScheduler

            self._scheduler = DDPMScheduler.from_config(self.hub.get("sd15_scheduler").config)
        return self._scheduler

    def empty_embedding(self) -> torch.Tensor:
        """The text encoder's output for the empty prompt, [1, 77, D] (computed once per encoder)."""
        encoder = self.hub.get("sd15_text_encoder")
        if self._embedding is None or self._embedding[0] is not encoder:
            tokenizer = self.hub.get("sd15_tokenizer")
            ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            device, _ = _device_dtype(encoder)
            with torch.no_grad():
                self._embedding = (encoder, encoder(ids.to(device))[0].detach())
        return self._embedding[1]

    # ---------------------------------------------------------------------------------------- internals
    def _check_size(self, image: np.ndarray, what: str) -> None:
        h, w = image.shape[:2]
        if min(h, w) < self.config.min_side:
            raise IPSegError(f"the {what} is {w}x{h} pixels: smaller than one {self.config.min_side}-pixel "
                             "DINOv2 patch on its shorter side; nothing to segment (use a larger image)")

    def _user_region(self, prompt: Prompt, hw: tuple[int, int]) -> tuple[str, np.ndarray, list[str]] | None:
        given = [n for n in ("mask", "box", "scribble") if getattr(prompt, n) is not None]
        if len(given) > 1:
            raise IPSegError(f"give at most one of mask, box or scribble for a prompt image (got {given})")
        if not given:
            return None
        kind = given[0]
        notes: list[str] = []
        if kind == "box":
            box = np.asarray(prompt.box, dtype=np.float64).reshape(-1)
            if box.size != 4 or not np.isfinite(box).all():
                raise IPSegError(f"a prompt box is (x0, y0, x1, y1) in pixels, got {prompt.box!r}")
            mask = P.box_to_mask(box, hw)
            if not mask.any():
                raise IPSegError(f"the prompt box {box.tolist()} covers no pixel of the {hw[1]}x{hw[0]} image")
            return "box", mask, notes
        try:
            mask = load_mask(getattr(prompt, kind))
        except (ImageError, OSError) as err:
            raise IPSegError(f"prompt {kind}: {err}") from None
        if mask.shape != tuple(hw):
            mh, mw = mask.shape
            if abs(np.log((mw / mh) / (hw[1] / hw[0]))) > np.log(1.05):
                raise IPSegError(f"the prompt {kind} is {mw}x{mh} but the prompt image is {hw[1]}x{hw[0]}: "
                                 "the shapes differ too much to be the same picture")
            note = f"prompt {kind} resized from {mw}x{mh} to the image's {hw[1]}x{hw[0]} (nearest)"
            warnings.warn(note, IPSegWarning, stacklevel=3)
            notes.append(note)
            mask = load_mask(mask, size=hw)
        if not mask.any():
            raise IPSegError(f"the prompt {kind} is empty (no pixel set): mark the concept, or give no "
                             f"{kind} to use the automatic foreground")
        return kind, mask, notes

    def _auto_region(self, image: np.ndarray, dino: torch.Tensor) -> tuple[np.ndarray, str]:
        advice = "give a mask or a box of the concept on the prompt image"
        if float(image.reshape(-1, 3).astype(np.float32).std(axis=0).max()) < 2.0:
            raise IPSegError(f"no salient region in the prompt image (its pixels are nearly uniform): {advice}")
        fg, _ = P.first_pc_foreground(dino)
        if not fg.any() or fg.all():
            raise IPSegError(f"no salient region found in the prompt image: {advice}")
        eroded = P.erode3x3(fg)
        return (eroded, "auto-eroded") if eroded.any() else (fg, "auto-uneroded")

    def similarity(self, shots: list[PromptFeatures], target: dict[str, torch.Tensor]) -> np.ndarray:
        """S on the target's grid (float32 [g, g]) from one concept's prompt shots and the target's
        :meth:`features`; several shots are combined by ``config.kshot``."""
        cfg = self.config
        weights = {"dino": 1.0}
        if cfg.use_sd:
            weights.update({f: cfg.sd_weight * w for f, w in zip(SD_FEATURES, cfg.sd_layer_weights)})

        def combined(protos: dict[str, torch.Tensor]) -> torch.Tensor:
            return sum(w * P.cosine_map(protos[f], target[f]) for f, w in weights.items())

        if cfg.kshot == "mean" or len(shots) == 1:
            mean = {f: F.normalize(torch.stack([s.prototypes[f] for s in shots]).mean(0), dim=0) for f in weights}
            sim = combined(mean)
        else:
            sim = torch.stack([combined(s.prototypes) for s in shots]).max(dim=0).values
        return sim.float().cpu().numpy().astype(np.float32)

    def _segment(self, concepts: list[Concept], target: ImageInput, name: str) -> IPSegResult:
        cfg = self.config
        timings: dict[str, float] = {}
        start = time.perf_counter()
        shots_per_concept, cached, notes = [], True, []
        for concept in concepts:
            shots = []
            for prompt in concept.prompts:
                entry, hit = self.prompt_features(prompt)
                cached &= hit
                notes += [n for n in entry.notes if n not in notes]
                shots.append(entry)
            shots_per_concept.append(shots)
        timings["prompt"] = time.perf_counter() - start  # loading + hashing only, when every prompt is cached
        t0 = time.perf_counter()
        image = _load(target, "target image")
        self._check_size(image, "target image")
        timings["load"] = time.perf_counter() - t0
        feats = self.features(image, timings)

        from segment_anything import SamPredictor

        t0 = time.perf_counter()
        predictor = SamPredictor(self.hub.get(cfg.sam_model))
        with torch.no_grad(), model_lock(predictor.model):
            predictor.set_image(image)
        _synced(predictor.features)
        timings["sam_encode"] = time.perf_counter() - t0
        timings.update(similarity=0.0, points=0.0, sam_decode=0.0)
        results = []
        for concept, shots in zip(concepts, shots_per_concept):
            t0 = time.perf_counter()
            sim = self.similarity(shots, feats)
            timings["similarity"] += time.perf_counter() - t0
            presence, present, instances = find_instances(sim, image.shape[:2], predictor, cfg, timings)
            regions = [{"source": s.source, "grid": s.grid_detail} for s in shots]
            results.append(ConceptResult(concept.name, presence, present, instances, sim, regions))
        timings["total"] = time.perf_counter() - start
        return IPSegResult(image, results, timings, cached, cfg, bool(getattr(self.hub, "tiny", False)), notes,
                           name)


def find_instances(sim: np.ndarray, hw: tuple[int, int], predictor: Any, config: IPSegConfig,
                   timings: dict[str, float] | None = None) -> tuple[float, bool, list[Instance]]:
    """Presence and instance masks of one concept from its similarity map S [g, g] over an [H, W] target,
    with a predictor whose image is set. Returns (presence, present, instances).

    presence = mean of the top-k values of S; below ``presence_threshold`` the concept is absent (no
    instance). Otherwise instance 1 comes from the spec's points and cascade; each further instance
    (up to ``max_instances``) is sought after excluding the cells of every mask found and the top-k cells
    already used, while the top-k mean of the remaining cells stays >= ``presence_threshold`` (or, with
    no threshold, >= ``instance_ratio`` x instance 1's score, and > 0). A further mask that is empty or
    mostly (> 50%) inside earlier masks ends the search and is not returned.
    """
    cfg = config
    timings = {} if timings is None else timings
    grid = sim.shape[1]
    presence = P.top_k_mean(sim, cfg.top_k)
    present = cfg.presence_threshold is None or presence >= cfg.presence_threshold
    instances: list[Instance] = []
    allowed = np.ones_like(sim, dtype=bool)
    covered = np.zeros(hw, dtype=bool)
    while present and len(instances) < cfg.max_instances and allowed.any():
        score = P.top_k_mean(sim, cfg.top_k, allowed)
        if instances:
            bar = cfg.presence_threshold if cfg.presence_threshold is not None else \
                max(cfg.instance_ratio * instances[0].score, 0.0)
            if score < bar:
                break
        t0 = time.perf_counter()
        sel = P.select_points(sim, cfg.top_k, cfg.clusters, cfg.kmeans_iters, cfg.seed, allowed)
        cells = np.concatenate([sel.positive, sel.negative])
        labels = np.array([1] * len(sel.positive) + [0] * len(sel.negative))
        coords = P.cells_to_pixels(cells, hw, grid)
        timings["points"] = timings.get("points", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            out = P.sam_cascade(predictor, coords, labels)
        timings["sam_decode"] = timings.get("sam_decode", 0.0) + time.perf_counter() - t0
        if instances and (not out.mask.any() or (out.mask & covered).sum() > 0.5 * out.mask.sum()):
            break  # nothing new: an empty mask or mostly an instance already found
        n_pos = len(sel.positive)
        instances.append(Instance(out.mask, score, out.iou, coords[:n_pos], coords[n_pos:], sel.positive,
                                  sel.negative, out.box is not None))
        covered |= out.mask
        used = np.zeros_like(allowed)
        used[sel.top_cells[:, 0], sel.top_cells[:, 1]] = True
        allowed &= ~(P.mask_touches_grid(out.mask, grid) | used)
    return presence, present, instances


def run_hooked_unet(unet: Any, sample: torch.Tensor, timestep: torch.Tensor,
                    encoder_hidden_states: torch.Tensor) -> dict[str, torch.Tensor]:
    """One UNet pass that returns the outputs of the :data:`SD_HOOKS` layers {"s5", "s4", "s3"}.

    Forward hooks are registered on the shared UNet for this call only and always removed (the UNet is
    shared with the generation engine); the pass ends right after the last hooked layer.
    """
    modules = dict(unet.named_modules())
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output)
            captured[name] = out.detach()
            if len(captured) == len(SD_HOOKS):
                raise _FeaturesReady

        return hook

    handles = [modules[path].register_forward_hook(hook_for(name)) for path, name in SD_HOOKS]
    try:
        unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)
    except _FeaturesReady:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for _, name in SD_HOOKS if name not in captured]
    if missing:
        raise RuntimeError(f"the UNet pass did not reach the hooked layer(s) {missing}")
    return {name: captured[name] for _, name in SD_HOOKS}


def _load(source: ImageInput, what: str) -> np.ndarray:
    try:
        return load_image(source)
    except ImageError as err:
        raise IPSegError(f"{what}: {err}") from None


def _digest(arr: np.ndarray) -> str:
    h = hashlib.sha256(str((arr.shape, arr.dtype.str)).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _synced(t: torch.Tensor) -> torch.Tensor:
    """``t`` after the device finished computing it (so stage timings are true on CUDA)."""
    if t.is_cuda:
        torch.cuda.synchronize(t.device)
    return t


def _device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters(), None)
    return (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)


__all__ = ["IPSeg", "IPSegConfig", "IPSegError", "IPSegWarning", "IPSegResult", "ConceptResult", "Instance",
           "Prompt", "Concept", "PromptFeatures", "as_concepts", "find_instances", "run_hooked_unet"]
