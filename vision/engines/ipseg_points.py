"""Pure helpers of the IPSeg engine: grids, regions, prototypes, point selection and the SAM cascade.

Coordinate conventions (used by every function here and by :mod:`vision.engines.ipseg`):

* **The grid.** Features are computed on a letterboxed square (DINOv2: 840 px -> 60x60 tokens; SD:
  960 px -> latent 120 -> 15/30/60 decoder maps). :func:`crop_to_grid` cuts each map back to the cells
  that cover the real image (:meth:`vision.imaging.Letterbox.valid_region`) and resizes it (nearest) to
  ``grid`` x ``grid``. From then on cell ``(row, col)`` of the grid covers the image pixels
  ``y in [row*H/grid, (row+1)*H/grid)``, ``x in [col*W/grid, (col+1)*W/grid)`` of the [H, W] image:
  the grid spans the *image*, not the padded square (cells are not square for non-square images).
* **Points for SAM.** A cell's centre in image pixels is ``x = (col + 0.5) * W / grid``,
  ``y = (row + 0.5) * H / grid`` (:func:`cells_to_pixels`). ``SamPredictor.predict`` takes points in
  image pixels and maps them into its own aspect-keeping 1024 frame. The reference instead stretches the
  target to 1024x1024 and uses ``x = col * 1024/grid + 1024/(2*grid)`` (:func:`cells_to_sam1024`); both
  name the same image pixel (``ref / 1024 * (W, H) == pixel``), so the two set-ups see the same points.
* Masks are bool [H, W]; grids are [grid, grid] arrays indexed ``[row, col]``; points are
  ``(row, col)`` for cells and ``(x, y)`` for pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vision.imaging import Letterbox


# ------------------------------------------------------------------------------------------------ grid
def crop_to_grid(feature: torch.Tensor, box: Letterbox, grid: int) -> torch.Tensor:
    """Feature map [C, n, n] of the letterboxed square -> [C, grid, grid] over the real image.

    Keeps the cells of the ``n`` x ``n`` map that cover the image (partly covered border cells
    included), then resizes them with nearest-neighbour sampling.
    """
    rows, cols = box.valid_region(feature.shape[-1])
    crop = feature[:, rows, cols]
    if crop.shape[-2:] == (grid, grid):
        return crop
    return F.interpolate(crop[None].float(), size=(grid, grid), mode="nearest-exact")[0].to(feature.dtype)


def cells_to_pixels(cells: np.ndarray, image_hw: tuple[int, int], grid: int) -> np.ndarray:
    """Grid cells [N, 2] (row, col) -> their centres [N, 2] (x, y) in image pixels (float32)."""
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 2)
    h, w = image_hw
    return np.stack([(cells[:, 1] + 0.5) * w / grid, (cells[:, 0] + 0.5) * h / grid], axis=1).astype(np.float32)


def cells_to_sam1024(cells: np.ndarray, grid: int, side: int = 1024) -> np.ndarray:
    """Grid cells [N, 2] (row, col) -> (x, y) in the reference's stretched ``side`` x ``side`` SAM frame:
    ``x = col * side/grid + side/(2 grid)`` (rows alike)."""
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 2)
    return np.stack([cells[:, 1] * side / grid + side / (2 * grid),
                     cells[:, 0] * side / grid + side / (2 * grid)], axis=1).astype(np.float32)


def flat_to_cells(indices: np.ndarray, grid: int) -> np.ndarray:
    """Flat indices into a [grid, grid] map -> cells [N, 2] (row = index // grid, col = index % grid)."""
    indices = np.asarray(indices, dtype=np.int64)
    return np.stack([indices // grid, indices % grid], axis=1)


# --------------------------------------------------------------------------------------------- regions
def box_to_mask(box: Sequence[float], image_hw: tuple[int, int]) -> np.ndarray:
    """Box (x0, y0, x1, y1) in pixels (clipped to the image) -> bool mask [H, W]."""
    h, w = image_hw
    x0, y0, x1, y1 = (float(v) for v in box)
    c0, c1 = int(np.clip(np.floor(min(x0, x1)), 0, w)), int(np.clip(np.ceil(max(x0, x1)), 0, w))
    r0, r1 = int(np.clip(np.floor(min(y0, y1)), 0, h)), int(np.clip(np.ceil(max(y0, y1)), 0, h))
    mask = np.zeros((h, w), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def mask_to_grid(mask: np.ndarray, grid: int) -> np.ndarray:
    """bool mask [H, W] -> bool [grid, grid], nearest-neighbour at cell centres (the spec's resize of M)."""
    t = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    return (F.interpolate(t, size=(grid, grid), mode="nearest-exact")[0, 0] > 0.5).numpy()


def mask_touches_grid(mask: np.ndarray, grid: int) -> np.ndarray:
    """bool mask [H, W] -> bool [grid, grid]: True where any pixel of the cell is inside the mask."""
    mask = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    return (F.adaptive_max_pool2d(mask, (grid, grid))[0, 0] > 0).numpy()


def erode3x3(region: np.ndarray) -> np.ndarray:
    """3x3 min-pool of a bool grid (the image border does not erode: padding counts as inside)."""
    t = torch.as_tensor(np.asarray(region, dtype=np.float32))[None, None]
    return (-F.max_pool2d(-t, 3, stride=1, padding=1) > 0.5)[0, 0].numpy()


def region_from_mask(mask: np.ndarray, grid: int, erode: bool = True) -> tuple[np.ndarray, str]:
    """The prompt region R on the grid from a non-empty pixel mask, and how it was obtained.

    Nearest resize to the grid, then a 3x3 erosion (``erode``). Fallbacks, in order, when a step leaves
    nothing: the un-eroded grid mask ("uneroded"), then every cell the mask touches ("touched": masks
    thinner than a cell).
    """
    grid_mask = mask_to_grid(mask, grid)
    if erode:
        eroded = erode3x3(grid_mask)
        if eroded.any():
            return eroded, "eroded"
    if grid_mask.any():
        return grid_mask, "uneroded" if erode else "nearest"
    return mask_touches_grid(mask, grid), "touched"


def first_pc_foreground(tokens: torch.Tensor, centre_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Automatic foreground from patch tokens [C, g, g]: the first principal component of the
    L2-normalised tokens, thresholded at 0 (its mean), with the sign chosen so that the central
    ``centre_fraction`` of the grid scores higher on average than the rest (the salient side).

    Returns (foreground bool [g, g], projection float32 [g, g]).
    """
    c, g1, g2 = tokens.shape
    x = F.normalize(tokens.reshape(c, -1).T.double(), dim=1)
    x = x - x.mean(dim=0, keepdim=True)
    _, vectors = torch.linalg.eigh(x.T @ x)
    proj = (x @ vectors[:, -1]).reshape(g1, g2)
    centre = np.zeros((g1, g2), dtype=bool)
    m1, m2 = round(g1 * (1 - centre_fraction) / 2), round(g2 * (1 - centre_fraction) / 2)
    centre[m1 : g1 - m1, m2 : g2 - m2] = True
    centre_t = torch.as_tensor(centre)
    if proj[centre_t].mean() < proj[~centre_t].mean():
        proj = -proj
    proj = proj.float().numpy()
    return proj > 0, proj


# ------------------------------------------------------------------------------------------ similarity
def prototype(feature: torch.Tensor, region: np.ndarray) -> torch.Tensor:
    """L2-normalised mean of the raw features [C, g, g] over the cells of ``region`` -> [C] (float32)."""
    sel = torch.as_tensor(np.asarray(region, dtype=bool), device=feature.device)
    return F.normalize(feature.float()[:, sel].mean(dim=1), dim=0)


def cosine_map(proto: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of prototype(s) [C] or [K, C] with every cell of [C, g, g] -> [g, g]
    (for several prototypes, the maximum over them)."""
    protos = proto.float().reshape(-1, proto.shape[-1])
    cells = F.normalize(feature.float().reshape(feature.shape[0], -1), dim=0)
    sims = protos.to(cells.device) @ cells
    return sims.max(dim=0).values.reshape(feature.shape[1:])


def top_k_mean(similarity: np.ndarray, k: int, allowed: np.ndarray | None = None) -> float:
    """Mean of the ``k`` highest values of ``similarity`` (within ``allowed`` cells when given)."""
    values = similarity[allowed] if allowed is not None else similarity.reshape(-1)
    if values.size == 0:
        return float("-inf")
    k = min(k, values.size)
    return float(np.mean(np.partition(values, values.size - k)[values.size - k :]))


# ------------------------------------------------------------------------------------------------ points
def top_k_cells(similarity: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """The ``k`` cells with the highest values, as [k, 2] (row, col), best first; ties broken by flat
    index (stable sort), only among ``allowed`` cells when given."""
    grid = similarity.shape[1]
    flat = similarity.reshape(-1).astype(np.float64)
    candidates = np.flatnonzero(allowed.reshape(-1)) if allowed is not None else np.arange(flat.size)
    order = candidates[np.argsort(-flat[candidates], kind="stable")]
    return flat_to_cells(order[:k], grid)


def kmeans(points: np.ndarray, k: int, iters: int = 20, seed: int = 0) -> np.ndarray:
    """Seeded k-means of points [N, 2] -> centres [k', 2] (float64), k' <= k.

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


@dataclass
class PointSelection:
    """Point prompts on the grid: positive/negative cells [N, 2] (row, col) and the top cells used."""

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
    """The spec's point prompts from a similarity map S [g, g].

    Positive: k-means (``clusters``, ``iters``, ``seed``) of the ``k`` highest cells of S (only among
    ``allowed`` cells when given); negative: the same on 1 - S, i.e. the ``k`` lowest cells of the whole
    map. Cluster centres are rounded to cells.
    """
    grid = similarity.shape[1]
    top = top_k_cells(similarity, k, allowed)
    bottom = top_k_cells(1.0 - similarity, k)
    return PointSelection(cluster_cells(top, clusters, iters, seed, grid),
                          cluster_cells(bottom, clusters, iters, seed, grid), top, bottom)


# -------------------------------------------------------------------------------------------------- SAM
def mask_bbox(mask: np.ndarray) -> np.ndarray | None:
    """(x0, y0, x1, y1) of the True pixels of a bool mask (inclusive pixel indices), or None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)


@dataclass
class CascadeOutput:
    mask: np.ndarray  # bool [H, W]
    iou: float  # SAM's predicted IoU of the kept mask
    logits: np.ndarray  # low-res logits [1, 256, 256] of the kept mask
    box: np.ndarray | None  # the step-3 box (None when step 2's mask was empty)
    steps: list[dict[str, Any]] = field(default_factory=list)  # per step: kept index and IoU


def sam_cascade(predictor: Any, coords: np.ndarray, labels: np.ndarray) -> CascadeOutput:
    """PerSAM's three-step refinement on a predictor whose image is already set (no re-encoding).

    1. ``predict(point_coords, point_labels, multimask_output=False)`` -> logits L1.
    2. ``predict(point_coords, point_labels, mask_input=L1, multimask_output=True)`` -> keep the mask with
       the highest predicted IoU.
    3. ``predict(point_coords, point_labels, box=bbox(mask 2), mask_input=its logits,
       multimask_output=True)`` -> keep the highest predicted IoU. When mask 2 is empty the box is left
       out (``box=None``) instead of passing a degenerate one.
    """
    coords = np.asarray(coords, dtype=np.float32).reshape(-1, 2)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    steps = []
    masks, ious, logits = predictor.predict(point_coords=coords, point_labels=labels, multimask_output=False)
    steps.append({"kept": 0, "iou": float(ious[0])})
    masks, ious, logits = predictor.predict(point_coords=coords, point_labels=labels,
                                            mask_input=logits[0:1], multimask_output=True)
    best = int(np.argmax(ious))
    steps.append({"kept": best, "iou": float(ious[best])})
    box = mask_bbox(masks[best])
    masks, ious, logits = predictor.predict(point_coords=coords, point_labels=labels, box=box,
                                            mask_input=logits[best : best + 1], multimask_output=True)
    best = int(np.argmax(ious))
    steps.append({"kept": best, "iou": float(ious[best]), "box": box is not None})
    return CascadeOutput(np.asarray(masks[best], dtype=bool), float(ious[best]), logits[best : best + 1], box, steps)
