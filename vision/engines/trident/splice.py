"""Trident's "splice" half: window geometry, the CLIP and VFM trunks, proxy attention, the splice.

Everything here is a function of tensors and model modules; nothing loads models or keeps state, so
each piece is tested on its own against a direct transcription of the spec's formulas.

Shapes: B windows, N tokens of a window, C channels, h heads. Token grids are ``(rows, cols)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Box = tuple[int, int, int, int]  # y1, x1, y2, x2 (end exclusive)
PosResize = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


# ---------------------------------------------------------------------------------------------- geometry


def keep_ratio_shape(height: int, width: int, short_side: int, max_long_side: int = 2048) -> tuple[int, int]:
    """mmseg's ``Resize(scale=(max_long_side, short_side), keep_ratio=True)``: the image scaled so its
    short side is ``short_side`` unless that makes the long side exceed ``max_long_side`` (mmcv's
    ``rescale_size``: each side ``int(side * scale + 0.5)``). Returns ``(height, width)``."""
    if height < 1 or width < 1:
        raise ValueError(f"image of size {width}x{height} has no pixels")
    scale = min(short_side / min(height, width), max_long_side / max(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def round_each_side(height: int, width: int, patch: int, window: int) -> tuple[int, int]:
    """Each side rounded up on its own to a multiple of ``patch`` and to at least ``window``."""
    return max(window, round_up(height, patch)), max(window, round_up(width, patch))


def round_like_reference(height: int, width: int, patch: int, window: int) -> tuple[int, int]:
    """The reference's rounding (``seg_utils.preprocess_image``): unless both sides are multiples of
    ``patch`` already, the long side L is rounded up to a multiple L', both sides are scaled by L'/L
    (``int`` of the product), then each is rounded up to a multiple of ``patch``; at last each side is
    raised to at least ``window`` (the reference skips that when both sides were multiples: see the
    engine's docstring)."""
    if height % patch or width % patch:
        longer = max(height, width)
        target = round_up(longer, patch)
        height, width = int(height * target / longer), int(width * target / longer)
    return round_each_side(height, width, patch, window)


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


# ------------------------------------------------------------------------------------ positional embeddings


def _patch_grid(pos: torch.Tensor) -> tuple[torch.Tensor, int]:
    n = int(round(math.sqrt(pos.shape[0] - 1)))
    return pos[1:].reshape(1, n, n, -1).permute(0, 3, 1, 2).float(), n


def _with_class_token(pos: torch.Tensor, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    if tuple(patches.shape[-2:]) != tuple(grid):
        raise ValueError(f"positional embeddings resized to {tuple(patches.shape[-2:])}, not {tuple(grid)}")
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([pos[:1], patches])


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A learned positional embedding [1 + n*n, C] resized (bicubic) to a ``grid`` of patches by target
    size (transformers' rule): [1 + rows*cols, C]; the class token's embedding is kept as is."""
    patches, n = _patch_grid(pos)
    if (n, n) == tuple(grid):
        return pos
    return _with_class_token(pos, F.interpolate(patches, size=grid, mode="bicubic", align_corners=False), grid)


def resize_pos_embed_by_scale(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """As :func:`resize_pos_embed`, but by the scale factor ``(new + 0.1) / old`` (DINO's and
    open_clip's convention, which the reference uses for CLIP and DINO): the output has ``grid``'s size
    while the sampling positions follow the slightly larger scale."""
    patches, n = _patch_grid(pos)
    if (n, n) == tuple(grid):
        return pos
    scale = ((grid[0] + 0.1) / n, (grid[1] + 0.1) / n)
    resized = F.interpolate(patches, scale_factor=scale, mode="bicubic", align_corners=False)
    return _with_class_token(pos, resized, grid)


# ------------------------------------------------------------------------------------------------ trunks


def clip_embed(visual: Any, pixels: torch.Tensor,
               resize_pos: PosResize = resize_pos_embed) -> tuple[torch.Tensor, tuple[int, int]]:
    """open_clip ``VisionTransformer``'s input tokens: patch embedding, class token, positional embedding
    (resized to the grid by ``resize_pos``), patch dropout and ``ln_pre``.

    ``pixels``: [B, 3, H, W] CLIP-normalised. Returns [B, 1 + rows*cols, C] (class token first) and the
    patch grid ``(rows, cols)``.
    """
    x = visual.conv1(pixels.to(visual.conv1.weight.dtype))
    grid = (x.shape[2], x.shape[3])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + resize_pos(visual.positional_embedding, grid).to(x.dtype)
    return visual.ln_pre(visual.patch_dropout(x)), grid


def clip_block(transformer: Any, block: Any, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One open_clip residual block on batch-first tokens [B, L, C] (whatever the transformer's own
    layout), with an optional additive attention mask [L, L] (0 = attend, -inf = do not)."""
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    x = block(x, attn_mask=attn_mask)
    return x if batch_first else x.transpose(0, 1)


def clip_trunk(visual: Any, pixels: torch.Tensor,
               resize_pos: PosResize = resize_pos_embed) -> tuple[torch.Tensor, tuple[int, int]]:
    """Run open_clip's ``VisionTransformer`` unchanged up to (not including) its last block.

    ``pixels``: [B, 3, H, W] CLIP-normalised. Returns the tokens [B, 1 + rows*cols, C] (class token
    first) and the patch grid ``(rows, cols)``; positional embeddings are resized to the grid by
    ``resize_pos``.
    """
    x, grid = clip_embed(visual, pixels, resize_pos)
    for block in visual.transformer.resblocks[:-1]:
        x = clip_block(visual.transformer, block, x)
    return x, grid


def vfm_embed(vfm: Any, pixels: torch.Tensor,
              resize_pos: PosResize = resize_pos_embed) -> tuple[torch.Tensor, tuple[int, int]]:
    """The input tokens [B, 1 + rows*cols, C] of a transformers ``ViTModel`` / ``Dinov2Model`` (patch
    embedding, class token, positional embedding resized to the grid by ``resize_pos``) and the grid."""
    embeddings = vfm.embeddings
    projection = embeddings.patch_embeddings.projection
    x = projection(pixels.to(projection.weight.dtype))
    grid = (x.shape[2], x.shape[3])
    x = x.flatten(2).transpose(1, 2)
    cls = embeddings.cls_token.expand(x.shape[0], -1, -1)
    pos = resize_pos(embeddings.position_embeddings[0], grid).to(x.dtype)
    return embeddings.dropout(torch.cat([cls, x], dim=1) + pos), grid


def vfm_tokens(vfm: Any, pixels: torch.Tensor, resize_pos: PosResize = resize_pos_embed) -> torch.Tensor:
    """Patch tokens [B, rows*cols, C] of a transformers ``ViTModel`` (DINO) or ``Dinov2Model``: its last
    hidden state after the final LayerNorm, class token dropped.

    The same computation as the model's own forward, except that the positional embeddings are resized
    to the window grid by ``resize_pos`` (with :func:`resize_pos_embed` it equals
    ``vfm(pixel_values=pixels, interpolate_pos_encoding=True)``).
    """
    x, grid = vfm_embed(vfm, pixels, resize_pos)
    hidden = vfm.layernorm(vfm.encoder(x).last_hidden_state)
    return hidden[:, -grid[0] * grid[1]:]


# ------------------------------------------------------------------------------------------- proxy attention


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
