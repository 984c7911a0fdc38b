"""IPSeg's results: instances, per-concept results with their similarity map (and, for GF-SAM, the point
graph), per-target results with records, files and images (mask overlay, similarity heatmap with the
chosen points, GF-SAM's point graph), batch errors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vision.engines.contract import engine_record
from vision.engines.ipseg.cascade import mask_bbox
from vision.engines.ipseg.config import IPSegConfig
from vision.engines.ipseg.gfsam_result import PointGraph, draw_point_graph
from vision.imaging import heatmap as colour_heatmap
from vision.imaging import overlay_mask, palette, resize, tiny_banner

POSITIVE_COLOUR = (0, 255, 0)
NEGATIVE_COLOUR = (255, 0, 0)


@dataclass
class Instance:
    """One mask of a concept in a target."""

    mask: np.ndarray  # bool [H, W]
    score: float  # the concept's presence (same kind) over the cells it was sought in
    sam_iou: float  # SAM's predicted IoU of the kept mask
    positive: np.ndarray  # [N, 2] (x, y) image pixels of the positive points
    negative: np.ndarray  # [M, 2] (x, y) image pixels of the negative points
    positive_cells: np.ndarray  # [N, 2] (row, col) grid cells (fractional in reference mode)
    negative_cells: np.ndarray
    box_used: bool  # step 3 of the cascade had a box

    def to_record(self) -> dict:
        box = mask_bbox(self.mask)

        def rounded(a: np.ndarray, digits: int) -> list:
            return np.round(np.asarray(a, dtype=np.float64), digits).tolist()

        return {"score": round(self.score, 6), "sam_iou": round(self.sam_iou, 6), "area": int(self.mask.sum()),
                "bbox": None if box is None else [int(v) for v in box], "box_used": self.box_used,
                "points": {"positive": rounded(self.positive, 2), "negative": rounded(self.negative, 2)},
                "cells": {"positive": rounded(self.positive_cells, 3), "negative": rounded(self.negative_cells, 3)}}


@dataclass
class ConceptResult:
    name: str
    presence: float  # over the whole target, of kind ``presence_kind`` (vision.engines.ipseg.presence)
    present: bool
    instances: list[Instance]
    similarity: np.ndarray  # S on the grid, float32 [g, g] (the grid spans the image); GF-SAM: its mean+ map
    prompt_regions: list[dict]  # per prompt image: {"source": mask|box|scribble|auto-pca, "grid": how}
    graph: PointGraph | None = None  # GF-SAM's points, clusters and gate states (None for IPSeg)
    presence_kind: str = "raw"  # "calibrated": 0..1, 0.5 = even odds; "raw": the method's own score (a cosine)
    raw_presence: float | None = None  # with a calibrated presence: the raw one (mean of the top-k of S)

    @property
    def mask(self) -> np.ndarray | None:
        """Union of the instances' masks (None when the concept has no instance)."""
        if not self.instances:
            return None
        return np.logical_or.reduce([i.mask for i in self.instances])

    def similarity_image(self, hw: tuple[int, int]) -> np.ndarray:
        """S resized to the image (bilinear between cell centres): float32 [H, W]."""
        return resize(self.similarity.astype(np.float32), hw)

    def to_record(self) -> dict:
        raw = {} if self.raw_presence is None else {"raw_presence": round(self.raw_presence, 6)}
        return {"name": self.name, "present": self.present, "presence": round(self.presence, 6),
                "presence_kind": self.presence_kind, **raw,
                "similarity_range": [round(float(self.similarity.min()), 6), round(float(self.similarity.max()), 6)],
                "prompt_regions": self.prompt_regions, "instances": [i.to_record() for i in self.instances],
                **({"graph": self.graph.to_record()} if self.graph is not None else {})}


@dataclass
class IPSegResult:
    """IPSeg's answer for one target image (see :meth:`to_record`, :meth:`to_files`, :meth:`overlay`,
    :meth:`heatmap`)."""

    image: np.ndarray  # the target, RGB uint8 [H, W, 3]
    concepts: list[ConceptResult]
    timings: dict[str, float]  # seconds per stage
    prompt_cached: bool  # every prompt came from the cache (no prompt pass for this target)
    config: IPSegConfig
    tiny: bool = False  # made with tiny random-weight models (the masks are noise)
    notes: list[str] = field(default_factory=list)
    name: str = ""
    index: int = 0  # position among the targets of a batch
    sam_backend: str = ""  # where SAM ran (torch, onnx or openvino; "auto" resolved)

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

    def concept(self, which: int | str = 0) -> ConceptResult:
        """A concept's result by position or name."""
        if isinstance(which, str):
            for c in self.concepts:
                if c.name == which:
                    return c
            raise KeyError(f"no concept {which!r}; concepts: {[c.name for c in self.concepts]}")
        return self.concepts[which]

    def to_record(self) -> dict:
        """JSON-able summary: what ran (:func:`~vision.engines.contract.engine_record`'s fields, the
        feature source, SAM model and frame), presence, instances (scores, points, boxes), regions."""
        record = engine_record(self.config, tiny=self.tiny, timings=self.timings, models=self.config.models())
        record.update({
            **self.config.describe(), "present": any(c.present for c in self.concepts),
            "score": round(self.presence, 6), "presence_kind": self.concepts[0].presence_kind,
            "category": self.concepts[0].name, "width": self.size[1],
            "height": self.size[0], "concepts": [c.to_record() for c in self.concepts],
            "prompt_cached": self.prompt_cached, "notes": list(self.notes),
        })
        if self.sam_backend:
            record["sam_backend"] = self.sam_backend
        if self.name:
            record["target"] = self.name
        return record

    def overlay(self) -> np.ndarray:
        """The target with each instance tinted (one colour each) and its points drawn (positive
        green, negative red); in tiny mode a banner says the masks are random-weight noise."""
        colours = palette(len(self.masks) + 1)[1:]
        out = self.image
        for colour, m in zip(colours, self.masks):
            out = overlay_mask(out, m, colour=tuple(int(v) for v in colour))
        return self._annotate(out, [i for c in self.concepts for i in c.instances])

    def heatmap(self, concept: int | str = 0, alpha: float = 0.5, points: bool = True) -> np.ndarray:
        """The concept's similarity map S over the target: RGB uint8 [H, W, 3], S resized to the image,
        scaled from its minimum (blue) to its maximum (red) (the range is in the record's
        ``similarity_range``) and blended with the image by ``alpha``; with ``points``, the chosen
        positive (green) and negative (red) points of each instance. Tiny mode: the banner."""
        c = self.concept(concept)
        sim = c.similarity_image(self.size)
        lo, hi = float(sim.min()), float(sim.max())
        scaled = (sim - lo) / (hi - lo) if hi > lo else np.zeros_like(sim)
        return self._annotate(colour_heatmap(scaled, self.image, alpha), c.instances if points else [])

    def graph_image(self, concept: int | str = 0) -> np.ndarray:
        """GF-SAM's point graph of the concept over the target (RGB uint8 [H, W, 3]; see
        :func:`~vision.engines.ipseg.gfsam_result.draw_point_graph`); :class:`ValueError` for IPSeg."""
        c = self.concept(concept)
        if c.graph is None:
            raise ValueError(f"the point graph is GF-SAM's; this result is from method={self.config.method!r}")
        out = draw_point_graph(self.image, c.graph, c.mask)
        return tiny_banner(out) if self.tiny else out

    def _annotate(self, image: np.ndarray, instances: list[Instance]) -> np.ndarray:
        canvas = Image.fromarray(image)
        draw = ImageDraw.Draw(canvas)
        r = max(2, min(self.size) // 80)
        for inst in instances:
            for pts, fill in ((inst.positive, POSITIVE_COLOUR), (inst.negative, NEGATIVE_COLOUR)):
                for x, y in pts:
                    draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(0, 0, 0))
        out = np.asarray(canvas)
        return tiny_banner(out) if self.tiny else out

    def to_files(self, heatmaps: bool = False) -> dict[str, Any]:
        """``{"mask.png": union mask, "overlay.png": overlay}``; with several masks also one
        ``<concept>_<k>.inst.png`` per instance (k from 0); with ``heatmaps`` the :meth:`heatmap` of each
        concept (``heatmap.png``, or ``<concept>.heatmap.png`` for several concepts) and, for GF-SAM, the
        :meth:`graph_image` of each (``graph.png`` or ``<concept>.graph.png``)."""
        files: dict[str, Any] = {"mask.png": self.mask, "overlay.png": self.overlay()}
        if len(self.masks) > 1:
            for c in self.concepts:
                for k, inst in enumerate(c.instances):
                    files[f"{_slug(c.name)}_{k}.inst.png"] = inst.mask
        if heatmaps:
            for k, c in enumerate(self.concepts):
                prefix = "" if len(self.concepts) == 1 else f"{_slug(c.name)}."
                files[f"{prefix}heatmap.png"] = self.heatmap(k)
                if c.graph is not None:
                    files[f"{prefix}graph.png"] = self.graph_image(k)
        return files


@dataclass
class TargetError:
    """A target of a batch that could not be segmented: its position, its name and why."""

    index: int
    name: str
    message: str

    def to_record(self) -> dict:
        return {"index": self.index, "target": self.name, "error": self.message}


class IPSegBatch(list):
    """The results of the targets that worked (a list of :class:`IPSegResult`, in target order, each
    with its ``index`` and ``name``) and ``errors``: one :class:`TargetError` per target that did not."""

    def __init__(self, results: list[IPSegResult], errors: list[TargetError]):
        super().__init__(results)
        self.errors = errors


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "concept"
