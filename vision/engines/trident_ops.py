"""The pure pieces of Trident (see :mod:`vision.engines.trident` and ``specs/trident.md``).

Everything here is a function of tensors and model modules; nothing loads models or keeps state, so
each piece is tested on its own against a direct transcription of the spec's formulas.

Shapes: B windows, N tokens of a window, C channels, h heads. Token grids are ``(rows, cols)``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Box = tuple[int, int, int, int]  # y1, x1, y2, x2 (end exclusive)


# ------------------------------------------------------------------------------------- splice: geometry


def resized_shape(height: int, width: int, short_side: int, patch: int, window: int = 336,
                  max_long_side: int = 2048) -> tuple[int, int]:
    """Size of the image CLIP and DINO see: the short side scaled to ``short_side`` (the long side to at
    most ``max_long_side``, mmseg's ``Resize(scale=(2048, S), keep_ratio=True)``), then each side rounded
    up to a multiple of ``patch`` and to at least ``window``."""
    if height < 1 or width < 1:
        raise ValueError(f"image of size {width}x{height} has no pixels")
    scale = min(short_side / min(height, width), max_long_side / max(height, width))
    h, w = int(height * scale + 0.5), int(width * scale + 0.5)

    def up(n: int) -> int:
        return max(window, math.ceil(max(n, 1) / patch) * patch)

    return up(h), up(w)


def window_boxes(height: int, width: int, window: int, stride: int) -> list[Box]:
    """mmseg's sliding-window grid: ``window`` x ``window`` crops every ``stride`` pixels, the last row
    and column flush with the border (row-major order)."""
    rows = max(height - window + stride - 1, 0) // stride + 1
    cols = max(width - window + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + window, height), min(c * stride + window, width)
            boxes.append((max(y2 - window, 0), max(x2 - window, 0), y2, x2))
    return boxes


def normalise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[B, 3, H, W] in 0..1 -> (x - mean) / std."""
    m = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - m) / s


def crop_windows(pixels: torch.Tensor, boxes: Sequence[Box]) -> torch.Tensor:
    """[1, 3, H, W] -> [len(boxes), 3, window, window]."""
    return torch.cat([pixels[:, :, y1:y2, x1:x2] for y1, x1, y2, x2 in boxes])


# ---------------------------------------------------------------------------------- CLIP with proxy attention


def interpolate_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """CLIP's learned positional embedding [1 + n*n, C] resized (bicubic) to a ``grid`` of patches:
    [1 + rows*cols, C]; the class token's embedding is kept as is."""
    n = int(round(math.sqrt(pos.shape[0] - 1)))
    if (n, n) == tuple(grid):
        return pos
    patches = pos[1:].reshape(1, n, n, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([pos[:1], patches])


def clip_trunk(visual: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Run open_clip's ``VisionTransformer`` unchanged up to (not including) its last block.

    ``pixels``: [B, 3, H, W] CLIP-normalised. Returns the tokens [B, 1 + rows*cols, C] (class token
    first) and the patch grid ``(rows, cols)``; positional embeddings are interpolated to the grid.
    """
    x = visual.conv1(pixels.to(visual.conv1.weight.dtype))
    grid = (x.shape[2], x.shape[3])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + interpolate_pos_embed(visual.positional_embedding, grid).to(x.dtype)
    x = visual.patch_dropout(x)
    x = visual.ln_pre(x)
    transformer = visual.transformer
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in transformer.resblocks[:-1]:
        x = block(x)
    if not batch_first:
        x = x.transpose(0, 1)
    return x, grid


def proxy_attention_weights(tokens: torch.Tensor, beta: float = 1.2, gamma: float = 3.0) -> torch.Tensor:
    """Trident's proxy attention from the VFM (DINO) tokens of all windows of one image.

    ``tokens``: [B, N, C]. F = L2-normalised tokens, S = F F^T per window, S' = gamma * (S - beta * m)
    with m the mean of S over ALL windows of the image; entries with S' < 0 are masked (-inf) and each row
    is softmax-normalised. Returns [B, N, N] (float32). A token always attends to itself: a row whose
    own S' is negative (only when m > 1/beta, i.e. nearly constant features) keeps its diagonal instead
    of becoming NaN; otherwise the diagonal (S'_ii = gamma * (1 - beta*m) >= 0) is never masked anyway.
    """
    f = F.normalize(tokens.float(), dim=-1)
    s = f @ f.transpose(1, 2)
    s = gamma * (s - beta * s.mean())
    eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
    s = s.masked_fill((s < 0) & ~eye, float("-inf"))
    return s.softmax(dim=-1)


def proxy_block(block: Any, x: torch.Tensor, clip_grid: tuple[int, int], weights: torch.Tensor,
                vfm_grid: tuple[int, int]) -> torch.Tensor:
    """CLIP's last block replaced by proxy attention (no residual, no MLP).

    ``x``: [B, 1 + rows*cols, C] tokens entering the block; ``weights``: [B, N, N] from
    :func:`proxy_attention_weights` over the VFM grid (N = vfm rows*cols). Values V_h = LN_1(x) W_v,h +
    b_v,h (CLIP's own in_proj, class token dropped) are resized bilinearly to the VFM grid; every head
    uses the same attention, so concat_h(A V_h) = A V. Returns out_proj(A V): [B, N, C].
    """
    attn = block.attn
    width = x.shape[-1]
    h = block.ln_1(x[:, 1:])
    v = F.linear(h, attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
    b = v.shape[0]
    v = v.transpose(1, 2).reshape(b, width, *clip_grid).float()
    if tuple(clip_grid) != tuple(vfm_grid):
        v = F.interpolate(v, size=vfm_grid, mode="bilinear", align_corners=False)
    v = v.flatten(2).transpose(1, 2)  # [B, N, C]
    out = weights.float() @ v
    return attn.out_proj(out.to(attn.out_proj.weight.dtype))


def splice(window_maps: torch.Tensor, boxes: Sequence[Box], size: tuple[int, int]) -> torch.Tensor:
    """Place each window's [C, rows, cols] map at its token box on a [C, *size] grid, averaging where
    windows overlap. ``window_maps``: [B, C, rows, cols]; ``boxes``: token coordinates, one per window."""
    b, c = window_maps.shape[:2]
    total = window_maps.new_zeros((c, *size))
    count = window_maps.new_zeros((1, *size))
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        total[:, y1:y2, x1:x2] += window_maps[i]
        count[:, y1:y2, x1:x2] += 1
    if bool((count == 0).any()):
        raise ValueError("the windows do not cover the grid")
    return total / count


# ------------------------------------------------------------------------------- SAM global aggregation


@dataclass
class SamAttention:
    """The last SAM encoder block's softmax attention [h, N, N] and per-head values [h, N, d] over the
    ``grid`` of valid (unpadded) tokens, queries and keys alike (softmax taken over all 64x64 keys)."""

    attn: torch.Tensor | None = None
    values: torch.Tensor | None = None
    grid: tuple[int, int] = (0, 0)


@contextlib.contextmanager
def capture_sam_attention(image_encoder: Any, grid: tuple[int, int]) -> Iterator[SamAttention]:
    """While active, the last block of segment_anything's ``ImageEncoderViT`` also records its per-head
    attention and values over the top-left ``grid`` of tokens (the unpadded image) into the yielded
    :class:`SamAttention`.

    The block's ``Attention.forward`` is replaced for the duration by the same computation
    (segment_anything's own ``add_decomposed_rel_pos``) that keeps the softmax matrix it computes, so the
    encoder runs once and its output is unchanged. The last block must use global attention (it does in
    every SAM v1 model).
    """
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

    block = image_encoder.blocks[-1]
    if getattr(block, "window_size", 0):
        raise ValueError("the last SAM encoder block uses windowed attention; global attention is needed")
    module = block.attn
    store = SamAttention(grid=tuple(grid))

    def forward(x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        heads = module.num_heads
        qkv = module.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * heads, h * w, -1).unbind(0)
        attn = (q * module.scale) @ k.transpose(-2, -1)
        if module.use_rel_pos:
            attn = add_decomposed_rel_pos(attn, q, module.rel_pos_h, module.rel_pos_w, (h, w), (h, w))
        attn = attn.softmax(dim=-1)
        out = (attn @ v).view(b, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        gh, gw = store.grid
        store.attn = attn.view(b * heads, h, w, h, w)[:, :gh, :gw, :gh, :gw].reshape(b * heads, gh * gw, gh * gw)
        store.values = v.view(b * heads, h, w, -1)[:, :gh, :gw].reshape(b * heads, gh * gw, -1)
        return module.proj(out)

    module.forward = forward
    try:
        yield store
    finally:
        del module.forward  # back to the class's forward


def sam_affinity(attn: torch.Tensor, values: torch.Tensor, cos_fac: float = 1.2, refine_neg_cos: bool = True,
                 cap: float = 0.9) -> torch.Tensor:
    """Trident's SAM affinity A [N, N] from the last block's attention W [h, N, N] and values V [h, N, d].

    C^h_ij = cos(V^h_i, V^h_j); e_i = cos_fac * mean_{h,j} C^h_ij (a negative e_i becomes 0.6 unless
    ``refine_neg_cos``), capped at ``cap``; A = mean_h(W^h * [C^h > e_i]), each row L1-normalised.
    Rows never vanish: C_ii = 1 > e_i, and softmax weights are positive.
    """
    vn = F.normalize(values.float(), dim=-1)
    # mean_j cos(V_i, V_j) = V_i . mean_j(V_j) for unit vectors: the threshold needs no [h, N, N] tensor
    e = cos_fac * torch.einsum("hnd,hd->n", vn, vn.mean(dim=1)) / vn.shape[0]
    if not refine_neg_cos:
        e = torch.where(e < 0, torch.full_like(e, 0.6), e)
    e = e.clamp(max=cap)[:, None]
    a = torch.zeros(attn.shape[1:], dtype=torch.float32, device=attn.device)
    for head in range(attn.shape[0]):  # one [N, N] head at a time bounds the memory
        keep = torch.mm(vn[head], vn[head].T).gt_(e)  # in place: 1.0 where C^h_ij > e_i, else 0.0
        a.addcmul_(attn[head].float(), keep)
    a /= attn.shape[0]
    return a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def crop_resize(grid_map: torch.Tensor, x0: float, x1: float, size: tuple[int, int]) -> torch.Tensor:
    """Columns [x0, x1) (fractions of the width) of a [C, H, W] map, resized bilinearly to ``size``
    (torchvision's ``roi_align``; the whole map with x0=0, x1=1 equals ``F.interpolate``)."""
    from torchvision.ops import roi_align

    c, h, w = grid_map.shape
    box = torch.tensor([[0.0, x0 * w, 0.0, x1 * w, float(h)]], dtype=grid_map.dtype, device=grid_map.device)
    return roi_align(grid_map[None], box, output_size=size, spatial_scale=1.0, sampling_ratio=1, aligned=True)[0]


# ------------------------------------------------------------------------------------ SAM prompt refinement


@dataclass
class Prompts:
    """Prompts of one class at full resolution: points [n, 2] (x, y) and boxes [n, 4] (x1, y1, x2, y2)."""

    points: torch.Tensor
    boxes: torch.Tensor


def component_prompts(mask: np.ndarray, prob: np.ndarray, min_area: int, scale: tuple[float, float]) -> Prompts:
    """One point and one box per 8-connected component of ``mask`` ([h, w] bool, half resolution) with
    at least ``min_area`` pixels: the point is the argmax of ``prob`` ([h, w]) inside the component, the
    box its bounding box (from OpenCV's stats, converted with torchvision). ``scale`` = (sx, sy) maps
    half-resolution pixels to full-resolution ones."""
    from torchvision.ops import box_convert

    count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_area]
    sx, sy = scale
    if not keep:
        return Prompts(torch.zeros(0, 2), torch.zeros(0, 4))
    points = []
    for i in keep:
        flat = int(np.argmax(np.where(components == i, prob, -np.inf)))
        y, x = divmod(flat, mask.shape[1])
        points.append((x * sx, y * sy))
    xywh = torch.as_tensor(stats[keep, :4], dtype=torch.float32)
    boxes = box_convert(xywh, "xywh", "xyxy") * torch.tensor([sx, sy, sx, sy])
    return Prompts(torch.tensor(points, dtype=torch.float32), boxes)


def dense_mask_prompt(prob: torch.Tensor, threshold: float, coeff: float, size: int = 256) -> torch.Tensor:
    """SAM's dense (mask) prompt from a class probability map [H, W]: resized so its long side is
    ``size`` (SAM's ResizeLongestSide rule), zero-padded bottom/right to ``size`` x ``size``, and
    ``coeff * P`` where ``P > threshold``, else 0. Returns [size, size]."""
    h, w = prob.shape
    scale = size / max(h, w)
    nh, nw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    p = F.interpolate(prob[None, None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0, 0]
    p = torch.where(p > threshold, coeff * p, torch.zeros_like(p))
    return F.pad(p, (0, size - nw, 0, size - nh))


@dataclass
class RefineStats:
    prompted: int = 0  # components prompted (all classes)
    kept: int = 0  # masks whose predicted IoU passed
    classes_prompted: int = 0


def sam_refine(predictor: Any, probs: torch.Tensor, coarse: torch.Tensor, coarse_thresh: float,
               min_area: int = 225, mask_coeff: float = 0.005,
               iou_thresh: float = 0.8) -> tuple[torch.Tensor, RefineStats]:
    """Refine a coarse label map [H, W] with SAM prompts; ``probs`` [K, H, W] are the class probabilities.

    ``predictor`` is a ``segment_anything.SamPredictor`` whose image (of size H x W) is already set.
    At half resolution, pixels with max P < ``coarse_thresh`` are uncertain and never prompted. For each
    class, each 8-connected component (>= ``min_area`` half-resolution pixels) of its certain label mask
    gives a point (argmax of P_c) and its box; the class's dense prompt is :func:`dense_mask_prompt`. One
    batched ``predict_torch`` per class (``multimask_output=False``); masks with predicted IoU >
    ``iou_thresh`` are kept. R_c = max over kept masks of sigmoid(logit) * P_c inside the mask; covered
    pixels take argmax_c R_c, the others keep their coarse label.
    """
    k, h, w = probs.shape
    device = probs.device
    h2, w2 = max(1, h // 2), max(1, w // 2)
    half = F.interpolate(probs[None].float(), size=(h2, w2), mode="bilinear", align_corners=False)[0]
    coarse_half = F.interpolate(coarse[None, None].float(), size=(h2, w2), mode="nearest")[0, 0].long()
    certain = half.max(dim=0).values >= coarse_thresh
    scale = (w / w2, h / h2)
    threshold = getattr(getattr(predictor, "model", None), "mask_threshold", 0.0)
    best = torch.zeros((h, w), dtype=torch.float32, device=device)
    best_class = torch.zeros((h, w), dtype=torch.long, device=device)
    covered = torch.zeros((h, w), dtype=torch.bool, device=device)
    stats = RefineStats()
    half_np = half.cpu().numpy()
    labels_np = ((coarse_half == torch.arange(k, device=device)[:, None, None]) & certain).cpu().numpy()
    for c in range(k):
        if not labels_np[c].any():
            continue
        prompts = component_prompts(labels_np[c], half_np[c], min_area, scale)
        n = prompts.points.shape[0]
        if n == 0:
            continue
        stats.prompted += n
        stats.classes_prompted += 1
        size = predictor.original_size
        points = predictor.transform.apply_coords_torch(prompts.points.to(device), size)[:, None, :]
        boxes = predictor.transform.apply_boxes_torch(prompts.boxes.to(device), size)
        dense = dense_mask_prompt(probs[c], coarse_thresh, mask_coeff).to(device)
        logits, iou, _ = predictor.predict_torch(
            points, torch.ones((n, 1), dtype=torch.int64, device=device), boxes=boxes,
            mask_input=dense[None, None].expand(n, 1, -1, -1), multimask_output=False, return_logits=True)
        kept = iou[:, 0] > iou_thresh
        if not bool(kept.any()):
            continue
        stats.kept += int(kept.sum())
        logits = logits[kept, 0].float()  # [m, H, W]
        inside = logits > threshold
        score = torch.where(inside, torch.sigmoid(logits) * probs[c].float(), torch.zeros_like(logits)).amax(dim=0)
        inside = inside.any(dim=0)
        better = inside & (~covered | (score > best))
        best = torch.where(better, score, best)
        best_class = torch.where(better, torch.full_like(best_class, c), best_class)
        covered |= inside
    return torch.where(covered, best_class, coarse.long()), stats
