"""GF-SAM's steps 1-4 (see :mod:`vision.engines.ipseg.gfsam`): the tokens' per-channel rescaling,
the positive-negative alignment maps, the point map and the point prompts on the grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MAX_POINTS = 128  # the reference's cap on the number of point prompts ("for efficiency")
COSINE_EPS = 1e-7  # generate_prior / generate_pixelwise_comparison
SCALE_EPS = 1e-6  # the min-max scaling of the point map


@dataclass
class Shot:
    """One prompt image for GF-SAM: its tokens on the grid and its region's weight per cell.

    ``tokens``: float32 [N, C], the g x g grid in row-major order (N = g * g), already rescaled by
    :func:`normalise_over_cells`. ``weights``: float32 [N] in [0, 1], the prompt region's share of each cell
    (1 - weights is the background).
    """

    tokens: torch.Tensor
    weights: torch.Tensor


@dataclass
class AlignmentMaps:
    """Step 2's maps on the target's grid, float32 [g, g] each: positive max and mean (the region's cells),
    negative mean (the background's cells). ``positive_max`` x ``positive_mean`` is where points come from."""

    positive_max: torch.Tensor
    positive_mean: torch.Tensor
    negative_mean: torch.Tensor


@dataclass
class PointPrompts:
    """Step 4's points: ``cells`` int64 [n, 2] (row, col) in the reference's order (by column, then row),
    ``point_map`` float32 [g, g] (step 3's map they were chosen from), ``count`` n."""

    cells: np.ndarray
    point_map: torch.Tensor

    @property
    def count(self) -> int:
        return len(self.cells)


# ------------------------------------------------------------------------------------ 1. features
def normalise_over_cells(tokens: torch.Tensor) -> torch.Tensor:
    """The reference's ``F.normalize(feats, dim=1)`` of [B, N, C] tokens: each *channel* divided by its L2
    norm over the image's N cells. tokens float32 [N, C] -> [N, C] (cosines then see each channel rescaled)."""
    return F.normalize(tokens[None], dim=1, p=2)[0]


def grid_tokens(feature: torch.Tensor) -> torch.Tensor:
    """A feature map on the grid [C, g, g] -> tokens [N, C] (row-major cells), contiguous float32."""
    return feature.float().reshape(feature.shape[0], -1).T.contiguous()


# ----------------------------------------------------------------------------------- 2. alignment
def cosine_matrix(prompt: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every prompt cell with every target cell: prompt [Np, C], target [Nt, C] ->
    [Np, Nt], as ``generate_pixelwise_comparison`` computes it (dot products over the product of the norms
    + 1e-7)."""
    target_t = target[None].permute(0, 2, 1)  # [1, C, Nt]
    dots = torch.bmm(prompt[None], target_t)
    norms = torch.bmm(torch.norm(prompt[None], 2, 2, True), torch.norm(target_t, 2, 1, True))
    return (dots / (norms + COSINE_EPS))[0]


def weighted_maps(cosine: torch.Tensor, weights: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One shot's max and mean maps: cosine [Np, Nt], weights [Np] -> ([g, g], [g, g]).

    max map: max over prompt cells of w x cos; mean map: mean over prompt cells of w x cos, divided by
    (sum of w / Nt + 1e-7): the w-weighted mean of the cosine when Np = Nt (``generate_prior``)."""
    weighted = cosine * weights[:, None]
    mean = weighted.mean(0) / (weights.sum() / cosine.shape[1] + COSINE_EPS)
    return weighted.max(0)[0].view(grid, grid), mean.view(grid, grid)


def alignment_maps(target: torch.Tensor, shots: Sequence[Shot]) -> AlignmentMaps:
    """Positive-negative alignment of the target's tokens [Nt, C] with each prompt shot (step 2): positive
    maps with the region's weights, the negative mean map with 1 - weights; each map averaged over shots."""
    grid = int(round(target.shape[0] ** 0.5))
    if grid * grid != target.shape[0]:
        raise ValueError(f"target tokens: {target.shape[0]} cells do not make a square grid")
    pos_max, pos_mean, neg_mean = [], [], []
    for shot in shots:
        cosine = cosine_matrix(shot.tokens, target)
        high, mean = weighted_maps(cosine, shot.weights, grid)
        pos_max.append(high)
        pos_mean.append(mean)
        neg_mean.append(weighted_maps(cosine, 1 - shot.weights, grid)[1])
    return AlignmentMaps(*(torch.stack(maps).mean(0) for maps in (pos_max, pos_mean, neg_mean)))


# ---------------------------------------------------------------------------------- 3-4. points
def min_max_scaled(values: torch.Tensor) -> torch.Tensor:
    """``(v - min) / (max - min + 1e-6)``: values in [0, 1) (0 everywhere for a constant map)."""
    return (values - values.min()) / (values.max() - values.min() + SCALE_EPS)


def point_map(maps: AlignmentMaps) -> torch.Tensor:
    """Step 3: the scaled product positive mean x positive max, kept where it is at least the scaled
    negative mean map (0 elsewhere): float32 [g, g]."""
    cross = min_max_scaled(maps.positive_mean * maps.positive_max)
    negative = min_max_scaled(maps.negative_mean)
    return cross * ~(negative > cross)


def select_points(values: torch.Tensor, max_points: int = MAX_POINTS, reference: bool = False) -> PointPrompts:
    """Step 4: the top-N cells of the point map [g, g], N = min(int(sum), ``max_points``) (1 when the sum
    is in (0, 1), none when it is 0), returned by column, then row.

    ``reference``: ``torch.topk``'s choice among equal values; else the lowest flat index wins a tie."""
    total = values.sum()
    count = min(int(total), max_points)
    if count == 0 and total > 0:
        count = 1
    flat = values.flatten()
    if reference:
        chosen = flat.topk(count)[1].numpy()
    else:
        chosen = np.argsort(-flat.numpy(), kind="stable")[:count]
    grid = values.shape[-1]
    rows, cols = chosen // grid, chosen % grid
    order = np.lexsort((rows, cols))
    cells = np.stack([rows[order], cols[order]], axis=1).astype(np.int64).reshape(-1, 2)
    return PointPrompts(cells, values)


def cells_to_frame(cells: np.ndarray, frame_hw: tuple[int, int], grid: int, reference: bool) -> np.ndarray:
    """Point cells [n, 2] (row, col) -> frame pixels float32 [n, 2] (x, y).

    Reference: the cell's top-left corner truncated to an integer, ``trunc(col * W / g)`` (the
    reference's ``apply_coords`` then ``dtype=torch.int``); else the cell's centre ``(col + 0.5) * W / g``."""
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 2)
    h, w = frame_hw
    offset = 0.0 if reference else 0.5
    xy = np.stack([(cells[:, 1] + offset) * w / grid, (cells[:, 0] + offset) * h / grid], axis=1)
    return (np.trunc(xy) if reference else xy).astype(np.float32)
