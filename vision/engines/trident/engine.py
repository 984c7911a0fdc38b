"""Trident: training-free open-vocabulary semantic segmentation (ICCV 2025), "splice, then segment".

Given an RGB image and class names, :class:`TridentEngine` returns a label map, per-class probabilities,
the coarse (pre-refinement) label map, an overlay and per-stage timings (:class:`TridentResult`).
The algorithm follows ``specs/trident.md`` (the reference code's behaviour):

1. The image is resized so its short side is S (long side <= 2048), its sides brought to multiples of
   CLIP's patch and to at least 336 (rule: R1 below), and cut into 336x336 windows on mmseg's sliding
   grid (stride s).
2. All windows go through DINO (``dino_b16``; ``dinov2_b14`` is a labelled deviation) in ONE batch and
   through CLIP (``clip_b16``; ``clip_h14`` option) in ONE batch, up to CLIP's second-to-last block.
3. CLIP's last block becomes proxy attention: softmax(3 (S - 1.2 mean S)) with S the cosine similarity of
   the window's DINO tokens, the mean over all windows of the image, negatives masked; values from CLIP's
   own projection; no residual, no MLP (:mod:`~vision.engines.trident.splice`).
4. The windows' outputs are spliced onto the full-image token grid (overlaps averaged).
5. One SAM encoder pass on the whole image (two, one per half, for Cityscapes) gives the last block's
   attention and values; their thresholded cosine affinity aggregates the spliced features globally
   (:mod:`~vision.engines.trident.aggregate`).
6. LN_post + projection, cosine with the text embeddings (80 ImageNet templates, cached per model and
   class list), bilinear upsampling, softmax at scale 40, max over each class's names; pixels whose
   best probability is under ``prob_thd`` become background.
7. SAM prompt refinement reuses the image embedding of step 5: per class, one point + box per confident
   connected component (>= 225 px at half resolution) and a dense mask prompt, one batched
   ``predict_torch``, masks with predicted IoU > 0.8 relabel the pixels they cover
   (:mod:`~vision.engines.trident.refine`).

Reference mode. ``TridentConfig.reference`` (on in every benchmark preset, off in "open") reproduces the
reference code (YuHengsss/Trident) where it differs from the project's behaviour; each difference is one
method of :mod:`~vision.engines.trident.modes`:

- R1 CLIP input size. Reference: after the keep-ratio resize, the long side is rounded up to a multiple
  of the patch, the short side scaled by the same factor (``int``) and rounded up, then the 336 minimum
  (a VOC image: 464x608); the resized uint8 image is interpolated again (bilinear, on the tensor). Open:
  each side rounded up on its own (448x608), one resize from the original. Why: the open rule is the
  smallest upscaling to patch multiples (the short side stays S) and resamples once; either rule
  changes the aspect ratio by less than a patch. One case is not
  reproduced: the reference leaves an image whose resized sides are both multiples but one under 336
  as it is (its windows then get zero padding); we raise that side to 336 as in open mode (it needs an
  aspect ratio above 6:1).
- R2 Positional embeddings (CLIP and DINO). Reference: bicubic with scale factor ``(new + 0.1) / old``
  (DINO's and open_clip's convention). Open: bicubic to the target size (transformers' convention).
  Why: the 0.1 only guards the output size against floating-point rounding; resizing by size needs no
  guard and samples at the grid's exact scale.
- R3 SAM's input. Reference: the original image with each side rounded up to a multiple of CLIP's patch
  (``cv2.resize``); masks are resized back to the image. Open: the original image. Why: the rounding has
  no purpose for SAM, which resizes to 1024 anyway; it only stretches the image slightly.
- R4 Dense mask prompt. Reference: a [1, 256, 256] tensor (no batch dimension) from the half-resolution
  probabilities. SAM's mask encoder treats it as an unbatched image and its LayerNorm2d then normalises
  over rows instead of channels, so the tiny ``0.005 * P`` prompt becomes a strong signal that changes
  the predicted IoUs and which masks pass the 0.8 filter. Open: SAM's documented [n, 1, 256, 256] from
  the full-resolution probabilities. Why: the missing batch dimension is a plain bug of the reference
  (SAM was trained on channel-normalised mask embeddings); open mode keeps the standard prompt.
- R5 Refinement boxes and their frame. Reference: inclusive boxes (``torchvision.ops.masks_to_boxes``:
  x2/y2 is the last pixel), points and boxes kept in half-resolution pixels and mapped to SAM's frame as
  if the image were half its size. Open: boxes to one past the last pixel (they enclose the component's
  pixels as areas), scaled to full resolution and mapped from the image SAM holds. Why: the open frame
  is the exact one; the reference's differs by rounding.
- R6 Cityscapes (``split_halves``). Reference: after the two halves' SAM passes, a third pass on the
  whole image for refinement, which then runs on the whole image at once; the spliced map is cut at
  its middle token column and the two halves' logits are joined before one upsampling. Open: each half
  is refined with its own embedding, the spliced map cropped by the halves' exact extents and each
  half's logits upsampled on its own. Why: open mode saves the third encoder pass (the most expensive
  model call) and a half never mixes with the other at the seam.
- R7 Benchmark class strings. Reference: its exact strings, which run multi-word names together in
  COCO-Stuff, Cityscapes and ADE20K ("trafficlight", "chestofdrawers"). Open: the names with spaces.
  Why: they are other text tokens; "traffic light" is what a user would type.

Not switched: (a) Background merge: the reference takes the max over class 0's names and assumes every
other class has one name; the project takes the max over each class's names. The two agree on every
benchmark list (only class 0 has synonyms there); on other lists the reference's rule would mix up
classes (a bug), so both modes use the per-class max. (b) A benchmark list runs as it is: COCO-Object
names "bed" as a background word and as class 60; the copies tie exactly and the first class
(background) wins, as in the reference (:func:`~vision.engines.trident.classes.class_probabilities`).
A user's list with a repeated name is refused. (c) Precision: the hub runs CLIP and DINO in fp16 on
CUDA (fp32 on CPU) and SAM in fp32 everywhere; the proxy attention, the SAM affinity, the logits and the
refinement's arithmetic are fp32. The reference runs CLIP, DINO, the proxy attention and the SAM encoder
in fp16 (prompt encoder and mask decoder in fp32). SAM stays fp32 because SAM-H in fp16 produces
garbage and the hub's SAM is shared with the other engines; the fp32 attention costs little next to the
encoders. So reference mode reproduces the reference's arithmetic, not its fp16 rounding.

Class names, in the project's one syntax: a text ``"cat|kitten; dog; background"`` (``;`` between
classes, ``|`` between a class's synonyms), or a list with one entry per class, an entry being
``"name|synonym|..."`` or a list of names.
The background class is the one given by ``background=`` or else the class one of whose names is
"background". Inputs are checked: no classes, a single class, more than :data:`MAX_CLASSES` classes, an
empty class, or a name used twice in a user's list raise :class:`ValueError` with the reason; names longer than CLIP's
77-token context are truncated by CLIP's tokenizer (the result's ``info["truncated_names"]`` lists them);
any Unicode text is accepted. Images of any size are accepted (smaller ones are upscaled: S >= 336).

Presets: :data:`PRESETS` holds the paper's eight benchmark settings plus "open" (S=448, stride 224,
``prob_thd`` free, default 0). With tiny models (``ModelHub(tiny=True)``) every output is noise and is
labelled so (``result.tiny``, the record's notice, a stamp on the overlay).

Methods. ``TridentConfig.method`` chooses what this engine runs on the same inputs and outputs:
"trident" (the steps above) or "corrclip" (CorrCLIP, ICCV 2025: :mod:`~vision.engines.trident.corrclip`
describes its stages and lists its reference-mode differences C1-C4; the run is
:mod:`~vision.engines.trident.corrclip_run`; presets "corrclip" and ``corrclip_<benchmark>``). CorrCLIP's
result also holds the region masks (``result.regions``), made by its mask generator or given by the
caller (``engine(image, classes, regions=ids)``).
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from vision import imaging
from vision.common import LRUCache, stage
from vision.engines.contract import Engine, ProgressCallback, ProgressReporter
from vision.engines.trident import aggregate, corrclip_run, refine, splice
from vision.engines.trident.classes import Classes, class_probabilities, parse_classes
from vision.engines.trident.config import TridentConfig, TridentError
from vision.engines.trident.modes import OpenMode, mode_for
from vision.engines.trident.regions import REGION_CACHE
from vision.engines.trident.results import TridentResult
from vision.hub import model_lock
from vision.templates import OPENAI_IMAGENET_TEMPLATES
from vision.weights import ensure_present

CLIP_CONTEXT = 77
TEXT_BATCH = 640  # prompts per text-encoder forward
# Text embeddings, shared by every engine: (CLIP hub name, id of the model, names) -> (weak ref to the
# model, [Q, D] unit embeddings); the weak ref tells a model reloaded at the same address apart.
TEXT_CACHE: LRUCache[tuple[Any, torch.Tensor]] = LRUCache(32)
# The stages a run reports, with the share of the run each starts at (text, windows, DINO, CLIP, SAM...).
STAGES = {"text": 0.0, "prepare": 0.05, "dino": 0.1, "clip": 0.25, "sam_encoder": 0.45, "aggregate": 0.7,
          "refine": 0.8}
STAGE_MESSAGES = {"text": "text embeddings", "prepare": "windows", "dino": "DINO features", "clip": "CLIP features",
                  "sam_encoder": "SAM image encoder", "aggregate": "SAM aggregation", "refine": "SAM refinement"}


@dataclass
class _SamView:
    """One SAM encoder pass: columns [x0, x1) of the image SAM sees, its last block's attention and
    values over the token ``grid``, and the encoded image (a ``SamImage``: the embedding refinement reuses)."""

    x0: int
    x1: int
    grid: tuple[int, int]
    attention: aggregate.SamAttention | None
    state: Any


class TridentEngine(Engine):
    """Runs Trident with models from the hub. Thread-safe (one image at a time per engine).

    >>> engine = TridentEngine(TridentConfig.from_preset("open"))
    >>> result = engine("cat.jpg", "cat|kitten; grass; background")
    >>> result.labels, result.probs, result.to_record()["pixel_fraction"]
    """

    CONFIG: ClassVar[type[TridentConfig]] = TridentConfig

    def __init__(self, config: TridentConfig | None = None, hub: Any = None):
        super().__init__(config, hub)
        self.region_cache = REGION_CACHE  # CorrCLIP's region masks of recent images, shared by every engine
        self._truncated: dict[tuple[str, ...], list[str]] = {}
        self._predictors: dict[int, Any] = {}
        self._lock = threading.RLock()

    # --------------------------------------------------------------------------------------- text side

    @torch.no_grad()
    def text_embeddings(self, queries: Sequence[str]) -> torch.Tensor:
        """[Q, D] unit text embeddings: each name through the 80 templates, each embedding normalised,
        averaged, re-normalised. Cached per (CLIP model, name list), across engines."""
        model = self.hub.get(self.config.clip)
        key = (self.config.clip, id(model), tuple(queries))
        found = TEXT_CACHE.get(key)
        if found is not None and found[0]() is model:
            return found[1]
        tokenizer = self.hub.get("clip_tokenizer")
        device = next(model.parameters()).device
        prompts = [t.format(q) for q in queries for t in OPENAI_IMAGENET_TEMPLATES]
        chunks = []
        for start in range(0, len(prompts), TEXT_BATCH):
            tokens = tokenizer(prompts[start:start + TEXT_BATCH]).to(device)
            chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
        per_prompt = torch.cat(chunks).view(len(queries), len(OPENAI_IMAGENET_TEMPLATES), -1)
        embeddings = F.normalize(per_prompt.mean(dim=1), dim=-1)
        TEXT_CACHE.put(key, (weakref.ref(model), embeddings))
        return embeddings

    def set_text_embeddings(self, queries: Sequence[str], embeddings: torch.Tensor) -> None:
        """Put precomputed unit text embeddings [Q, D] for ``queries`` (a class list's ``unique_queries``)
        into the cache (benchmarks use this to leave the once-per-class-list text encoding out of
        per-image timings)."""
        if embeddings.shape[0] != len(queries):
            raise TridentError(f"{embeddings.shape[0]} embeddings for {len(queries)} names")
        model = self.hub.get(self.config.clip)
        TEXT_CACHE.put((self.config.clip, id(model), tuple(queries)),
                       (weakref.ref(model), F.normalize(embeddings.float(), dim=-1)))

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

    @torch.no_grad()
    def __call__(self, image: Any, classes: Any = None, *, background: int | None = None,
                 return_probs: bool = True, progress: ProgressCallback | None = None,
                 regions: Any = None) -> TridentResult:
        """Segment ``image`` (path, bytes, PIL or RGB uint8 array) into ``classes`` with the config's method.

        ``classes=None`` uses the preset's benchmark class list (benchmark presets only), in the
        reference's spelling when ``config.reference`` is on. ``progress`` gets a
        :class:`~vision.engines.contract.Progress` as each stage starts (position ``{"stage", "stages"}``).
        ``regions`` (CorrCLIP only): an integer id map [H, W] of the image to use as its region masks
        (0: no mask), e.g. the paper's pre-generated ones, instead of the config's mask generator.
        """
        cfg = self.config
        if classes is None:
            classes = cfg.class_list()
            if classes is None:
                raise TridentError(f"no class names given (the {cfg.preset!r} preset has no default class list)")
        parsed = parse_classes(classes, background)
        if cfg.prob_thd > 0 and parsed.background is None:
            raise TridentError(f"prob_thd={cfg.prob_thd} turns uncertain pixels into background, but no class is "
                               "the background: add a 'background' class or set prob_thd to 0")
        if regions is not None and cfg.method != "corrclip":
            raise TridentError(f"regions= (region masks) applies to method='corrclip', not {cfg.method!r}")
        rgb = imaging.require_min_side(imaging.load_image(image), image if isinstance(image, str) else "image")
        needed = cfg.models()
        if regions is not None:
            needed.pop("mask_generator", None)  # given region masks: no generator runs
        ensure_present(self.hub, list(needed.values()), "trident")  # every missing model named at once
        with self._lock:
            if cfg.method == "corrclip":
                return corrclip_run.segment(self, rgb, parsed, return_probs, ProgressReporter(progress), regions)
            return self._segment(rgb, parsed, return_probs, ProgressReporter(progress))

    def _predictor(self, sam: Any) -> Any:
        """The torch :class:`~vision.sam.SamRunner` of ``sam`` (its encoder's attention is recorded)."""
        from vision.sam import SamRunner

        runner = self._predictors.get(id(sam))
        if runner is None or runner.sam is not sam:
            runner = self._predictors[id(sam)] = SamRunner(sam, backend="torch", cache_size=1)
        return runner

    def _stage(self, report: ProgressReporter, timings: dict[str, float], name: str):
        """Report stage ``name`` as starting, then time it (a context manager)."""
        report(STAGES[name], STAGE_MESSAGES[name], stage=list(STAGES).index(name), stages=len(STAGES))
        return stage(timings, name, self.hub.device)

    def _segment(self, rgb: np.ndarray, classes: Classes, return_probs: bool,
                 report: ProgressReporter) -> TridentResult:
        """The steps of the module docstring: 1-4 CLIP/DINO windows spliced, 5 SAM, 6 logits, 7 refinement."""
        cfg, mode = self.config, mode_for(self.config)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        with self._stage(report, timings, "text"):
            text = self.text_embeddings(classes.unique_queries)
        visual = self.hub.get(cfg.clip).visual
        patch = int(visual.patch_size[0])
        spliced, resized, windows = self._spliced_features(rgb, visual, patch, report, timings)
        predictor = self._predictor(self.hub.get(cfg.sam))
        sam_rgb = mode.sam_image(rgb, patch)
        with self._stage(report, timings, "sam_encoder"):
            views = self._sam_views(predictor, sam_rgb, cfg)
        with self._stage(report, timings, "aggregate"):
            probs, coarse = self._probabilities(views, spliced, visual, text, classes, sam_rgb.shape[1], rgb.shape[:2])
        labels = coarse
        info: dict[str, Any] = {"resized": list(resized), "windows": windows, "sam_passes": len(views),
                                "sam_grid": [list(v.grid) for v in views], "prompts": 0, "kept_masks": 0,
                                "truncated_names": self.truncated_names(classes.queries)}
        if cfg.refine:
            report(STAGES["refine"], STAGE_MESSAGES["refine"], stage=len(STAGES) - 1, stages=len(STAGES))
            labels = self._refine(predictor, sam_rgb, views, probs, coarse, cfg, mode, timings, info)
        labels_np = labels.to(torch.int32).cpu().numpy()
        overlay = imaging.overlay_labels(rgb, labels_np, n_colours=len(classes.names))
        timings["total"] = time.perf_counter() - started
        report.done()
        return TridentResult(
            labels=labels_np, coarse=coarse.to(torch.int32).cpu().numpy(),
            probs=probs.float().cpu().numpy() if return_probs else None,
            overlay=imaging.tiny_banner(overlay) if self.tiny else overlay, classes=classes, config=cfg,
            timings=timings, info=info, tiny=self.tiny)

    def _spliced_features(self, rgb: np.ndarray, visual: Any, patch: int, report: ProgressReporter,
                          timings: dict[str, float]) -> tuple[torch.Tensor, tuple[int, int], int]:
        """Steps 1-4: the image resized and cut into windows, DINO's proxy attention in CLIP's last block,
        the windows spliced onto the full token grid. Returns (features [C, rows, cols], the resized
        (height, width), the number of windows)."""
        cfg, mode = self.config, mode_for(self.config)
        device = torch.device(self.hub.device)
        vfm = self.hub.get(cfg.vfm)
        with self._stage(report, timings, "prepare"):
            if cfg.window % patch:
                raise TridentError(f"the window ({cfg.window}) must be a multiple of CLIP's patch ({patch})")
            pixels = mode.clip_pixels(rgb, cfg.short_side, cfg.max_long_side, patch, cfg.window, device)
            rh, rw = pixels.shape[-2:]
            boxes = splice.window_boxes(rh, rw, cfg.window, cfg.stride)
            windows = splice.crop_windows(pixels, boxes)
        with self._stage(report, timings, "dino"):
            vfm_patch = int(getattr(vfm.config, "patch_size", 16))
            vfm_grid = (cfg.window // vfm_patch, cfg.window // vfm_patch)
            vfm_in = splice.normalise(windows, splice.IMAGENET_MEAN, splice.IMAGENET_STD)
            tokens = splice.vfm_tokens(vfm, vfm_in, mode.resize_pos)
            weights = splice.proxy_attention_weights(tokens, cfg.beta, cfg.gamma)
        with self._stage(report, timings, "clip"):
            clip_in = splice.normalise(windows, splice.CLIP_MEAN, splice.CLIP_STD)
            x, clip_grid = splice.clip_trunk(visual, clip_in, mode.resize_pos)
            out = splice.proxy_block(visual.transformer.resblocks[-1], x, clip_grid, weights, vfm_grid)
            maps = out.float().transpose(1, 2).reshape(len(boxes), -1, *vfm_grid)
            if vfm_grid != clip_grid:
                maps = F.interpolate(maps, size=clip_grid, mode="bilinear", align_corners=False)
            token_boxes = [tuple(v // patch for v in b) for b in boxes]
            spliced = splice.splice(maps, token_boxes, (rh // patch, rw // patch))
        return spliced, (rh, rw), len(boxes)

    def _probabilities(self, views: list[_SamView], spliced: torch.Tensor, visual: Any, text: torch.Tensor,
                       classes: Classes, sam_width: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 5-6: each SAM view's affinity aggregates the spliced features; CLIP's head and the text give
        logits, upsampled to ``size`` (H, W). Returns (probabilities [K, H, W], coarse labels [H, W])."""
        cfg, mode = self.config, mode_for(self.config)
        view_logits = []
        for part, view in enumerate(views):
            affinity = aggregate.sam_affinity(view.attention.attn, view.attention.values, cfg.cos_fac,
                                              cfg.refine_neg_cos, cfg.cos_cap)
            view.attention = None  # [h, N, N]: free it before refinement
            block = mode.view_features(spliced, part, len(views), (view.x0, view.x1), sam_width, view.grid)
            feats = affinity @ block.flatten(1).T  # [N, C]
            feats = visual.ln_post(feats.to(visual.proj.dtype)) @ visual.proj
            feats = F.normalize(feats.float(), dim=-1)
            view_logits.append((feats @ text.T).T.reshape(-1, *view.grid))
        logits = mode.join_logits(view_logits, [(v.x0, v.x1) for v in views], sam_width, size)
        probs = class_probabilities(logits, classes, cfg.logit_scale)
        best, coarse = probs.max(dim=0)
        if cfg.prob_thd > 0:
            coarse[best < cfg.prob_thd] = classes.background
        return probs, coarse

    def _refine(self, predictor: Any, sam_rgb: np.ndarray, views: list[_SamView], probs: torch.Tensor,
                coarse: torch.Tensor, cfg: TridentConfig, mode: OpenMode, timings: dict[str, float],
                info: dict[str, Any]) -> torch.Tensor:
        """SAM prompt refinement of each region the mode refines on its own; returns labels [H, W].
        ``predictor``: the SAM runner; each region's state is its encoded image (a ``SamImage``)."""
        device = torch.device(self.hub.device)

        def encode_whole() -> Any:
            with stage(timings, "sam_encoder", device):
                info["sam_passes"] += 1
                return self._encode(predictor, sam_rgb)[0]

        regions = mode.refinement_views(views, probs.shape[2], sam_rgb.shape[1], encode_whole)
        with stage(timings, "refine", device):
            parts = []
            for x0, x1, encoded in regions:
                part, stats = refine.sam_refine(encoded, probs[:, :, x0:x1], coarse[:, x0:x1], cfg.coarse_thresh,
                                                cfg.min_area, cfg.mask_coeff, cfg.sam_iou_thresh, mode.prompts)
                parts.append(part)
                info["prompts"] += stats.prompted
                info["kept_masks"] += stats.kept
        return torch.cat(parts, dim=1)

    def _sam_views(self, predictor: Any, image: np.ndarray, cfg: TridentConfig) -> list[_SamView]:
        """One SAM encoder pass per view (the whole image, or its two halves with ``split_halves``),
        recording the last block's attention; returns it with each view's encoded image."""
        from segment_anything.utils.transforms import ResizeLongestSide

        width = image.shape[1]
        cuts = [0, width // 2, width] if cfg.split_halves and width >= 2 else [0, width]
        encoder = predictor.sam.image_encoder
        token = int(encoder.patch_embed.proj.kernel_size[0])
        views = []
        for x0, x1 in zip(cuts[:-1], cuts[1:]):
            part = np.ascontiguousarray(image[:, x0:x1])
            ih, iw = ResizeLongestSide.get_preprocess_shape(part.shape[0], part.shape[1], encoder.img_size)
            grid = (max(1, ih // token), max(1, iw // token))
            state, captured = self._encode(predictor, part, grid)
            views.append(_SamView(x0, x1, grid, captured, state))
        return views

    @staticmethod
    def _encode(predictor: Any, image: np.ndarray,
                capture_grid: tuple[int, int] | None = None) -> tuple[Any, aggregate.SamAttention | None]:
        """``image`` encoded by the runner ``predictor`` (torch, never cached); with ``capture_grid``,
        also the last block's attention over it. Returns the encoded image (a ``SamImage``: the
        embedding and sizes refinement predicts from) and the attention."""
        encoder = predictor.sam.image_encoder
        # The capture patches the shared SAM's last block: no other engine runs SAM meanwhile.
        capture = (aggregate.capture_sam_attention(encoder, capture_grid) if capture_grid
                   else contextlib.nullcontext())
        with model_lock(predictor.sam), capture as captured:
            encoded, _ = predictor.encode(image, cache=False)
        return encoded, captured
