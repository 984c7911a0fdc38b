"""Trident's SAM global aggregation: the last SAM encoder block's attention, its affinity, the crop.

Pure functions of tensors and model modules (see :mod:`vision.engines.trident.engine`); shapes: h heads,
N tokens of the SAM grid, d per-head channels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


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




def split_resize(grid_map: torch.Tensor, part: int, parts: int, size: tuple[int, int]) -> torch.Tensor:
    """Column block ``part`` of ``parts`` equal blocks of a [C, H, W] map (cut at ``W * i // parts``),
    resized bilinearly to ``size`` (``F.interpolate``, as the reference resizes each half)."""
    w = grid_map.shape[-1]
    block = grid_map[:, :, w * part // parts:w * (part + 1) // parts]
    return F.interpolate(block[None], size=size, mode="bilinear", align_corners=False)[0]
