"""GF-SAM, graph-based point fusion (training-free), the second method of the image-prompt engine.

Paper: "Bridge the Points: Graph-based Few-shot Segment Anything Semantically" (Zhang et al., NeurIPS 2024
spotlight). Reference code: ``ANDYZAQ/GF-SAM`` at f227d1d856c6cd33b420b18411e28369365bec02, the method in
``matcher/GFSAM.py`` (class ``GFSAM``), run by ``main_eval.py`` and ``app.py``; its logs in ``outputs/``.

**The method as the paper presents it** (abstract and the project page's overview; the paper's full
text is not on this machine): a *Positive-Negative Alignment* module correlates target and reference
features pixel by pixel and selects point prompts where the reference's foreground (positive maps: mean
and maximum) matches better than its background (negative map), the number of points following from the
maps, not from a hyperparameter; SAM makes one mask per point; *Point-Mask Clustering* builds a directed
graph (an edge from a point's mask to every point that mask covers) and takes its weakly connected
components as clusters; *Post-Gating*, positive gating and overshooting gating, keeps the confident masks
and drops false positives; the prediction is the union of what is kept.

**The method as ``matcher/GFSAM.py`` does it** (``GFSAM.predict`` and the methods it calls), and where
each stage lives here. The grid is DINOv2's 37x37 (518 / 14); every image is 1024x1024.

0. *Inputs* (``FSSDataset`` / ``app.py``): images stretched to 1024x1024 (``transforms.Resize`` of a PIL
   image: PIL bilinear), reference masks resized to 1024x1024 by ``F.interpolate(mode="nearest")``
   (:mod:`~vision.engines.ipseg.gfsam_inputs`).
1. *Features* (``extract_img_feats``, ``extract_sam_feats``): DINOv2 ViT-L/14 on the square resized to
   518 (a tensor resize: bilinear, no antialiasing under the reference's pinned torchvision 0.14.1),
   ImageNet normalisation, the last block's tokens before the final norm (``x_prenorm``), CLS dropped:
   [1369, C]; each image's tokens are then L2-normalised *over the tokens* (``F.normalize(dim=1)`` of
   [B, N, C]). SAM's embedding of the target's square after ``img.mul(255).byte()`` (which truncates).
2. *Alignment* (``generate_prior``, ``generate_pixelwise_comparison``; :func:`alignment_maps`): cosine
   similarity of every reference cell with every target cell; the reference mask on the grid (bilinear,
   ``align_corners=True``) weights each reference cell (w); per target cell, the *max map* is
   max_j w_j cos_j and the *mean map* mean_j(w_j cos_j) / (mean_j w_j + 1e-7); both averaged over the
   shots. Positive maps with w = the mask, negative maps with w = 1 - the mask.
3. *Point map* (``predict``; :func:`point_map`): the product mean+ x max+ scaled to [0, 1] by its min and
   max (+1e-6); the negative mean map scaled the same way; the product is kept where it is >= the
   negative, 0 elsewhere.
4. *Points* (``find_points``; :func:`select_points`): N = min(int(sum of that map), 128), 1 when the
   sum is in (0, 1), none when it is 0; the top N cells (``torch.topk``), ordered by column then row;
   each at pixel ``trunc(cell * 1024 / 37)`` (the cell's top-left corner; SAM's prompt encoder adds 0.5).
5. *SAM* (``generate_sam_masks``; :func:`sam_point_masks`): every point alone (label 1),
   ``multimask_output=False``, 64 prompts per decoder batch: one mask per point.
6. *Graph and clusters* (``mask_cluster``; :mod:`~vision.engines.ipseg.gfsam_graph`): the masks resized
   to the grid (nearest); A[i, j] = 1 when mask i covers point j's cell; clusters = the weakly connected
   components of A (``scipy.sparse.csgraph``).
7. *Positive gating* (``cluster_classification``): the positive region P = (mean+)^2 > mean- x
   (max(mean+) + min(mean+)) / 2; in each cluster the masks (bilinear to the grid, soft) are ranked by
   their average of (mean+)^2 - mean- x that half-range (``torch.argsort``, descending) and grown in that
   order: a mask is kept when its part outside the grown region covers more P than not-P. The cluster's
   score is that last difference, of the last mask visited.
8. *Overshooting gating* (``point_consistency_dis``): for each cluster, the target's similarity to its
   own cells weighted by the cluster's union mask (the mean map of step 2, target against itself);
   for each point and cluster, that map at the point over the distance to the cluster's nearest point
   (a distance 0 counts as 1); a point is consistent when its own cluster scores highest; a cluster
   whose points are mostly inconsistent loses all of them. State 1: consistent and kept by step 7;
   2: one of the two; 0: neither.
9. *Union* (``triplet_selection_b``): the union of the masks of the state-1 points; when that is empty,
   the mask of the point with the highest cluster score among the state-2 points (every other score set
   to 0; the first point on ties). The mask is scored at 1024x1024 against the stretched ground truth.

**Where the code goes beyond or departs from what the paper states** (all kept in reference mode):
the per-channel rescaling of step 1 (a normalisation over tokens, not over channels); the 128-point cap,
the 64-prompt batches and the epsilons of steps 2-4 (its README calls the method
"External-Hyperparameter-Free"); the strongly connected components ``mask_cluster`` computes and never
uses; the cluster union and its scores computed and overwritten in ``cluster_classification``; a cluster
score that is the residual of the cluster's lowest-ranked mask rather than a score of the cluster; the
probability map of step 9 computed and not returned; the "at least one mask" fallback of step 9, which
the abstract's gating does not mention; ``set_reference`` marking a 14x14-pixel centre square when every
prompt mask is empty (the engine refuses an empty prompt region instead, naming the field).
``outputs/`` logs print an older script's (Matcher's) argument list, which ``main_eval.py`` no longer
has; their COCO-20i one-shot folds (56.62, 61.44, 59.63, 57.12) average the paper's 58.7.
``scripts/coco_5shot.sh`` runs ``main_cus.py``, which the repository does not contain.

**Reference mode** (``reference=True``, the ``gfsam`` preset) reproduces the code above on the project's
inputs. **Our default** (``reference=False``) changes, each with its reason:

* [f] SAM sees the image as ``SamPredictor`` resizes it (long side 1024, aspect kept), not stretched to a
  square; features come from IPSeg's extractor (:mod:`~vision.engines.ipseg.features`: letterboxed,
  aspect kept, cut to the image). Stretching distorts shapes.
* [g] Points sit at cell centres, not at the top-left corners: the corner is on the border with three
  other cells, the centre is where the token looks.
* [h] The prompt region on the grid is the share of each cell the mask covers (area average), not
  bilinear samples at ``align_corners=True`` positions, so that a part thinner than a cell is not lost
  between two samples.
* [i] Ties (the top-N cells, the ranking of equal masks) are broken by position (stable sorts), the same
  on every device; the reference's order is ``torch.topk`` / ``torch.argsort``'s CPU order.

(Letters: :attr:`~vision.engines.ipseg.modes.ProductMode.gfsam_reference` switches them together.)
In both modes the mask comes back at the image's size (the reference scores its 1024 square), and a
presence score is added (the mean of the positive mean map over the final mask: the reference's
``prob_masks`` value), with an optional ``presence_threshold`` below which the concept is "absent"; the
reference's "at least one mask" fallback is kept.

Both modes keep the per-channel rescaling of step 1 (the reference's numbers rest on it), the 128-point
cap (``max_points``), one-point prompts and the gating. ``features="sam"`` (SAM's own embedding of the
frame instead of DINOv2's tokens, so that ``sam_t`` alone runs GF-SAM; the ``gfsam_fast`` preset) is ours:
the reference has DINOv2 only; in reference mode it is SAM's embedding of the reference's square.
The graph's per-cluster similarity maps are computed one cluster at a time in reference mode (the
reference's arithmetic) and by one matrix product otherwise (the same values to float rounding).

Where each stage lives: steps 1-4 :mod:`~vision.engines.ipseg.gfsam_align`, inputs and frames
:mod:`~vision.engines.ipseg.gfsam_inputs`, step 5 and the whole :func:`gfsam` here, steps 6-9
:mod:`~vision.engines.ipseg.gfsam_graph`, the engine's side :mod:`~vision.engines.ipseg.gfsam_run`, the
point graph of a result :mod:`~vision.engines.ipseg.gfsam_result`. Equality with the reference, stage by
stage: ``tests/test_gfsam_reference.py`` (fixtures and how they were made: ``tests/fixtures/gfsam/``).
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vision.common import stage
from vision.engines.ipseg.gfsam_align import (
    MAX_POINTS,
    AlignmentMaps,
    PointPrompts,
    Shot,
    alignment_maps,
    cells_to_frame,
    point_map,
    select_points,
)
from vision.engines.ipseg.gfsam_graph import GraphOutput, fuse_point_masks

SAM_BATCH = 64  # prompts per SAM decoder call in the reference


@dataclass
class GFSAMOutput:
    """What GF-SAM found for one concept in one target (masks in the SAM frame's pixels).

    ``mask``: bool [h, w] (all False when there is no point); ``score``: mean of the positive mean map over
    ``mask`` (0 without a mask); ``points``: float32 [n, 2] (x, y) frame pixels of the point prompts;
    ``graph``: clusters and gating states per point (:class:`~vision.engines.ipseg.gfsam_graph.GraphOutput`);
    ``sam_iou``: float32 [n], SAM's predicted IoU of each point's mask.
    """

    mask: np.ndarray
    score: float
    maps: AlignmentMaps
    prompts: PointPrompts
    points: np.ndarray
    graph: GraphOutput
    sam_iou: np.ndarray


# ------------------------------------------------------------------------------------------ 5. SAM
def sam_point_masks(predictor: Any, points: np.ndarray, batch: int = SAM_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 5, the one place GF-SAM calls SAM: one mask per point, each point alone with label 1,
    ``multimask_output=False``, ``batch`` prompts per decoder call.

    ``predictor``: a ``SamPredictor`` (or an object with its ``predict_torch`` and ``transform``) whose
    image, the frame, is set; ``points`` float32 [n, 2] (x, y) frame pixels. Returns (masks bool [n, h, w],
    SAM's predicted IoU of each, float32 [n])."""
    h, w = predictor.original_size
    if len(points) == 0:
        return torch.zeros((0, h, w), dtype=torch.bool), torch.zeros(0)
    device = predictor.device
    coords = predictor.transform.apply_coords(np.asarray(points, dtype=np.float32), (h, w))
    masks, ious = [], []
    for start in range(0, len(coords), batch):
        chunk = torch.as_tensor(coords[start : start + batch], dtype=torch.float32, device=device)
        labels = torch.ones((len(chunk), 1), dtype=torch.int, device=device)
        with torch.no_grad():
            out, iou, _ = predictor.predict_torch(point_coords=chunk[:, None, :], point_labels=labels,
                                                  multimask_output=False)[:3]
        masks.append(out[:, 0].cpu())
        ious.append(iou[:, 0].float().cpu())
    return torch.cat(masks), torch.cat(ious)


# ------------------------------------------------------------------------------------- the pipeline
def presence_score(mask: torch.Tensor, positive_mean: torch.Tensor) -> float:
    """Mean of the positive mean map [g, g], resized (bilinear) to the mask's [h, w], over the mask's
    pixels; 0 for an empty mask. The reference computes this as ``prob_masks`` and does not use it."""
    if not mask.any():
        return 0.0
    upsampled = F.interpolate(positive_mean[None, None], tuple(mask.shape), mode="bilinear", align_corners=False)
    return float(upsampled[0, 0][mask].mean())


def gfsam(target: torch.Tensor, shots: Sequence[Shot], predictor: Any, reference: bool = False,
          max_points: int = MAX_POINTS, batch: int = SAM_BATCH,
          timings: MutableMapping[str, float] | None = None) -> GFSAMOutput:
    """GF-SAM for one concept in one target, steps 2-9 of the module docstring.

    ``target``: the target's tokens [N, C] (row-major g x g grid spanning the frame, rescaled by
    :func:`normalise_over_cells`); ``shots``: the concept's prompt images (k-shot: maps averaged);
    ``predictor``: SAM with the target's frame set (masks come back in the frame's pixels). ``timings``
    gets seconds added under "alignment" (steps 2-4), "sam_decode" (5) and "graph" (6-9)."""
    timings = {} if timings is None else timings
    with stage(timings, "alignment"):
        maps = alignment_maps(target, shots)
        prompts = select_points(point_map(maps), max_points, reference)
    grid = maps.positive_mean.shape[-1]
    points = cells_to_frame(prompts.cells, tuple(predictor.original_size), grid, reference)
    with stage(timings, "sam_decode", predictor.device):
        masks, ious = sam_point_masks(predictor, points, batch)
    with stage(timings, "graph"):
        graph = fuse_point_masks(masks, prompts.cells, target, maps, reference)
        score = presence_score(graph.mask, maps.positive_mean)
    return GFSAMOutput(graph.mask.numpy(), score, maps, prompts, points, graph, ious.numpy())
