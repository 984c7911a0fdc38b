"""The part of a ControlNet that a DeepCache retrieval step consumes (mirrors ``ControlNetModel.forward``).

A ControlNet returns one residual per UNet skip tensor ``s_0..s_{n-1}`` (added to the skips) and one for
the mid block. A retrieval step on branch ``b`` runs only ``conv_in`` and the down layers up to ``b`` and
consumes only the skips ``s_0..s_b`` (deeper skips and the mid block belong to the cached feature), so it
needs only the residuals ``0..b``. :func:`shallow_residuals` computes exactly those: the embeddings,
``conv_in`` + the hint encoder, the ControlNet's down layers ``1..b`` (the same layout as the UNet's), and
the zero convolutions ``0..b``, scaled as the full ControlNet scales them. The deeper down layers, the mid
block and their zero convolutions are skipped: the residuals it returns equal the first ``b + 1`` of a
full ControlNet run (the same operations on the same inputs), at a fraction of its cost.

Mirrored version: diffusers 0.39.0 (``ControlNetModel.forward`` is in
:data:`vision.deepcache.unet_forward.MIRRORED_FUNCTIONS`, checked by the same test).
"""

from __future__ import annotations

from typing import Any

import torch

from vision.deepcache.layout import Layout
from vision.deepcache.unet_forward import _down_layer


def _embedding(cn: Any, sample: torch.Tensor, timestep: Any, class_labels: Any, timestep_cond: Any,
               encoder_hidden_states: torch.Tensor, added_cond_kwargs: dict | None) -> torch.Tensor:
    """The ControlNet's time (+ class + added) embedding ``[B, C_emb]``, as its forward computes it."""
    timesteps = timestep
    if not torch.is_tensor(timesteps):
        dtype = torch.float64 if isinstance(timestep, float) else torch.int64
        timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
    elif len(timesteps.shape) == 0:
        timesteps = timesteps[None].to(sample.device)
    timesteps = timesteps.expand(sample.shape[0])
    emb = cn.time_embedding(cn.time_proj(timesteps).to(dtype=sample.dtype), timestep_cond)
    if cn.class_embedding is not None:
        if cn.config.class_embed_type == "timestep":
            class_labels = cn.time_proj(class_labels)
        emb = emb + cn.class_embedding(class_labels).to(dtype=cn.dtype)
    kind = cn.config.addition_embed_type
    if kind == "text":
        emb = emb + cn.add_embedding(encoder_hidden_states)
    elif kind == "text_time":
        text_embeds, time_ids = added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"]
        time_embeds = cn.add_time_proj(time_ids.flatten()).reshape((text_embeds.shape[0], -1))
        emb = emb + cn.add_embedding(torch.concat([text_embeds, time_embeds], dim=-1).to(emb.dtype))
    return emb


def shallow_residuals(cn: Any, layout: Layout, b: int, sample: torch.Tensor, timestep: Any,
                      encoder_hidden_states: torch.Tensor, controlnet_cond: torch.Tensor,
                      conditioning_scale: float = 1.0, class_labels: Any = None, timestep_cond: Any = None,
                      attention_mask: Any = None, added_cond_kwargs: dict | None = None,
                      cross_attention_kwargs: dict | None = None) -> list[torch.Tensor]:
    """ControlNet ``cn``'s residuals ``0..b`` (``b + 1`` tensors ``[B, C_i, H_i, W_i]``) for a retrieval
    step on branch ``b`` of a UNet with ``layout`` (not guess mode: every residual x ``conditioning_scale``)."""
    if cn.config.controlnet_conditioning_channel_order == "bgr":
        controlnet_cond = torch.flip(controlnet_cond, dims=[1])
    if attention_mask is not None:
        attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
    emb = _embedding(cn, sample, timestep, class_labels, timestep_cond, encoder_hidden_states, added_cond_kwargs)
    h = cn.conv_in(sample) + cn.controlnet_cond_embedding(controlnet_cond)
    ctx = {"encoder_hidden_states": encoder_hidden_states, "attention_mask": attention_mask,
           "cross_attention_kwargs": cross_attention_kwargs}
    skips = [h]
    for d, r in layout.down[:b]:
        h = _controlnet_down_layer(cn.down_blocks[d], r, h, emb, ctx)
        skips.append(h)
    residuals = [block(s) * conditioning_scale for s, block in zip(skips, cn.controlnet_down_blocks)]
    if cn.config.global_pool_conditions:
        residuals = [torch.mean(r, dim=(2, 3), keepdim=True) for r in residuals]
    return residuals


def _controlnet_down_layer(block: Any, r: int, h: torch.Tensor, emb: torch.Tensor, ctx: dict) -> torch.Tensor:
    """One down layer of the ControlNet (its blocks get no ``encoder_attention_mask``, as in its forward)."""
    return _down_layer(block, r, h, emb, {**ctx, "encoder_attention_mask": None})


def check_controlnet_layout(cn: Any, layout: Layout) -> None:
    """The ControlNet's down blocks must have the UNet's layout (the residual ``i`` is added to skip ``i``)."""
    from vision.deepcache.schedules import DeepCacheError

    skips = 1 + sum(len(b.resnets) + (b.downsamplers is not None) for b in cn.down_blocks)
    if skips != layout.num_skips or len(cn.controlnet_down_blocks) != layout.num_skips:
        raise DeepCacheError(f"the ControlNet has {skips} skip residuals, the UNet {layout.num_skips} skips: a "
                             "ControlNet of another base model")
