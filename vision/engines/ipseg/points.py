"""IPSeg's point prompts: the top-k cells of a similarity map, their k-means centres, and cell -> pixel.

Cells are ``(row, col)`` of a [g, g] grid that spans the image (cell ``(r, c)`` covers
``y in [r*H/g, (r+1)*H/g)``, ``x in [c*W/g, (c+1)*W/g)``); pixels are ``(x, y)``. A cell row is
``index // g`` (floor division) in every mode: the reference's ``index / 60`` is a bug (see
:mod:`vision.engines.ipseg.engine`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def flat_to_cells(indices: np.ndarray, grid: int) -> np.ndarray:
    """Flat indices into a [grid, grid] map -> cells [N, 2] (row = index // grid, col = index % grid)."""
    indices = np.asarray(indices, dtype=np.int64)
    return np.stack([indices // grid, indices % grid], axis=1)


def cells_to_pixels(cells: np.ndarray, frame_hw: tuple[int, int], grid: int) -> np.ndarray:
    """Grid cells [N, 2] (row, col; fractional cells allowed) -> their centres [N, 2] (x, y) in the pixels of
    an [H, W] frame the grid spans: ``x = (col + 0.5) * W / grid``. For the reference's stretched 1024
    square this is its ``col * 1024/60 + 1024/120``."""
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 2)
    h, w = frame_hw
    return np.stack([(cells[:, 1] + 0.5) * w / grid, (cells[:, 0] + 0.5) * h / grid], axis=1).astype(np.float32)


def top_k_cells(similarity: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """The ``k`` cells with the highest values, as [k, 2] (row, col), best first; ties broken by flat
    index (stable sort), only among ``allowed`` cells when given."""
    grid = similarity.shape[1]
    flat = similarity.reshape(-1).astype(np.float64)
    candidates = np.flatnonzero(allowed.reshape(-1)) if allowed is not None else np.arange(flat.size)
    order = candidates[np.argsort(-flat[candidates], kind="stable")]
    return flat_to_cells(order[:k], grid)


def top_k_mean(similarity: np.ndarray, k: int, allowed: np.ndarray | None = None) -> float:
    """Mean of the ``k`` highest values of ``similarity`` (within ``allowed`` cells when given)."""
    values = similarity[allowed] if allowed is not None else similarity.reshape(-1)
    if values.size == 0:
        return float("-inf")
    k = min(k, values.size)
    return float(np.mean(np.partition(values, values.size - k)[values.size - k :]))


# ------------------------------------------------------------------------------------------------ k-means
def kmeans(points: np.ndarray, k: int, iters: int = 20, seed: int = 0) -> np.ndarray:
    """Seeded k-means of points [N, 2] -> centres [k', 2] (float64), k' <= k (our default mode).

    Initialisation: k-means++ driven by ``numpy.random.default_rng(seed)`` (the first centre a uniform
    draw, each next one drawn with probability proportional to the squared distance to the nearest
    chosen centre). Then ``iters`` Lloyd iterations: every point goes to its nearest centre (lowest index
    on ties) and each centre moves to the mean of its points (a centre that loses all its points stays).
    Clusters that end empty are dropped. The same input and seed always give the same centres.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        return np.zeros((0, 2))
    k = min(k, len(points))
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(points)))]
    for _ in range(1, k):
        d2 = ((points[:, None, :] - points[chosen][None]) ** 2).sum(-1).min(axis=1)
        if d2.sum() <= 0:  # every point coincides with a chosen centre: no more distinct centres
            break
        chosen.append(int(rng.choice(len(points), p=d2 / d2.sum())))
    centres = points[chosen].copy()

    def assign(c: np.ndarray) -> np.ndarray:
        return ((points[:, None, :] - c[None]) ** 2).sum(-1).argmin(axis=1)

    for _ in range(iters):
        labels = assign(centres)
        new = centres.copy()
        for j in range(len(centres)):
            members = points[labels == j]
            if len(members):
                new[j] = members.mean(axis=0)
        if np.array_equal(new, centres):
            break
        centres = new
    return centres[np.isin(np.arange(len(centres)), assign(centres))]


def kmeans_reference(points: np.ndarray, k: int, iters: int = 20, seed: int = 0) -> np.ndarray:
    """The reference's k-means of points [N, 2] -> centres [k', 2] (float64, not rounded), k' <= k.

    Initial centres: the points at ``torch.randperm(N)[:k]`` of a CPU generator seeded with ``seed``
    (the reference seeds the global generator with 0 before each call: the same draw).
    Then :func:`lloyd_reference`; centres left NaN (emptied clusters) are dropped.
    """
    # The reference clusters (col, row): kept, because cdist's matrix-product path rounds differently
    # when the coordinates swap, which can flip near-ties.
    data = torch.as_tensor(np.asarray(points, dtype=np.float32).reshape(-1, 2)[:, ::-1].copy())
    if len(data) == 0:
        return np.zeros((0, 2))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    centres = lloyd_reference(data, data[order[:k]], iters)
    return centres[~torch.isnan(centres).any(dim=1)].double().numpy()[:, ::-1].copy()


def lloyd_reference(data: torch.Tensor, centres: torch.Tensor, iters: int) -> torch.Tensor:
    """The reference's Lloyd loop on float32 points [N, 2] from ``centres`` [k, 2], op for op: assign
    by ``torch.cdist`` + ``argmin``, move each centre to its points' mean, stop when no centre moved.

    A cluster that loses every point gets a NaN centre (the mean of nothing), and ``argmin`` picks a
    NaN distance first: from the next iteration on, every point joins one NaN cluster, so the result
    collapses to a single centre, the mean of all points. That is the reference's behaviour.
    """
    for _ in range(iters):
        labels = torch.argmin(torch.cdist(data, centres), dim=1)
        new = torch.stack([data[labels == j].mean(dim=0) for j in range(len(centres))])
        if torch.equal(new, centres):
            break
        centres = new
    return centres


@dataclass
class PointSelection:
    """Point prompts on the grid: positive/negative cells [N, 2] (row, col; fractional in reference mode)
    and the top/bottom cells they were clustered from."""

    positive: np.ndarray
    negative: np.ndarray
    top_cells: np.ndarray
    bottom_cells: np.ndarray


def cluster_cells(cells: np.ndarray, clusters: int, iters: int, seed: int, grid: int) -> np.ndarray:
    """k-means centres of cells, rounded to the nearest cell and de-duplicated (order kept) -> [n, 2] int."""
    centres = np.clip(np.rint(kmeans(cells, clusters, iters, seed)), 0, grid - 1).astype(np.int64)
    _, first = np.unique(centres, axis=0, return_index=True)
    return centres[np.sort(first)]


def select_points(similarity: np.ndarray, k: int = 32, clusters: int = 4, iters: int = 20, seed: int = 0,
                  allowed: np.ndarray | None = None) -> PointSelection:
    """The spec's point prompts from a similarity map S [g, g] (the project's mode).

    Positive: k-means (``clusters``, ``iters``, ``seed``) of the ``k`` highest cells of S (only among
    ``allowed`` cells when given); negative: the same on 1 - S, i.e. the ``k`` lowest cells of the whole
    map. :func:`kmeans` with centres rounded to cells.
    """
    grid = similarity.shape[1]
    top = top_k_cells(similarity, k, allowed)
    bottom = top_k_cells(1.0 - similarity, k)
    return PointSelection(cluster_cells(top, clusters, iters, seed, grid),
                          cluster_cells(bottom, clusters, iters, seed, grid), top, bottom)


def select_points_reference(similarity: np.ndarray, k: int = 32, clusters: int = 4, iters: int = 20, seed: int = 0,
                            allowed: np.ndarray | None = None) -> PointSelection:
    """:func:`select_points` as the reference does it: :func:`kmeans_reference`, centres kept fractional."""
    top = top_k_cells(similarity, k, allowed)
    bottom = top_k_cells(1.0 - similarity, k)
    return PointSelection(kmeans_reference(top, clusters, iters, seed),
                          kmeans_reference(bottom, clusters, iters, seed), top, bottom)
