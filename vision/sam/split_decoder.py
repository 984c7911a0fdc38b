"""SAM's prompt encoder + mask decoder split into a part per image and a part per prompt (no mask input).

``MaskDecoder.predict_masks`` repeats the image embedding once per prompt and runs its first two-way
block (``TwoWayAttentionBlock``, segment_anything/modeling/transformer.py) on every copy. Without a mask
input the image side of that block is the same for every prompt: ``keys`` = embedding + the no-mask
embedding and ``key_pe`` = the dense positional encoding. So, in block 0,

* the token -> image attention's ``k_proj(keys + key_pe)`` and ``v_proj(keys)`` and the image -> token
  attention's ``q_proj(keys + key_pe)`` are computed once per image (:class:`DecoderImagePart`);
* the image -> token attention's ``out_proj`` (linear) is applied to the T token values of each head
  before the softmax-weighted sum: ``sum_h A_h [HW, T] @ (V_h W_o,h^T) [T, C] + b`` instead of
  ``(concat_h A_h V_h) [HW, Ci] @ W_o^T + b`` (HW x T x C x heads MACs instead of HW x Ci x C).

For SAM's decoder (C = 256, 8 heads, Ci = 128, HW = 64 x 64) that removes ~0.48 of its ~1.75 GMAC per
prompt. The later blocks, the final attention, the upscaling and the heads run SAM's own modules per
prompt, unchanged (their image side depends on the prompt after block 0's ``norm4``). Only the order
of float sums differs from ``predict_masks`` (``tests/test_sam_split_decoder.py``: <= 1e-4 on logits).

Shapes: embedding [1, C, g, g]; per-image tensors (:data:`IMAGE_OUTPUTS`) keys [1, g*g, C] and the
three projections [1, g*g, Ci] (Ci = C / 2: the cross attentions' width); prompts as in
:mod:`vision.sam.export` (point_coords [B, N, 2] in the encoder's input frame, point_labels [B, N]) ->
low-res logits [B, M, 4g, 4g] and IoUs [B, M] (M = 4 mask tokens).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

IMAGE_OUTPUTS = ("keys", "token_keys", "token_values", "image_queries")


def sparse_embedding(prompt_encoder: Any, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
    """``PromptEncoder``'s sparse embedding [B, N, C] of labelled points [B, N, 2] / [B, N] (labels -1
    padding, 0 background, 1 foreground, 2 / 3 a box's corners): SAM's positional encoding of
    (x + 0.5, y + 0.5) plus the label's embedding (padding: the not-a-point embedding alone)."""
    labels = point_labels[..., None]  # [B, N, 1]
    sparse = prompt_encoder.pe_layer.forward_with_coords(point_coords + 0.5, prompt_encoder.input_image_size)
    padding = (labels == -1).to(sparse.dtype)
    sparse = sparse * (1 - padding) + padding * prompt_encoder.not_a_point_embed.weight
    for code, embedding_k in enumerate(prompt_encoder.point_embeddings):
        sparse = sparse + (labels == code).to(sparse.dtype) * embedding_k.weight
    return sparse


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, heads * d] -> [B, heads, N, d]."""
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _image_pe(prompt_encoder: Any) -> torch.Tensor:
    """SAM's dense positional encoding as image tokens [1, g*g, C]."""
    return prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2)


class DecoderImagePart(nn.Module):
    """The per-image half: embedding [1, C, g, g] -> (keys [1, g*g, C], token_keys, token_values,
    image_queries [1, g*g, Ci]) for block 0 of SAM's two-way transformer, with SAM's no-mask embedding."""

    def __init__(self, sam: Any):
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.block = sam.mask_decoder.transformer.layers[0]

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, ...]:
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        keys = (embedding + no_mask).flatten(2).transpose(1, 2)
        positioned = keys + _image_pe(self.prompt_encoder)
        token_to_image, image_to_token = self.block.cross_attn_token_to_image, self.block.cross_attn_image_to_token
        return keys, token_to_image.k_proj(positioned), token_to_image.v_proj(keys), image_to_token.q_proj(positioned)


def _tokens_attend_image(attention: Any, queries: torch.Tensor, keys: torch.Tensor,
                         values: torch.Tensor) -> torch.Tensor:
    """SAM's ``Attention`` of tokens [B, T, C] (not yet projected) to image keys / values already
    projected [1, HW, Ci] -> [B, T, C]."""
    heads = attention.num_heads
    q = _heads(attention.q_proj(queries), heads)  # [B, h, T, d]
    k, v = _heads(keys, heads), _heads(values, heads)  # [1, h, HW, d]
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # [B, h, T, HW]
    out = (weights @ v).transpose(1, 2)  # [B, T, h, d]
    return attention.out_proj(out.reshape(out.shape[0], out.shape[1], -1))


def _image_attends_tokens(attention: Any, image_queries: torch.Tensor, keys: torch.Tensor,
                          values: torch.Tensor) -> torch.Tensor:
    """SAM's ``Attention`` of image queries already projected [1, HW, Ci] to tokens [B, T, C] (keys and
    values not yet projected) -> [B, HW, C], with ``out_proj`` applied to each head's T values first."""
    heads = attention.num_heads
    q = _heads(image_queries, heads)  # [1, h, HW, d]
    k, v = _heads(attention.k_proj(keys), heads), _heads(attention.v_proj(values), heads)  # [B, h, T, d]
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # [B, h, HW, T]
    out_weight = attention.out_proj.weight  # [C, h * d]
    per_head = out_weight.reshape(out_weight.shape[0], heads, -1).permute(1, 2, 0)  # [h, d, C]
    projected = v @ per_head  # [B, h, T, C]: each head's values through its slice of out_proj
    batch, tokens = projected.shape[0], projected.shape[2]
    weights = weights.permute(0, 2, 1, 3).reshape(batch, -1, heads * tokens)  # [B, HW, h*T]
    return weights @ projected.reshape(batch, heads * tokens, -1) + attention.out_proj.bias


class DecoderPromptPart(nn.Module):
    """The per-prompt half: the per-image tensors of :class:`DecoderImagePart`, point_coords [B, N, 2],
    point_labels [B, N] -> low-res logits [B, M, 4g, 4g] and IoUs [B, M], as ``predict_masks`` computes
    them with SAM's no-mask embedding."""

    def __init__(self, sam: Any):
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder

    def forward(self, keys: torch.Tensor, token_keys: torch.Tensor, token_values: torch.Tensor,
                image_queries: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        decoder, transformer = self.mask_decoder, self.mask_decoder.transformer
        sparse = sparse_embedding(self.prompt_encoder, point_coords, point_labels)
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens[None].expand(sparse.shape[0], -1, -1), sparse], dim=1)  # [B, T, C]
        queries, keys = self._first_block(tokens, keys, token_keys, token_values, image_queries)
        image_pe = _image_pe(self.prompt_encoder)
        for layer in transformer.layers[1:]:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=image_pe)
        attended = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + image_pe, v=keys)
        queries = transformer.norm_final_attn(queries + attended)
        return self._masks(queries, keys)

    def _first_block(self, tokens: torch.Tensor, keys: torch.Tensor, token_keys: torch.Tensor,
                     token_values: torch.Tensor, image_queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``TwoWayAttentionBlock.forward`` of block 0 with its image-side projections given:
        (queries [B, T, C], keys [B, HW, C])."""
        block = self.mask_decoder.transformer.layers[0]
        if block.skip_first_layer_pe:
            queries = block.self_attn(q=tokens, k=tokens, v=tokens)
        else:
            queries = tokens + block.self_attn(q=tokens + tokens, k=tokens + tokens, v=tokens)
        queries = block.norm1(queries)
        queries = block.norm2(queries + _tokens_attend_image(block.cross_attn_token_to_image, queries + tokens,
                                                             token_keys, token_values))
        queries = block.norm3(queries + block.mlp(queries))
        attended = _image_attends_tokens(block.cross_attn_image_to_token, image_queries, queries + tokens, queries)
        return queries, block.norm4(keys + attended)

    def _masks(self, queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The end of ``predict_masks``: tokens [B, T, C] and image tokens [B, g*g, C] -> low-res logits
        [B, M, 4g, 4g] (upscaled image times each mask token's hypernetwork output) and IoUs [B, M]."""
        decoder = self.mask_decoder
        grid = int(self.prompt_encoder.image_embedding_size[0])
        batch, channels = keys.shape[0], keys.shape[2]
        upscaled = decoder.output_upscaling(keys.transpose(1, 2).reshape(batch, channels, grid, grid))
        hyper = torch.stack([mlp(queries[:, 1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
        masks = (hyper @ upscaled.flatten(2)).reshape(batch, -1, *upscaled.shape[2:])  # [B, M, C/8] @ [B, C/8, 16 g^2]
        return masks, decoder.iou_prediction_head(queries[:, 0])
