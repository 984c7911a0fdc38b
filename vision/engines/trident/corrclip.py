"""CorrCLIP (ICCV 2025): CLIP's last-block patch correlations rebuilt from region masks and DINO.

The stages, as the paper describes them (arXiv 2411.10086) and as the reference code
(zdk258/CorrCLIP, ``CorrCLIPv1/``: ``corrclip_segmentor.py`` and its modified
``open_clip/transformer.py`` ``VisionTransformer.forward``) computes them, each one function here:

0. Region masks (:mod:`~vision.engines.trident.regions`): a mask generator (SAM 2's automatic
   generator, Mask2Former, ...) gives one id map of the original image, 0 = no mask.
1. Sliding windows (:func:`slide_logits`, reference ``forward_slide``): the image resized so its short
   side is 336 (448 for Cityscapes and ADE20K) is cut into ``window`` crops every ``stride`` pixels
   (mmseg's grid); a crop smaller than the window is zero-padded (centred) to a multiple of 56, its ids
   with 10000. Each window's logits are upsampled to the crop, the overlaps averaged, and the whole map
   resized to the original image.
2. Value reconstruction (:func:`dino_correlation_features`): the correlation values come from DINO
   (ViT-B/8), not CLIP: q + k of DINO's last block (class token dropped), L2-normalised; S = F F^T.
3. Mask merging (:func:`merge_regions`): the ids are taken to DINO's grid (nearest); the regions'
   mean DINO features are clustered (DBSCAN, eps 0.2, one sample, distance max(S_r) - S_r) and the
   regions of one cluster become one region. The paper counts this as part of scope reconstruction.
4. Scope reconstruction (:func:`scope_mask`, :func:`reconstructed_attention`): a patch may attend only
   to patches of its own region; patches of the unsegmented area (and any patch, towards them) attend
   where S is above its mean. A = softmax(4 S) over the allowed pairs.
5. Main and spatial branches (:func:`clip_branches`, :func:`fuse_branches`): CLIP's last block
   becomes A V (values from CLIP's own projection, bilinearly resized to DINO's grid; no residual, no
   MLP), once on the tokens entering the last block (main) and once on the mean of intermediate block
   outputs (spatial: 5 of ViT-B's 12 blocks, 12 of 24, 28 of 32).
6. Semantic branch (:func:`mask_class_token_mask`, :func:`clip_branches`): one "mask class token" per
   region (a copy of the class token) runs through every block attending only to the class token and
   its region's patches; after the last block its output is every patch of its region's feature.
   Final features: LN_post(main) + 1.0 LN_post(spatial) + 0.5 LN_post(semantic), projected.
7. Logits (:func:`window_logits`): cosine with the text embeddings (80 ImageNet templates), softmax at
   scale 40, a class's probability the max over its names (VOC21/COCO-Object's background words), pixels
   whose best probability is under ``prob_thd`` become background.
8. Map correction (:func:`map_correction`): every region of the original id map takes the label most
   of its pixels have.

Where the code differs from the paper (the reference mode follows the code). Only the paper's abstract
and third-party summaries of its method were reachable here, so this list holds what those and the code
itself state: (i) the summaries describe the unsegmented area's patches as interacting only among
themselves; the code lets them interact with any patch where S exceeds its mean, and its comment says
so (its "method 1", better in their experiments than "method 2", the within-area rule). (ii) The
paper's results use pre-generated SAM 2 masks (32 points per side: its README's "SAM2_32" row, 51.0
mIoU, the abstract's number); the code's on-line SAM 2 setting is 8 points per side, IoU and stability
thresholds 0.4, one mask per point. The region-mean clustering, the value resize of step 5, the
per-depth spatial block counts, the 1.0 / 0.5 branch weights, DBSCAN's eps 0.2 and the temperature 4
are the code's numbers; we could not check them against the paper's text.

Reference mode (``reference=True``) reproduces the code; the project's mode changes these behaviours
(C1-C4), each for the reason given:

- C1 The unsegmented area. Reference: in each window the *smallest id present* is the unsegmented
  area, and in map correction the smallest id of the image is skipped, even when it is a real region
  (a window, or an image, fully covered by masks, as Mask2Former's panoptic maps usually are): that
  region loses its scope and its correction. Product: id 0 (no mask) only. Why: the minimum is a
  stand-in for 0 that is wrong whenever 0 is absent.
- C2 Padding ids. Reference: padded pixels get id 10000, which the first merged cluster also gets
  (clusters are 10000 + label), so real patches of that cluster attend to padding; the padding also
  takes part in the clustering. Product: padding is its own region (-1), never merged; merged regions
  take their smallest member's id. Why: padding is not image content.
- C3 Padding size. Reference: a crop smaller than the window is padded to a multiple of 56 (the
  common multiple of patches 8 and 14); with CLIP's patch 16 that can cut 8 pixels from CLIP's grid.
  Product: to a multiple of both models' patches. Why: CLIP and DINO then see the same area.
- C4 Positional embeddings (CLIP and DINO): reference by scale factor ``(n + 0.1) / n`` (open_clip's
  and DINO's convention), product by target size; as Trident's R2.

Not switched (both modes): (a) CLIPs of fewer than 5 blocks (only the tiny test models) have no
intermediate blocks in the spatial range, where the reference fails; both modes then use the tokens
entering the last block. (b) Ties in map correction go to the smallest label (``torch.mode`` on the
CPU, what the reference calls; its CUDA tie rule is undocumented). (c) Precision: the reference runs
CLIP and DINO in fp16 throughout; here the hub's dtype (fp16 on CUDA, fp32 on CPU) runs the models and
the correlations, attention and logits are fp32 (as Trident's (c)). (d) Clustering: DBSCAN with one
sample is the connected components of the eps-graph; scipy's connected components give the same
clusters in the same order, without scikit-learn.

Shapes: N = rows*cols DINO tokens of a window, T = CLIP tokens, R regions, C/D/E channel widths,
Q text queries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vision.engines.trident import splice

ALPHA = 1.0  # weight of the spatial branch
BETA = 0.5  # weight of the semantic branch
TAU = 4.0  # temperature of the reconstructed attention
MERGE_EPS = 0.2  # DBSCAN's eps on 1 - cosine of region features (as max(S) - S)
SPATIAL_BLOCKS = {12: 5, 24: 12, 32: 28}  # CLIP depth -> intermediate blocks averaged by the spatial branch
UNSEGMENTED = 0  # region id of pixels no mask covers
PAD = -1  # product mode: region id of window padding
REFERENCE_PAD = 10000  # reference: region id of window padding and base of merged cluster ids
REFERENCE_PAD_MULTIPLE = 56


@dataclass(frozen=True)
class RegionRules:
    """How a mode reads region ids (C1-C3 of the module docstring): ``reference`` selects the code's rules."""

    reference: bool

    @property
    def pad_id(self) -> int:
        return REFERENCE_PAD if self.reference else PAD

    def unsegmented(self, ids: torch.Tensor) -> int | None:
        """The id that stands for "no mask" among ``ids`` (any shape), or None when it is absent."""
        if self.reference:
            return int(ids.min())
        return UNSEGMENTED if bool((ids == UNSEGMENTED).any()) else None

    def pad_multiple(self, clip_patch: int, dino_patch: int) -> int:
        return REFERENCE_PAD_MULTIPLE if self.reference else math.lcm(clip_patch, dino_patch)


REFERENCE_RULES = RegionRules(reference=True)
PRODUCT_RULES = RegionRules(reference=False)


# ------------------------------------------------------------------------------------------- value (DINO)


def dino_correlation_features(vfm: Any, pixels: torch.Tensor, resize_pos: splice.PosResize = splice.resize_pos_embed
                              ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Value reconstruction's features: q + k of the last block of a transformers ``ViTModel`` (DINO),
    class token dropped, L2-normalised (reference: ``forward_feature``'s hook on ``blocks[-1].attn.qkv``).

    ``pixels``: [B, 3, H, W] ImageNet-normalised. Returns [B, rows*cols, C] float32 and ``(rows, cols)``.
    """
    x, grid = splice.vfm_embed(vfm, pixels, resize_pos)
    layers = vfm.encoder.layer
    for layer in layers[:-1]:
        out = layer(x)
        x = out[0] if isinstance(out, tuple) else out  # transformers < 4.54 returns a tuple
    last = layers[-1]
    h = last.layernorm_before(x)
    attention = last.attention.attention
    qk = attention.query(h) + attention.key(h)
    return F.normalize(qk[:, 1:].float(), dim=-1), grid


def resize_ids(ids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Region ids [h, w] (integer) resized by nearest neighbour to ``size``: [*size] int64."""
    if tuple(ids.shape) == tuple(size):
        return ids.long()
    return F.interpolate(ids[None, None].double(), size=size, mode="nearest")[0, 0].long()


# -------------------------------------------------------------------------------------------- scope


def merge_regions(ids: torch.Tensor, features: torch.Tensor, rules: RegionRules, eps: float = MERGE_EPS
                  ) -> torch.Tensor:
    """Mask merging: regions whose mean DINO features are close become one region.

    ``ids``: [rows, cols] region ids on DINO's grid; ``features``: [rows*cols, C] unit DINO features.
    Each candidate region's mean feature is L2-normalised; with S their cosine matrix, regions are
    linked where max(S) - S <= ``eps`` and each connected group (DBSCAN with one sample) becomes one
    region. Reference: candidates are all ids but the smallest, only when there are more than two ids;
    a group's id is 10000 + its label. Product: candidates are the real regions (not 0, not padding);
    a group keeps its smallest id. Returns [rows, cols] int64.
    """
    from scipy.sparse.csgraph import connected_components

    flat = ids.reshape(-1)
    values = torch.unique(flat)
    if rules.reference:
        candidates = values[1:] if len(values) > 2 else values[:0]
    else:
        candidates = values[values > UNSEGMENTED]
    if len(candidates) < 2:
        return ids.long()
    members = flat[None, :] == candidates[:, None]  # [R, N]
    means = F.normalize(torch.stack([features[m].mean(dim=0) for m in members]), dim=1)
    similarity = means @ means.T
    linked = ((similarity.max() - similarity) <= eps).cpu().numpy()
    _, group = connected_components(linked, directed=False)
    group = torch.as_tensor(group, device=ids.device)
    if rules.reference:
        new_ids = REFERENCE_PAD + group
    else:
        first = torch.full((int(group.max()) + 1,), torch.iinfo(torch.int64).max, device=ids.device)
        new_ids = first.scatter_reduce(0, group, candidates.long(), reduce="amin")[group]
    merged = flat.long().clone()
    for region, new_id in zip(members, new_ids, strict=True):
        merged[region] = new_id
    return merged.view(ids.shape)


def scope_mask(ids: torch.Tensor, similarity: torch.Tensor, unsegmented: int | None) -> torch.Tensor:
    """Scope reconstruction: which patch pairs may correlate, [N, N] bool (row attends to column).

    ``ids``: [N] region id per patch; ``similarity``: [N, N]. Pairs within one region are allowed,
    except in the ``unsegmented`` area, where a pair is allowed when either patch is unsegmented and
    its similarity exceeds the mean of ``similarity`` (the reference's "method 1").
    """
    same = ids[:, None] == ids[None, :]
    if unsegmented is None:
        return same
    loose = ids == unsegmented
    either = loose[:, None] | loose[None, :]
    return (same & ~loose[:, None]) | (either & (similarity > similarity.mean()))


def reconstructed_attention(features: torch.Tensor, ids: torch.Tensor, unsegmented: int | None,
                            tau: float = TAU) -> torch.Tensor:
    """A = softmax(tau * S) over the pairs :func:`scope_mask` allows, S = F F^T of the unit DINO
    ``features`` [N, C]; ``ids``: [N]. Returns [N, N] float32 (rows sum to 1)."""
    similarity = features.float() @ features.float().T
    allowed = scope_mask(ids, similarity, unsegmented)
    return (tau * similarity.masked_fill(~allowed, float("-inf"))).softmax(dim=-1)


# -------------------------------------------------------------------------------------------- branches


def spatial_block_indices(depth: int) -> list[int]:
    """Indices (0-based, among the blocks before the last) whose outputs the spatial branch averages:
    the ``SPATIAL_BLOCKS[depth]`` (else depth - 4) blocks ending two before the last. Fewer than 5 blocks
    (tiny test models; the reference fails there) leave none: the block entering the last is used."""
    count = SPATIAL_BLOCKS.get(depth, depth - 4)
    indices = list(range(max(0, depth - 2 - count), depth - 2))
    return indices or [depth - 2]


def mask_class_token_mask(token_regions: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The semantic branch's additive attention mask over [R mask class tokens, class token, T patches].

    ``token_regions``: [R, T] bool, region r's patches on CLIP's grid. Original tokens attend to one
    another and never to the mask class tokens; mask class token r attends to the class token and to
    region r's patches only. Returns [R+1+T, R+1+T] with 0 (attend) and -inf.
    """
    r, t = token_regions.shape
    allowed = torch.zeros((r + 1 + t, r + 1 + t), dtype=torch.bool, device=token_regions.device)
    allowed[r:, r:] = True
    allowed[:r, r] = True
    allowed[:r, r + 1:] = token_regions
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


def clip_branches(visual: Any, x: torch.Tensor, token_regions: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run CLIP's blocks with one mask class token per region prepended (the semantic branch).

    ``x``: [1, 1+T, D] tokens from :func:`~vision.engines.trident.splice.clip_embed`; ``token_regions``:
    [R, T] bool. Returns the tokens entering the last block [1, 1+T, D] (main branch), the mean of the
    outputs of :func:`spatial_block_indices` [1, 1+T, D] (spatial branch) and the mask class tokens
    after the full last block [R, D] (semantic branch).
    """
    transformer = visual.transformer
    blocks = transformer.resblocks
    r = token_regions.shape[0]
    mask = mask_class_token_mask(token_regions, x.dtype)
    tokens = torch.cat([x[:, :1].expand(-1, r, -1), x], dim=1)
    keep = set(spatial_block_indices(len(blocks)))
    spatial = []
    for index, block in enumerate(blocks[:-1]):
        tokens = splice.clip_block(transformer, block, tokens, mask)
        if index in keep:
            spatial.append(tokens[:, r:])
    semantic = splice.clip_block(transformer, blocks[-1], tokens, mask)[0, :r]
    return tokens[:, r:], torch.stack(spatial).mean(dim=0), semantic


def fuse_branches(visual: Any, attention: torch.Tensor, main: torch.Tensor, spatial: torch.Tensor,
                  semantic: torch.Tensor, token_regions: torch.Tensor, clip_grid: tuple[int, int],
                  dino_grid: tuple[int, int], alpha: float = ALPHA, beta: float = BETA) -> torch.Tensor:
    """The window's patch features [N, E] from the three branches.

    Main and spatial: CLIP's last block as ``attention`` [N, N] times its values (splice's
    :func:`~vision.engines.trident.splice.proxy_block`) on ``main`` / ``spatial`` [1, 1+T, D].
    Semantic: every patch takes its region's mask class token (``semantic`` [R, D]; ``token_regions``
    [R, T] resized to DINO's grid by nearest neighbour). Each is LN_post-ed, then main + alpha spatial +
    beta semantic is projected.
    """
    block = visual.transformer.resblocks[-1]
    both = torch.cat([main, spatial])
    main_spatial = splice.proxy_block(block, both, clip_grid, attention.expand(2, -1, -1), dino_grid)
    regions = token_regions.view(-1, 1, *clip_grid).to(semantic.dtype)
    spread = F.interpolate(regions, size=dino_grid, mode="nearest").flatten(1)  # [R, N]
    semantic_feats = spread.T @ semantic
    ln = visual.ln_post
    dtype = visual.proj.dtype
    fused = (ln(main_spatial[0].to(dtype)) + alpha * ln(main_spatial[1].to(dtype))
             + beta * ln(semantic_feats.to(dtype)))
    return fused @ visual.proj


# -------------------------------------------------------------------------------------------- windows


@dataclass
class WindowOutput:
    """One window's stages: DINO's unit q + k features [N, C], the merged ids on DINO's grid [rows, cols],
    the attention [N, N], the fused features [N, E] and the logits [Q, h, w] over the (padded) crop."""

    dino_features: torch.Tensor
    merged_ids: torch.Tensor
    attention: torch.Tensor
    features: torch.Tensor
    logits: torch.Tensor


def window_logits(visual: Any, vfm: Any, pixels: torch.Tensor, ids: torch.Tensor, text: torch.Tensor,
                  rules: RegionRules, resize_pos: splice.PosResize) -> WindowOutput:
    """CorrCLIP on one (padded) window: ``pixels`` [1, 3, h, w] in 0..1, ``ids`` [h, w] region ids,
    ``text`` [Q, E] unit text embeddings. Reference: ``forward_feature`` and ``VisionTransformer.forward``."""
    dino_in = splice.normalise(pixels, splice.IMAGENET_MEAN, splice.IMAGENET_STD)
    features, dino_grid = dino_correlation_features(vfm, dino_in, resize_pos)
    merged = merge_regions(resize_ids(ids, dino_grid), features[0], rules)
    flat = merged.reshape(-1)
    attention = reconstructed_attention(features[0], flat, rules.unsegmented(flat))
    clip_in = splice.normalise(pixels, splice.CLIP_MEAN, splice.CLIP_STD)
    x, clip_grid = splice.clip_embed(visual, clip_in, resize_pos)
    token_ids = resize_ids(merged, clip_grid).reshape(-1)
    token_regions = token_ids[None, :] == torch.unique(token_ids)[:, None]
    main, spatial, semantic = clip_branches(visual, x, token_regions)
    feats = fuse_branches(visual, attention, main, spatial, semantic, token_regions, clip_grid, dino_grid)
    scores = F.normalize(feats.float(), dim=-1) @ text.float().T  # [N, Q]
    logits = scores.T.reshape(-1, *dino_grid)[None]
    logits = F.interpolate(logits, size=tuple(pixels.shape[-2:]), mode="bilinear", align_corners=False)[0]
    return WindowOutput(features[0], merged, attention, feats, logits)


def image_logits(visual: Any, vfm: Any, rgb: np.ndarray, ids: np.ndarray, text: torch.Tensor, short_side: int,
                 max_long_side: int, window: int, stride: int, rules: RegionRules, resize_pos: splice.PosResize,
                 on_window: Callable[[int, int, WindowOutput], Any] | None = None) -> torch.Tensor:
    """CorrCLIP's logits [Q, H, W] of an image ``rgb`` [H, W, 3] uint8 with its region ``ids`` [H, W].

    The image is resized (bilinear, uint8) so its short side is ``short_side`` and its long side at most
    ``max_long_side`` (mmseg's ``Resize(keep_ratio=True)``), the ids by nearest neighbour; the sliding
    windows' logits (:func:`slide_logits`) are resized back to the image (bilinear).
    """
    import cv2

    height, width = rgb.shape[:2]
    size = splice.keep_ratio_shape(height, width, short_side, max_long_side)
    resized = rgb if size == (height, width) else cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    device = text.device
    pixels = torch.from_numpy(np.ascontiguousarray(resized)).to(device).permute(2, 0, 1)[None].float() / 255.0
    slide = slide_logits(visual, vfm, pixels, region_masks_at(ids, size, device), text, window, stride, rules,
                         resize_pos, on_window)
    return F.interpolate(slide[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def centred_padding(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding that brings each side to a multiple, split evenly (the extra
    pixel right/bottom): the reference's ``compute_padsize``."""
    pad_w, pad_h = -width % multiple, -height % multiple
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def pad_window(pixels: torch.Tensor, ids: torch.Tensor, padding: tuple[int, int, int, int], pad_id: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a window ``pixels`` [1, 3, h, w] (0..1) with CLIP's mean colour (zero after CLIP's
    normalisation, as the reference pads its normalised tensor) and its ``ids`` [h, w] with ``pad_id``."""
    if not any(padding):
        return pixels, ids
    mean = torch.tensor(splice.CLIP_MEAN, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    padded = F.pad(pixels - mean, padding) + mean
    return padded, F.pad(ids, padding, value=pad_id)


def slide_logits(visual: Any, vfm: Any, pixels: torch.Tensor, ids: torch.Tensor, text: torch.Tensor,
                 window: int, stride: int, rules: RegionRules, resize_pos: splice.PosResize,
                 on_window: Callable[[int, int, WindowOutput], Any] | None = None) -> torch.Tensor:
    """Sliding-window CorrCLIP (reference ``forward_slide``): logits [Q, H, W] of ``pixels`` [1, 3, H, W]
    (0..1) with region ``ids`` [H, W] (already at the pixels' size), averaged where windows overlap.
    ``on_window(index, count, output)`` is called after each window (progress, tests)."""
    height, width = pixels.shape[-2:]
    clip_patch = int(visual.conv1.kernel_size[0])
    dino_patch = int(vfm.embeddings.patch_embeddings.projection.kernel_size[0])
    multiple = rules.pad_multiple(clip_patch, dino_patch)
    boxes = splice.window_boxes(height, width, window, stride)
    total = pixels.new_zeros((text.shape[0], height, width), dtype=torch.float32)
    count = pixels.new_zeros((1, height, width), dtype=torch.float32)
    for index, (y1, x1, y2, x2) in enumerate(boxes):
        padding = centred_padding(y2 - y1, x2 - x1, multiple)
        crop, crop_ids = pad_window(pixels[:, :, y1:y2, x1:x2], ids[y1:y2, x1:x2], padding, rules.pad_id)
        out = window_logits(visual, vfm, crop, crop_ids, text, rules, resize_pos)
        left, top = padding[0], padding[2]
        total[:, y1:y2, x1:x2] += out.logits[:, top:top + y2 - y1, left:left + x2 - x1]
        count[:, y1:y2, x1:x2] += 1
        if on_window is not None:
            on_window(index, len(boxes), out)
    return total / count


# -------------------------------------------------------------------------------------------- correction


def map_correction(labels: torch.Tensor, ids: torch.Tensor, skip: int | None) -> torch.Tensor:
    """Every region of ``ids`` [H, W] (except id ``skip``, the unsegmented area) takes the most frequent
    label of ``labels`` [H, W] inside it, ties to the smallest label (reference: ``postprocess_result``'s
    loop of ``torch.mode``). Returns [H, W] int64."""
    labels = labels.long()
    values, region = torch.unique(ids.reshape(-1), return_inverse=True)
    k = int(labels.max()) + 1
    votes = torch.bincount(region * k + labels.reshape(-1), minlength=len(values) * k).view(len(values), k)
    corrected = votes.argmax(dim=1)[region].view(labels.shape)
    if skip is None:
        return corrected
    return torch.where(ids == skip, labels, corrected)


def classify(logits: torch.Tensor, classes: Any, logit_scale: float, prob_thd: float, ids: torch.Tensor,
             rules: RegionRules) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits [Q, H, W] of ``classes.unique_queries`` at the original size -> (probabilities [K, H, W],
    labels before map correction [H, W], labels after it [H, W]); reference ``postprocess_result``.

    Softmax at ``logit_scale`` with a class's probability the max over its names
    (:func:`~vision.engines.trident.classes.class_probabilities`), argmax, pixels whose best probability
    is under ``prob_thd`` become ``classes.background``, then :func:`map_correction` over the region
    ``ids`` [H, W] of the original image (the unsegmented id by ``rules``).
    """
    from vision.engines.trident.classes import class_probabilities

    probs = class_probabilities(logits, classes, logit_scale)
    best, coarse = probs.max(dim=0)
    if prob_thd > 0:
        coarse[best < prob_thd] = classes.background
    return probs, coarse, map_correction(coarse, ids, rules.unsegmented(ids))


def region_masks_at(ids: np.ndarray | torch.Tensor, size: Sequence[int], device: Any = "cpu") -> torch.Tensor:
    """An id map of the original image [H0, W0] at the resized image's ``size`` (nearest neighbour, as
    the reference's ``predict``): [*size] int64 on ``device``."""
    return resize_ids(torch.as_tensor(np.asarray(ids), device=device), (int(size[0]), int(size[1])))
