"""GF-SAM as the image-prompt engine's ``method="gfsam"``: a prompt image's shot (tokens and region
weights, cached like IPSeg's prototypes), the target's frame, SAM encoding and tokens, and one concept's
result. The method itself is :mod:`vision.engines.ipseg.gfsam`; which frame and sampling are used is the
mode's ``gfsam_reference`` (:mod:`vision.engines.ipseg.modes`)."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vision.common import stage
from vision.engines.ipseg.cascade import SamView
from vision.engines.ipseg.config import IPSegConfig, IPSegError
from vision.engines.ipseg.gfsam import gfsam
from vision.engines.ipseg.gfsam_align import Shot, grid_tokens, normalise_over_cells
from vision.engines.ipseg.gfsam_inputs import (
    checked_weights,
    dino_prenorm_tokens,
    reference_dino_pixels,
    reference_region_weights,
    reference_sam_frame,
    reference_square,
    region_weights,
    sam_frame,
)
from vision.engines.ipseg.gfsam_result import PointGraph
from vision.engines.ipseg.prompts import auto_region, mask_touches_grid
from vision.engines.ipseg.results import ConceptResult, Instance
from vision.imaging import resize


@dataclass
class GFSAMTarget:
    """A target ready for GF-SAM: SAM with the frame set (``view``), the tokens float32 [N, C] (rescaled
    over cells) and the image's [H, W]."""

    view: SamView
    tokens: torch.Tensor
    image_hw: tuple[int, int]


# ------------------------------------------------------------------------------------------- prompts
def prompt_shot(hub: Any, extractor: Any, config: IPSegConfig, mode: Any, image: np.ndarray,
                region: tuple | None) -> tuple[Shot, np.ndarray, str, str, list[str]]:
    """A prompt image [H, W, 3] and its user region (``(kind, bool mask [H, W], notes)`` or None for the
    automatic foreground) -> (the :class:`Shot`, the region's cells bool [g, g], source, how the region
    reached the grid, notes). An empty region on the grid is refused, naming the field."""
    if mode.gfsam_reference:
        feature = reference_features(hub, extractor, config, reference_square(image))
    else:
        feature = extractor.features(image)[config.primary_feature]
    tokens, grid = grid_tokens(feature), feature.shape[-1]
    if region is None:
        cells, detail = auto_region(image, feature)
        source, notes, weights = "auto-pca", [], torch.as_tensor(cells, dtype=torch.float32).flatten()
    else:
        source, mask, notes = region
        if source == "scribble":
            weights, detail = torch.as_tensor(mask_touches_grid(mask, grid), dtype=torch.float32).flatten(), "touched"
        elif mode.gfsam_reference:
            weights, detail = reference_region_weights(mask, grid), "bilinear-samples"
        else:
            weights, detail = region_weights(mask, grid), "area-share"
    try:
        weights = checked_weights(weights, f"prompt {source}")
    except ValueError as err:
        raise IPSegError(str(err)) from None
    cells = (weights > 0).reshape(grid, grid).numpy()
    return Shot(normalise_over_cells(tokens), weights), cells, source, detail, list(notes)


def reference_features(hub: Any, extractor: Any, config: IPSegConfig, square: torch.Tensor,
                       view: SamView | None = None) -> torch.Tensor:
    """Features of the reference's square [3, 1024, 1024]: DINOv2's ``x_prenorm`` tokens of its 518 resize
    ([C, g, g], g = dino_size / 14), or, with ``features="sam"`` (ours: the reference has DINOv2 only), SAM's
    embedding of the square as the reference hands it to SAM ([256, 64, 64]; ``view``: already encoded)."""
    if config.features == "sam":
        if view is None:
            view = extractor.sam_view(reference_sam_frame(square), stretch=False)
        return extractor.sam(view)
    tokens = dino_prenorm_tokens(hub.get(config.dino_model), reference_dino_pixels(square, config.dino_size))
    side = config.dino_size // 14
    return tokens.T.reshape(-1, side, side)


# -------------------------------------------------------------------------------------------- target
def prepare_target(hub: Any, extractor: Any, config: IPSegConfig, mode: Any, image: np.ndarray,
                   timings: MutableMapping[str, float], on_stage: Callable[[str], Any]) -> GFSAMTarget:
    """The target [H, W, 3] in GF-SAM's frame: the reference's 1024 square (reference mode) or the image
    resized as SamPredictor resizes it; its tokens (DINOv2 first: a memory budget may then offload it
    before SAM loads; or SAM's embedding of the frame) and the frame encoded by SAM once."""
    square = reference_square(image) if mode.gfsam_reference else None
    feature = None
    if config.features == "dino":
        on_stage("DINOv2 features")
        with stage(timings, "dino"):
            feature = reference_features(hub, extractor, config, square) if square is not None else \
                extractor.features(image)["dino"]
    on_stage("SAM image encoder")
    with stage(timings, "sam_encode"):
        model = hub.get(config.sam_model)
        frame = reference_sam_frame(square) if square is not None else sam_frame(image, model.image_encoder.img_size)
        view = extractor.sam_view(frame, stretch=False)
    if feature is None:
        with stage(timings, "sam_features"):
            feature = extractor.sam(view)
    return GFSAMTarget(view, normalise_over_cells(grid_tokens(feature)), tuple(image.shape[:2]))


# ------------------------------------------------------------------------------------------- concept
def concept_result(name: str, shots: list[Any], target: GFSAMTarget, config: IPSegConfig, mode: Any,
                   timings: MutableMapping[str, float]) -> ConceptResult:
    """GF-SAM for one concept (``shots``: its prompts' cached features, each with ``.shot``): the union at
    the image's size, the presence score, the point graph in image pixels. The concept is absent (no
    instance) when no point was selected, the union is empty, or the score is below
    ``presence_threshold``."""
    out = gfsam(target.tokens, [s.shot for s in shots], target.view.predictor, mode.gfsam_reference,
                config.max_points, timings=timings)
    h, w = target.image_hw
    frame_h, frame_w = out.mask.shape
    mask = resize(out.mask, (h, w))
    points = out.points * np.array([w / frame_w, h / frame_h], dtype=np.float32)
    graph = out.graph
    edges = np.argwhere(graph.adjacency & ~np.eye(len(graph.adjacency), dtype=bool)).astype(np.int64)
    point_graph = PointGraph(points, out.prompts.cells, graph.clusters, graph.states, edges, graph.cluster_count,
                             graph.fallback, out.sam_iou)
    threshold = config.presence_threshold
    present = out.prompts.count > 0 and bool(mask.any()) and (threshold is None or out.score >= threshold)
    used = graph.states == 1 if graph.fallback is None else np.arange(len(points)) == graph.fallback
    instances = [Instance(mask, out.score, float(out.sam_iou[used].mean()) if used.any() else 0.0, points[used],
                          np.zeros((0, 2), np.float32), out.prompts.cells[used], np.zeros((0, 2), np.int64),
                          False)] if present else []
    regions = [{"source": s.source, "grid": s.grid_detail} for s in shots]
    return ConceptResult(name, out.score, present, instances, out.maps.positive_mean.numpy(), regions, point_graph)
