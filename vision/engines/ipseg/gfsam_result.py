"""GF-SAM's point graph in a result: :class:`PointGraph` (record fields) and its picture over the target."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

NO_CLUSTER_NOTE = ("no point passed the positive-negative alignment (the prompt's background matches the "
                   "target better than its region everywhere): no graph, no cluster")
STATE_NAMES = {1: "in the union", 2: "dropped by one gate", 0: "dropped by both gates"}


@dataclass
class PointGraph:
    """GF-SAM's point graph of one concept, in the target image's pixels.

    ``points``: float32 [n, 2] (x, y); ``cells``: int64 [n, 2] (row, col) on the feature grid;
    ``clusters``: int64 [n], each point's weakly connected component; ``states``: int64 [n], 1 = its mask
    is in the union, 2 = one gate dropped it, 0 = both did; ``edges``: int64 [E, 2] (i, j), i != j, point
    i's mask covers point j; ``fallback``: the point whose mask is the answer because no point reached
    state 1 (None otherwise); ``sam_iou``: float32 [n], SAM's predicted IoU of each point's mask.
    """

    points: np.ndarray
    cells: np.ndarray
    clusters: np.ndarray
    states: np.ndarray
    edges: np.ndarray
    cluster_count: int
    fallback: int | None
    sam_iou: np.ndarray

    def to_record(self) -> dict:
        record = {"points": len(self.points), "clusters": self.cluster_count, "edges": len(self.edges),
                  "states": {name: int((self.states == s).sum()) for s, name in STATE_NAMES.items()},
                  "fallback_point": self.fallback,
                  "point_xy": np.round(self.points.astype(np.float64), 2).tolist(),
                  "point_cluster": self.clusters.tolist(), "point_state": self.states.tolist()}
        if self.cluster_count == 0:
            record["note"] = NO_CLUSTER_NOTE
        return record


def cluster_colours(count: int) -> list[tuple[int, int, int]]:
    """``count`` bright, well separated RGB colours (hues spaced by the golden angle)."""
    return [tuple(int(255 * v) for v in colorsys.hsv_to_rgb((0.13 + k * 0.381966) % 1.0, 0.85, 1.0))
            for k in range(count)]


def draw_point_graph(image: np.ndarray, graph: PointGraph, mask: np.ndarray | None = None) -> np.ndarray:
    """The graph over the target: RGB uint8 [H, W, 3]. The image is dimmed (the final ``mask`` bool [H, W]
    less so); each edge a translucent line in its source point's cluster colour; each point a dot of its
    cluster's colour: filled = in the union, ring = dropped by one gate, cross = dropped by both."""
    base = image.astype(np.float32) * 0.4 + 30
    if mask is not None:
        base[mask] = image[mask] * 0.8 + 30
    canvas = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).convert("RGBA")
    colours = cluster_colours(max(graph.cluster_count, 1))
    width = max(1, min(image.shape[:2]) // 400)
    edges = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(edges)
    for i, j in graph.edges:
        (x0, y0), (x1, y1) = graph.points[i], graph.points[j]
        draw.line([(x0, y0), (x1, y1)], fill=(*colours[graph.clusters[i]], 70), width=width)
    canvas = Image.alpha_composite(canvas, edges).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    r = max(3, min(image.shape[:2]) // 80)
    for (x, y), cluster, state in zip(graph.points, graph.clusters, graph.states, strict=True):
        colour = colours[cluster]
        if state == 1:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(0, 0, 0), width=1)
        elif state == 2:
            draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=max(2, width))
        else:
            draw.line([(x - r, y - r), (x + r, y + r)], fill=colour, width=max(2, width))
            draw.line([(x - r, y + r), (x + r, y - r)], fill=colour, width=max(2, width))
    return np.asarray(canvas)
