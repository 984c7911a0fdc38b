"""IPSeg: segment a visual concept in target images from an image prompt (training-free).

The engine runs two methods on the same inputs and result types (``IPSegConfig.method``): ``"ipseg"``,
described below, and ``"gfsam"``, GF-SAM's graph-based point fusion (presets ``gfsam``, ``gfsam_fast``),
described with its reference differences in :mod:`vision.engines.ipseg.gfsam` and wired in by
:mod:`vision.engines.ipseg.gfsam_run`.

Algorithm (spec: ``shared/specs/ipseg.md``; paper: IJCV 2024, reference ``luckybird1994/IPSeg``):

1. **Features** (:mod:`~vision.engines.ipseg.features`; ``features=``). ``"dino+sd"`` (the paper's):
   DINOv2-B/14 on the image letterboxed to 840 px, ``hidden_states[-1]`` (the last block *before* the
   final LayerNorm), CLS dropped -> 60x60x768; and Stable Diffusion 1.5 on the image letterboxed to
   960 px: VAE latent mean x 0.18215, noised at t = 100 with ``DDPMScheduler.add_noise`` (seeded noise),
   one UNet pass with the empty-prompt embedding, forward hooks on ``up_blocks[0].resnets[1]`` (s5),
   ``up_blocks[1].attentions[1]`` (s4) and ``up_blocks[2].attentions[1]`` (s3), the pass stopped after
   the last of them. ``"dino"``: DINOv2 only (SD never loaded). ``"sam"`` (PerSAM's source): SAM's
   image embedding [256, 64, 64], which the cascade computes anyway: a run needs SAM alone. Every map is
   cut back to the cells that cover the image and resized (nearest) to the grid.
2. **Prompt region** (:mod:`~vision.engines.ipseg.prompts`). The user's mask, box or scribble, else the
   first principal component of the prompt's tokens, thresholded at its mean, centre = foreground
   (``"auto-pca"``). Masks and boxes reach the grid by nearest sampling and a 3x3 erosion (fallback:
   un-eroded, then every cell the mask touches); scribbles by "any pixel in the cell".
3. **Prototype and similarity.** ``p_f`` = L2-normalised mean of the prompt's raw features over the
   region; ``S = c_dino + 0.1 (0.3 c_s5 + 0.2 c_s4 + 0.1 c_s3)`` (``S = c_dino`` or ``c_sam`` for the
   other sources). k-shot: ``kshot="mean"`` averages the per-image prototypes, ``"max"`` takes the
   per-cell maximum of S.
4. **Points** (:mod:`~vision.engines.ipseg.points`). k-means (K = 4, 20 iterations, seeded) of the 32
   highest cells (positive) and the 32 lowest (negative).
5. **SAM** (:mod:`~vision.engines.ipseg.cascade`). The target encoded ONCE (every concept and instance
   reuses it; the reference encodes it three times, with the same result), then PerSAM's cascade.

**Reference mode** (``reference=True``; on in the ``paper`` preset, with SAM-H and the reference's seeds:
k-means 0, SD noise 42) reproduces the reference code (``perseg_test.sh``, ``ipseg_fss.py``, ODISE's
``slide_forward``). What it changes (each item is one attribute of
:mod:`~vision.engines.ipseg.modes`, letter in brackets):

* [a] SD runs on 2x2 overlapping 512 crops of the 960 square (offsets 0 and 448 per axis, latent 64 each),
  every crop with the same noise (one ``randn(1, 4, 64, 64)`` of a generator seeded once), and each map
  is averaged where crops overlap, at its own resolution (s5 15x15 from 8x8 crops at cells 0 and 7, s4
  from 16x16 at 0 and 14, s3 from 32x32 at 0 and 28). Default: one pass on the whole square.
* [b] Undoing the letterbox keeps ``int(short / (long / n))`` cells of an n-cell axis, centred as
  ``(n - kept) // 2`` (a 480x640 image keeps 11 of 15 s5 rows, 22 of 30 s4 rows, 46 of 60 s3/DINOv2
  rows); default: every cell the image touches (13, 24, 46). Maps and the prompt mask are resized with
  PyTorch ``nearest``; default: ``nearest-exact`` (cell centres).
* [c] The SD layer weights go to s3, s4, s5 in that order (0.3 c_s3 + 0.2 c_s4 + 0.1 c_s5): the reference
  applies them in the order its extractor saved the maps (s2, s3, s4, s5 by stride, s2 skipped) while
  its comment says s5, s4, s3. Default: the spec's 0.3 c_s5 + 0.2 c_s4 + 0.1 c_s3.
* [d] k-means starts from ``torch.randperm(32)[:4]`` of a generator seeded with 0 (re-seeded per call), runs
  the reference's 20 ``cdist``/``argmin`` iterations, keeps centres fractional and drops NaN (emptied)
  clusters, collapse included (see :func:`~vision.engines.ipseg.points.lloyd_reference`). Default:
  k-means++ with centres rounded to cells.
* [e] SAM sees the target stretched to 1024x1024 (aspect not kept; OpenCV bilinear), points at
  ``col * 1024/60 + 1024/120``; the cascade runs in that frame and the final mask is resized (nearest)
  to the image. Default: ``SamPredictor``'s aspect-keeping frame (the same points in image pixels).
* SAM runs on its own PyTorch modules when ``sam_backend="auto"`` (the reference's SAM); default: ``auto``
  picks the fastest installed CPU backend (ONNX Runtime / OpenVINO: the embedding moves by float error).

**Differences from the reference in every mode**, each with its reason:

* A cell's row is ``index // 60``. The reference's ``index / 60`` (true division) is a bug: it moves
  every point down by ``col / 60`` of a cell.
* The automatic prompt region is the PCA foreground above, not the reference's A2S-v2 / CoRNet saliency
  map: that trained model cannot be installed here.
* ODISE's implicit captioner is left out: its learned CLIP-image offsets to the empty-prompt embedding
  and to the UNet's time embedding need ODISE's trained weights.
* The letterboxes are resized bicubic (:func:`vision.imaging.letterbox`); the reference uses Lanczos.
* An empty step-2 mask makes step 3 run without a box; the reference passes ``[0, 1023, 0, 1023]``, a
  box with x0 = x1 = 0 (its x/y order is mixed up).
* Masks come back at the image's size (the reference scores its 1024x1024 stretched masks).
* An erosion that empties the prompt region falls back to the un-eroded region (the reference would
  average no cells: NaN).

Beyond the paper: a presence score (:mod:`~vision.engines.ipseg.presence`; below ``presence_threshold``
the concept is "absent": no mask), *calibrated* to 0..1 (0.5 = even odds) where the settings have a fit
(SAM features with ``sam_t``, product mode: the top-32 margin between the prompt's concept and background
cells through a logistic), else *raw* (the mean of the 32 highest S, a cosine); each result's
``presence_kind`` says which. Several instances per target (``max_instances``: after an instance, its
cells and the cells its points came from are excluded and the next one is sought while the presence of
the remaining cells stays >= ``presence_threshold``, or, with no threshold, >= ``instance_ratio`` x the
first instance's score), several concepts per call, several prompt images per concept, a prompt cache (prompt
image content + region + feature settings -> prototypes: a batch of N targets costs one prompt pass),
progress per stage through a callback, and batches that keep the good targets when one fails.

Awkward inputs (:class:`IPSegError`, a ``ValueError`` whose message is for the user): a prompt mask of
another size is resized (nearest) with a warning when its aspect ratio matches the image within 5%, and
refused otherwise; an empty mask, box or scribble is refused; a prompt with no salient region is refused
with advice to give a mask or box; an image whose shorter side is below ``min_side`` (14 px) is refused.
No presence threshold is set by default (the paper always answers with a mask). A calibrated presence
takes 0.5; a raw one (a cosine, about -1..1.06) needs a threshold chosen on real weights for your data.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from vision.common import LRUCache, content_key
from vision.engines.contract import Engine, ProgressCallback, ProgressReporter
from vision.engines.ipseg import gfsam_run
from vision.engines.ipseg import points as pts
from vision.engines.ipseg.cascade import SamView, sam_cascade
from vision.engines.ipseg.config import IPSegConfig, IPSegError
from vision.engines.ipseg.features import FeatureExtractor, fused_similarity, prototype
from vision.engines.ipseg.modes import mode_for
from vision.engines.ipseg.presence import Exemplars, Presence, calibration_for, exemplars, presence_of
from vision.engines.ipseg.prompts import (
    Concept,
    Prompt,
    as_concepts,
    auto_region,
    grid_region,
    mask_touches_grid,
    user_region,
)
from vision.engines.ipseg.results import ConceptResult, Instance, IPSegBatch, IPSegResult, TargetError
from vision.imaging import ImageError, ImageInput, load_image
from vision.weights import ensure_present


@dataclass
class PromptFeatures:
    """What a prompt image contributes: prototypes per feature type and the region they came from."""

    prototypes: dict[str, torch.Tensor]  # feature -> [C], L2-normalised
    region: np.ndarray  # bool [g, g]
    source: str  # "mask", "box", "scribble" or "auto-pca"
    grid_detail: str  # how the region reached the grid ("eroded", "uneroded", "touched", ...)
    notes: list[str]
    shot: Any = None  # GF-SAM: the prompt's tokens and region weights (gfsam_align.Shot); None for IPSeg
    exemplars: Exemplars | None = None  # its cells inside/outside the region, where presence is calibrated


class StageProgress:
    """IPSeg's progress: ``targets`` x ``steps`` stages, each reported as it starts, then "done".

    Each :class:`~vision.engines.contract.Progress` has the message ``"<target label>: <stage>"`` and the
    position ``{"target", "targets", "stage", "stages"}`` (target and stage 0-based, the one starting).
    """

    def __init__(self, callback: ProgressCallback | None, targets: int, steps: int):
        self.report = ProgressReporter(callback)
        self.targets, self.steps = max(targets, 1), max(steps, 1)
        self.target, self.stage, self.label = 0, 0, ""

    def start_target(self, index: int, label: str) -> None:
        self.target, self.stage, self.label = index, 0, label  # a target that failed part-way shifts nothing

    def __call__(self, stage: str) -> None:
        done = self.target * self.steps + self.stage
        self.report(done / (self.targets * self.steps), f"{self.label}: {stage}", target=self.target,
                    targets=self.targets, stage=self.stage, stages=self.steps)
        self.stage += 1

    def finish(self) -> None:
        self.report.done()


# ---------------------------------------------------------------------------------------------- engine
class IPSegEngine(Engine):
    """The IPSeg pipeline on the shared models of a :class:`vision.hub.ModelHub`.

    >>> engine = IPSegEngine()                             # IPSegConfig.from_preset("paper") reproduces the reference
    >>> result = engine(Prompt("dog.jpg", mask="dog_mask.png"), "park.jpg")
    >>> result.mask, result.presence, result.heatmap(), result.concepts[0].instances[0].positive
    >>> results = engine.segment_batch({"dog": "dog.jpg", "ball": Prompt("ball.jpg", box=(10, 10, 90, 90))},
    ...                                ["a.jpg", "b.jpg"], on_error="collect")   # prompts computed once
    >>> results.errors                                     # [TargetError(index, name, message), ...]
    """

    CONFIG: ClassVar[type[IPSegConfig]] = IPSegConfig
    PROMPT_CACHE_SIZE = 64  # prompt images whose prototypes are kept

    def __init__(self, config: IPSegConfig | None = None, hub: Any = None):
        super().__init__(config, hub)
        self.mode = mode_for(self.config)
        self.extractor = FeatureExtractor(self.hub, self.config)
        self.prompt_cache: LRUCache[PromptFeatures] = LRUCache(self.PROMPT_CACHE_SIZE)

    # ----------------------------------------------------------------------------------------- public
    def __call__(self, concepts: Any, target: ImageInput, name: str = "",
                 progress: ProgressCallback | None = None) -> IPSegResult:
        """Segment the concept(s) in one target image (see :func:`as_concepts` for ``concepts``);
        ``progress`` receives a :class:`~vision.engines.contract.Progress` as each stage starts."""
        parsed = as_concepts(concepts)
        self.require_weights()
        tracker = StageProgress(progress, 1, self._steps(parsed))
        tracker.start_target(0, name or "target")
        result = self._segment(parsed, target, name, tracker)
        tracker.finish()
        return result

    def segment_batch(self, concepts: Any, targets: Sequence[ImageInput], progress: ProgressCallback | None = None,
                      on_error: str = "raise", names: Sequence[str] | None = None) -> IPSegBatch:
        """Segment the concept(s) in every target; the prompt pass runs once for the whole batch.

        ``names``: one per target for results and messages (default: the path of a path, else "").
        ``on_error="raise"``: the first target that cannot be segmented raises :class:`IPSegError`
        naming it. ``"collect"``: the other targets still run; the result lists the good ones and
        ``.errors`` one :class:`TargetError` per failed target (bad image, too small, ...).
        """
        if on_error not in ("raise", "collect"):
            raise IPSegError(f"on_error={on_error!r} must be 'raise' or 'collect'")
        if names is not None and len(names) != len(targets):
            raise IPSegError(f"{len(names)} names for {len(targets)} targets")
        parsed = as_concepts(concepts)
        self.require_weights()
        tracker = StageProgress(progress, len(targets), self._steps(parsed))
        results, errors = [], []
        for index, target in enumerate(targets):
            name = names[index] if names is not None else str(target) if isinstance(target, (str, os.PathLike)) else ""
            label = _display_name(name, target, index)
            tracker.start_target(index, f"target {index + 1}/{len(targets)} ({label})")
            try:
                result = self._segment(parsed, target, name, tracker)
            except IPSegError as err:
                if on_error == "raise":
                    raise IPSegError(f"{label}: {err}") from None
                errors.append(TargetError(index, label, str(err)))
                continue
            result.index = index
            results.append(result)
        tracker.finish()
        return IPSegBatch(results, errors)

    def require_weights(self) -> None:
        """Every model these settings use present, else ONE error naming each missing model, the download
        command and the route the weights installed here allow (:func:`vision.weights.ensure_present`)."""
        ensure_present(self.hub, list(self.config.models().values()), "ipseg", self.config)

    def prepare(self, concepts: Any) -> list[Concept]:
        """Compute (and cache) the prompt features now, e.g. once per batch worker. Returns the concepts
        with their prompt images decoded, so that later cache lookups only hash pixels."""
        self.require_weights()
        prepared = []
        for concept in as_concepts(concepts):
            prompts = [dataclasses.replace(p, image=_load(p.image, "prompt image")) for p in concept.prompts]
            for prompt in prompts:
                self.prompt_features(prompt)
            prepared.append(Concept(prompts, concept.name))
        return prepared

    def prompt_features(self, prompt: Prompt) -> tuple[PromptFeatures, bool]:
        """The prompt's prototypes (cached by image content + region + feature settings) and whether they
        came from the cache."""
        image = _load(prompt.image, "prompt image")
        self._check_size(image, "prompt image")
        region = user_region(prompt, image.shape[:2])
        key = (content_key(image), None if region is None else (region[0], content_key(region[1])),
               self.config.feature_key())
        return self.prompt_cache.get_or_make(key, lambda: self._prompt_features(image, region))

    def features(self, image: np.ndarray, timings: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
        """The image's features on its grid (see :meth:`FeatureExtractor.features`)."""
        return self.extractor.features(image, timings)

    def empty_embedding(self) -> torch.Tensor:
        """SD's empty-prompt text embedding [1, 77, D] (computed once per text encoder)."""
        return self.extractor.empty_embedding()

    def similarity(self, shots: list[PromptFeatures], target: dict[str, torch.Tensor]) -> np.ndarray:
        """S on the target's grid (float32 [g, g]) from one concept's prompt shots and the target's
        :meth:`features`; several shots are combined by ``config.kshot``."""
        return fused_similarity([s.prototypes for s in shots], target, self.mode.feature_weights(self.config),
                                self.config.kshot)

    # ---------------------------------------------------------------------------------------- internals
    def _prompt_features(self, image: np.ndarray, region: tuple | None) -> PromptFeatures:
        if self.config.method == "gfsam":
            shot, cells, source, detail, notes = gfsam_run.prompt_shot(self.hub, self.extractor, self.config,
                                                                       self.mode, image, region)
            return PromptFeatures({}, cells, source, detail, notes, shot)
        features = self.extractor.features(image)
        tokens = features[self.config.primary_feature]
        if region is None:
            (cells, detail), source, notes = auto_region(image, tokens), "auto-pca", []
        else:
            source, mask, notes = region
            cells, detail = grid_region(source, mask, tokens.shape[-1], self.mode.grid_sampling)
        calibrated = calibration_for(self.config) is not None
        own_cells = exemplars(tokens, cells) if calibrated else None
        if calibrated and own_cells is None:
            notes = [*notes, "presence is the raw score (not calibrated): the prompt region covers the whole "
                             "prompt image, which leaves no background to compare with"]
        return PromptFeatures({f: prototype(feat, cells) for f, feat in features.items()}, cells, source, detail,
                              list(notes), exemplars=own_cells)

    def _steps(self, concepts: list[Concept]) -> int:
        """Stages reported per target: each prompt image, the feature passes, SAM's encoder, each concept."""
        feature_passes = {"dino+sd": 2, "dino": 1, "sam": 0}[self.config.features]
        return sum(len(c.prompts) for c in concepts) + feature_passes + 1 + len(concepts)

    def _check_size(self, image: np.ndarray, what: str) -> None:
        h, w = image.shape[:2]
        if min(h, w) < self.config.min_side:
            raise IPSegError(f"the {what} is {w}x{h} pixels: smaller than one {self.config.min_side}-pixel "
                             "DINOv2 patch on its shorter side; nothing to segment (use a larger image)")

    def _prompt_shots(self, concepts: list[Concept], progress: StageProgress) -> tuple[list[list[PromptFeatures]],
                                                                                       bool, list[str]]:
        """Every concept's prompt features (cached), whether all came from the cache, and their notes."""
        shots_per_concept, cached, notes = [], True, []
        n_prompts, k = sum(len(c.prompts) for c in concepts), 0
        for concept in concepts:
            shots = []
            for prompt in concept.prompts:
                k += 1
                progress(f"prompt {k}/{n_prompts} features")
                entry, hit = self.prompt_features(prompt)
                cached &= hit
                notes += [n for n in entry.notes if n not in notes]
                shots.append(entry)
            shots_per_concept.append(shots)
        return shots_per_concept, cached, notes

    def _segment(self, concepts: list[Concept], target: ImageInput, name: str, progress: StageProgress) -> IPSegResult:
        """1. prompt features (cached) 2. target features and SAM encoding 3. per concept: similarity,
        presence, points and the SAM cascade."""
        cfg = self.config
        timings: dict[str, float] = {}
        start = time.perf_counter()
        shots_per_concept, cached, notes = self._prompt_shots(concepts, progress)
        timings["prompt"] = time.perf_counter() - start  # loading + hashing only, when every prompt is cached
        t0 = time.perf_counter()
        image = _load(target, "target image")
        self._check_size(image, "target image")
        timings["load"] = time.perf_counter() - t0
        if cfg.method == "gfsam":
            results = self._gfsam_concepts(concepts, shots_per_concept, image, timings, progress)
            timings["total"] = time.perf_counter() - start
            return IPSegResult(image, results, timings, cached, cfg, self.tiny, notes, name,
                               sam_backend=self.extractor.sam_backend)
        view, feats = self._target_features(image, timings, progress)
        timings.update(similarity=0.0, points=0.0, sam_decode=0.0)
        results = []
        for concept, shots in zip(concepts, shots_per_concept):
            progress(f"points and SAM decoder ({concept.name})")
            t0 = time.perf_counter()
            sim = self.similarity(shots, feats)
            scorer = presence_of(cfg, sim, [s.exemplars for s in shots], feats[cfg.primary_feature])
            timings["similarity"] += time.perf_counter() - t0
            presence, present, instances = find_instances(sim, view, cfg, timings, scorer)
            regions = [{"source": s.source, "grid": s.grid_detail} for s in shots]
            results.append(ConceptResult(concept.name, presence, present, instances, sim, regions,
                                         presence_kind=scorer.kind,
                                         raw_presence=scorer.raw() if scorer.kind == "calibrated" else None))
        timings["total"] = time.perf_counter() - start
        return IPSegResult(image, results, timings, cached, cfg, self.tiny, notes, name,
                           sam_backend=self.extractor.sam_backend)

    def _gfsam_concepts(self, concepts: list[Concept], shots_per_concept: list[list[PromptFeatures]],
                        image: np.ndarray, timings: dict[str, float], progress: StageProgress) -> list[ConceptResult]:
        """GF-SAM on the target: its frame, tokens and SAM encoding once, then each concept."""
        target = gfsam_run.prepare_target(self.hub, self.extractor, self.config, self.mode, image, timings, progress)
        timings.update(alignment=0.0, sam_decode=0.0, graph=0.0)
        results = []
        for concept, shots in zip(concepts, shots_per_concept):
            progress(f"GF-SAM points, SAM decoder and graph ({concept.name})")
            results.append(gfsam_run.concept_result(concept.name, shots, target, self.config, self.mode, timings))
        return results

    def _target_features(self, image: np.ndarray, timings: dict[str, float],
                         progress: StageProgress) -> tuple[SamView, dict[str, torch.Tensor]]:
        """The target encoded by SAM (once) and its features (with SAM features, from that encoding)."""
        cfg = self.config
        feats = None if cfg.features == "sam" else self.extractor.features(image, timings, on_stage=progress)
        progress("SAM image encoder")
        t0 = time.perf_counter()
        # SAM is asked for after the feature models: a memory budget may offload those meanwhile.
        view = self.extractor.sam_view(image)
        timings["sam_encode"] = time.perf_counter() - t0
        if feats is None:
            feats = self.extractor.features(image, timings, sam_view=view)
        return view, feats


def find_instances(sim: np.ndarray, view: SamView, config: IPSegConfig, timings: dict[str, float] | None = None,
                   presence: Presence | None = None) -> tuple[float, bool, list[Instance]]:
    """Presence and instance masks of one concept from its similarity map S [g, g] over a target
    encoded in ``view``. Returns (presence, present, instances).

    presence = ``presence()`` over all cells (default: the raw top-k mean of S; see
    :mod:`~vision.engines.ipseg.presence`); below ``presence_threshold`` the concept is absent (no
    instance). Otherwise instance 1 comes from the spec's points and cascade; each further instance
    (up to ``max_instances``) is sought after excluding the cells of every mask found and the top-k cells
    already used, while the presence of the remaining cells stays >= ``presence_threshold`` (or, with
    no threshold, >= ``instance_ratio`` x instance 1's score, and > 0). A further mask that is empty or
    mostly (> 50%) inside earlier masks ends the search and is not returned. Points go to SAM in the
    view's frame; instances hold them, and their masks, in image pixels.
    """
    cfg = config
    timings = {} if timings is None else timings
    grid = sim.shape[1]
    presence = Presence(sim, cfg.top_k) if presence is None else presence
    overall = presence()
    present = cfg.presence_threshold is None or overall >= cfg.presence_threshold
    instances: list[Instance] = []
    allowed = np.ones_like(sim, dtype=bool)
    covered = np.zeros(view.image_hw, dtype=bool)
    while present and len(instances) < cfg.max_instances and allowed.any():
        score = presence(allowed)
        if instances:
            bar = cfg.presence_threshold if cfg.presence_threshold is not None else \
                max(cfg.instance_ratio * instances[0].score, 0.0)
            if score < bar:
                break
        t0 = time.perf_counter()
        sel = mode_for(cfg).select_points(sim, cfg, allowed)
        cells = np.concatenate([sel.positive, sel.negative])
        labels = np.array([1] * len(sel.positive) + [0] * len(sel.negative))
        timings["points"] = timings.get("points", 0.0) + time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            out = sam_cascade(view.predictor, pts.cells_to_pixels(cells, view.frame_hw, grid), labels)
        mask = view.mask_to_image(out.mask)
        timings["sam_decode"] = timings.get("sam_decode", 0.0) + time.perf_counter() - t0
        if instances and (not mask.any() or (mask & covered).sum() > 0.5 * mask.sum()):
            break  # nothing new: an empty mask or mostly an instance already found
        n_pos = len(sel.positive)
        coords = pts.cells_to_pixels(cells, view.image_hw, grid)
        instances.append(Instance(mask, score, out.iou, coords[:n_pos], coords[n_pos:], sel.positive,
                                  sel.negative, out.box is not None))
        covered |= mask
        used = np.zeros_like(allowed)
        used[sel.top_cells[:, 0], sel.top_cells[:, 1]] = True
        allowed &= ~(mask_touches_grid(mask, grid) | used)
    return overall, present, instances


def _display_name(name: str, target: Any, index: int) -> str:
    """How messages name a target: the file name of a path, else ``name``, else its position."""
    if isinstance(target, (str, os.PathLike)):
        return Path(target).name
    return Path(name).name if name else f"target {index + 1}"


def _load(source: ImageInput, what: str) -> np.ndarray:
    try:
        return load_image(source)
    except ImageError as err:
        raise IPSegError(f"{what}: {err}") from None
