"""GF-SAM's point-mask graph, its clusters, the two gates and the final union (steps 6-9 of
:mod:`vision.engines.ipseg.gfsam`; the reference's ``mask_cluster``, ``cluster_classification``,
``point_consistency_dis`` and ``triplet_selection_b`` in ``matcher/GFSAM.py``).

Points are indexed 0..n-1 in the order of :func:`~vision.engines.ipseg.gfsam.select_points` (by column,
then row); point i's mask is ``masks[i]`` (bool [n, h, w], the SAM frame's pixels); the grid is g x g
and spans the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import csgraph

from vision.engines.ipseg.gfsam_align import COSINE_EPS, AlignmentMaps, cosine_matrix, weighted_maps

MASK_EPS = 1e-6  # cluster_classification's mask-score denominator
RESIZE_CHUNK = 16  # masks resized to the grid per step (bounds the float copy of [chunk, h, w])


@dataclass
class GraphOutput:
    """Steps 6-9 for one concept; per-point arrays have one entry per point prompt.

    ``adjacency``: bool [n, n], [i, j] = point i's mask covers point j's cell; ``clusters``: int64 [n],
    each point's weakly connected component (0..``cluster_count``-1); ``foreground``: bool [n], mask kept
    by the positive gate; ``consistent``: bool [n], point kept by the overshooting gate; ``states``: int64
    [n], 1 = both (its mask is in the union), 2 = one of them, 0 = neither; ``cluster_scores``: float32
    [n], its cluster's score from the positive gate; ``mask``: bool [h, w], the union; ``fallback``: the
    point whose mask was taken because no point reached state 1 (None when the union is of state-1
    points or there is no point)."""

    adjacency: np.ndarray
    clusters: np.ndarray
    cluster_count: int
    foreground: np.ndarray
    consistent: np.ndarray
    states: np.ndarray
    cluster_scores: np.ndarray
    mask: torch.Tensor
    fallback: int | None


# --------------------------------------------------------------------------------- 6. the graph
def grid_masks(masks: torch.Tensor, grid: int, mode: str) -> torch.Tensor:
    """bool masks [n, h, w] -> float32 [n, g, g] by ``F.interpolate`` (``"nearest"``, or ``"bilinear"``
    without aligned corners: soft values), in chunks so that the float copy stays small."""
    out = [F.interpolate(masks[i : i + RESIZE_CHUNK, None].float(), (grid, grid), mode=mode)[:, 0]
           for i in range(0, len(masks), RESIZE_CHUNK)]
    return torch.cat(out) if out else torch.zeros((0, grid, grid))


def coverage_graph(nearest: torch.Tensor, cells: np.ndarray) -> np.ndarray:
    """The directed point-mask graph: ``nearest`` masks on the grid [n, g, g] (0/1), ``cells`` [n, 2]
    (row, col) -> adjacency bool [n, n], True at [i, j] when mask i covers point j's cell."""
    rows, cols = torch.as_tensor(cells[:, 0]), torch.as_tensor(cells[:, 1])
    return (nearest[:, rows, cols] > 0).numpy()


def point_clusters(adjacency: np.ndarray) -> tuple[int, np.ndarray]:
    """The weakly connected components of the directed graph: (count, int64 [n] component per point,
    numbered in the order of each component's first point)."""
    if len(adjacency) == 0:
        return 0, np.zeros(0, dtype=np.int64)
    count, labels = csgraph.connected_components(adjacency.astype(np.float32), directed=True, connection="weak",
                                                 return_labels=True)
    return int(count), labels.astype(np.int64)


# ------------------------------------------------------------------------------ 7. positive gate
def positive_gating(soft: torch.Tensor, clusters: np.ndarray, count: int, maps: AlignmentMaps,
                    reference: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The positive gate, per cluster: its masks ranked by their score, grown in that order.

    ``soft``: the masks on the grid, bilinear [n, g, g]. Positive region P = (mean+)^2 > neg, neg = mean- x
    (max(mean+) + min(mean+)) / 2; a mask's score is its soft-weighted mean of (mean+)^2 - neg. A mask is
    kept when its part not yet covered by the kept masks (soft: x (1 - grown)) covers more P than not-P.
    ``reference``: ``torch.argsort``'s order among equal scores, else the lower point index first.
    Returns (foreground int64 [n] 0/1, cluster score float32 [n]: the kept-minus-rest of the last mask
    ranked in the point's cluster, as the reference records it)."""
    positive = maps.positive_mean * maps.positive_mean
    negative = maps.negative_mean * ((maps.positive_mean.max() + maps.positive_mean.min()) / 2)
    region = (positive > negative).float()
    labels = torch.as_tensor(clusters)
    foreground = torch.zeros_like(labels)
    scores = torch.zeros(len(labels), dtype=torch.float32)
    for cluster in range(count):
        members = torch.where(labels == cluster)[0]
        masks = soft[members][:, None]  # [m, 1, g, g]
        mask_scores = (masks * (positive - negative)[None, None]).sum(dim=(-1, -2, -3))
        mask_scores = mask_scores / (masks.sum(dim=(-1, -2, -3)) + MASK_EPS)
        order = mask_scores.argsort(descending=True) if reference else \
            torch.argsort(mask_scores, descending=True, stable=True)
        grown = torch.zeros_like(masks[0])
        for index in order:
            part = masks[index] * (1 - grown)
            inside, outside = (region * part).sum(), ((1 - region) * part).sum()
            if inside > outside:
                grown += part
                foreground[members[index]] = 1
        scores[members] = inside - outside
    return foreground, scores


# --------------------------------------------------------------------------- 8. overshooting gate
def cluster_similarity_maps(masks: torch.Tensor, clusters: np.ndarray, count: int, self_cosine: torch.Tensor,
                            grid: int, reference: bool) -> torch.Tensor:
    """Per cluster, the target's similarity to itself weighted by the cluster's union mask (bilinear to the
    grid): ``self_cosine`` [N, N] -> float32 [count, g, g] (the mean map of step 2, target against target).

    ``reference``: one cluster at a time, the reference's arithmetic; else all clusters in one matrix
    product (the same values up to float rounding, ~10x faster with many clusters on a 64 x 64 grid)."""
    labels = torch.as_tensor(clusters)
    unions = torch.stack([masks[labels == cluster].any(dim=0) for cluster in range(count)]) if count else \
        torch.zeros((0, *masks.shape[1:]), dtype=torch.bool)
    weights = grid_masks(unions, grid, "bilinear").flatten(1)  # [count, N]
    if reference:
        return torch.stack([weighted_maps(self_cosine, w, grid)[1] for w in weights]) if count else \
            torch.zeros((0, grid, grid))
    means = weights @ self_cosine / weights.shape[1]
    return (means / (weights.sum(dim=1, keepdim=True) / self_cosine.shape[1] + COSINE_EPS)).view(-1, grid, grid)


def consistency_gating(cluster_maps: torch.Tensor, clusters: np.ndarray, cells: np.ndarray) -> torch.Tensor:
    """The overshooting gate: a point is consistent when its own cluster is the one most similar to it,
    similarity = the cluster's map at the point over the distance to the cluster's nearest point (0 -> 1);
    a cluster whose points are mostly inconsistent loses all of them. ``cluster_maps`` [c, g, g],
    ``cells`` [n, 2] (row, col) -> int64 [n] 0/1."""
    labels = torch.as_tensor(clusters)
    xy = torch.as_tensor(cells[:, ::-1].copy())  # the reference measures in (x, y)
    similarity = cluster_maps[:, xy[:, 1], xy[:, 0]]  # [c, n]
    distance = torch.cdist(xy.float(), xy.float())  # [n, n]
    nearest = torch.stack([distance[:, labels == c].min(dim=1).values for c in range(len(cluster_maps))])
    nearest[nearest == 0] = 1
    best = (similarity / nearest).max(dim=0)[1]
    consistent = torch.where(best == labels, 1, 0)
    for cluster in range(len(cluster_maps)):
        members = torch.where(labels == cluster)[0]
        kept = consistent[members].sum()
        if kept < len(members) - kept:
            consistent[members] = 0
    return consistent


def gate_states(consistent: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Per point: 1 when both gates keep it, 2 when one does, 0 when neither (int64 [n])."""
    states = ((consistent + foreground) > 0).long() * 2
    states[(consistent * foreground) > 0] = 1
    return states


# -------------------------------------------------------------------------------------- 9. union
def final_union(masks: torch.Tensor, states: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    """The union of the masks of state-1 points (bool [h, w]); when there is none, the mask of the state-2
    point with the highest cluster score (a score <= 0 loses to the 0 the other points are given; the
    first point on ties). Returns (mask, the fallback point's index or None)."""
    union = masks[states == 1].any(dim=0) if bool((states == 1).any()) else torch.zeros(masks.shape[1:], dtype=bool)
    if union.any():
        return union, None
    candidates = torch.where(states == 2, scores, torch.zeros_like(scores))
    choice = int(candidates.max(dim=0)[1])
    return masks[choice].clone(), choice


def fuse_point_masks(masks: torch.Tensor, cells: np.ndarray, target: torch.Tensor, maps: AlignmentMaps,
                     reference: bool) -> GraphOutput:
    """Steps 6-9 on the point masks bool [n, h, w] of the points at ``cells`` [n, 2] (row, col), with the
    target's tokens [N, C] (for the overshooting gate) and step 2's maps."""
    n, grid = len(cells), maps.positive_mean.shape[-1]
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return GraphOutput(np.zeros((0, 0), dtype=bool), empty, 0, empty.astype(bool), empty.astype(bool), empty,
                           np.zeros(0, dtype=np.float32), torch.zeros(masks.shape[1:], dtype=torch.bool), None)
    adjacency = coverage_graph(grid_masks(masks, grid, "nearest"), cells)
    count, clusters = point_clusters(adjacency)
    foreground, scores = positive_gating(grid_masks(masks, grid, "bilinear"), clusters, count, maps, reference)
    cluster_maps = cluster_similarity_maps(masks, clusters, count, cosine_matrix(target, target), grid, reference)
    consistent = consistency_gating(cluster_maps, clusters, cells)
    states = gate_states(consistent, foreground)
    mask, fallback = final_union(masks, states, scores)
    return GraphOutput(adjacency, clusters, count, foreground.numpy().astype(bool), consistent.numpy().astype(bool),
                       states.numpy(), scores.numpy(), mask, fallback)
