"""SAM's prompt encoder + mask decoder split into a part per image and a part per prompt (no mask input).

``MaskDecoder.predict_masks`` (segment_anything/modeling/mask_decoder.py) repeats the image embedding
once per prompt and runs the whole two-way transformer and the upscaling on every copy. Without a mask
input, the image side only changes through the image -> token attentions, and each of those adds a
*low-rank* term: ``A [HW, h*T] @ P [h*T, C]`` (the softmax weights of each of h heads over the T tokens,
times each head's token values through its slice of ``out_proj``). Every later linear map of the image
tokens goes through a ``LayerNorm`` first, and a LayerNorm is a per-row affine map (subtract the row's
mean, divide by its std, scale by gamma, add beta), so, with ``x = image + A @ P``::

    W @ LN(x) = (W Gamma image + (A @ (P Gamma W^T)) - mean(x) W gamma) / std(x) + W beta

The product ``W Gamma image`` is computed once per image (:class:`DecoderImagePart`); per prompt only
``A @ (P Gamma W^T)`` (rank h*T = 56 for one click, instead of C = 256) and per-row scalars remain.
This is exact algebra: only the order of float sums differs from ``predict_masks``
(``tests/test_sam_split_decoder.py`` compares them). Per prompt, for SAM's depth-2 decoder:

* block 0: its image-side projections are per image; its image -> token term gives ``x1 = image + A0 P0``;
* block 1: the three projections of ``keys1 = norm4_0(x1)`` (token -> image keys and values, image ->
  token queries) come from ``A0`` as above; its image -> token term gives ``y = keys1 + A1 P1``;
* the final token -> image attention's keys and values and the first transposed convolution of the
  upscaling (kernel 2, stride 2: a per-pixel linear map to 2 x 2 x C/4) are linear maps of
  ``keys2 = norm4_1(y)``: the same identity applied twice, with ``[A0 / std(x1), A1]`` (rank 2 h T);
* the upscaling runs per pixel: SAM's LayerNorm2d, GELU, the second transposed convolution (a per-pixel
  linear map to 2 x 2 x C/8) and the hypernetwork product act on each pixel's sub-pixels, so they run on
  [pixel, sub-pixel, channel] arrays and only the [M, 4g, 4g] masks are put in image order at the end.

The keys, values and queries of block 1 and of the final attention are never formed: an attention needs only
their products with the tokens' vectors, which split into per-image products and rank-K ones
(:class:`_LowRankPixels`). Image tensors are channels first ([C, g*g]: heads are views) where attentions
read them and pixels first where a LayerNorm reduces over their channels. For SAM (C = 256, 8 heads,
HW = 64 x 64, T = 7) a click costs ~0.56 GMAC instead of ``predict_masks``' ~1.75 (the per-image part,
~1.75 GMAC, runs once per image), and OpenVINO on 2 cores decodes a prompt in ~14 ms instead of ~31
(``bench/results/cpu.md``).

Shapes: embedding [1, C, g, g]; per-image tensors :data:`IMAGE_OUTPUTS` (see :class:`DecoderImagePart`);
prompts as in :mod:`vision.sam.export` (point_coords [B, N, 2] in the encoder's input frame,
point_labels [B, N]) -> low-res logits [B, M, 4g, 4g] and IoUs [B, M] (M = 4 mask tokens).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

IMAGE_OUTPUTS = ("image", "token_keys", "token_values", "image_queries",
                 *(f"{name}_{part}" for name in ("keys1", "values1", "queries1", "final_keys", "final_values",
                                                 "upscaling") for part in ("base", "shift")))


class SplitDecoderError(ValueError):
    """A decoder this split does not cover (the message says what differs from SAM's)."""


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
    """Tokens [B, T, heads * d] -> [B, heads, T, d]."""
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _pixel_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Channels-first pixels [B, heads * d, HW] -> [B, heads, d, HW] (a view)."""
    return x.reshape(x.shape[0], heads, -1, x.shape[-1])


def _columns(like: torch.Tensor, *vectors: torch.Tensor) -> torch.Tensor:
    """Vectors [R] as the columns of [B, R, n], B = ``like``'s batch (a dynamic size in the export)."""
    return torch.stack(vectors, 1)[None].expand(like.shape[0], -1, -1)


def _row_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm's statistics of pixels-first vectors [B, HW, C] over C (contiguous: a fast reduction):
    (mean, 1 / sqrt(var + eps)), each as a row over the pixels [B, 1, HW]."""
    mean = x.mean(-1, keepdim=True)
    inv_std = 1 / torch.sqrt((x - mean).pow(2).mean(-1, keepdim=True) + eps)
    return mean.transpose(1, 2), inv_std.transpose(1, 2)


def _upscale_weights(upscaling: nn.Sequential) -> tuple[torch.Tensor, ...]:
    """The two transposed convolutions (kernel 2, stride 2) of SAM's ``output_upscaling`` as per-pixel
    linear maps: (first [4 * C1, C], second [4 * C2, C1], each with rows (sub-pixel, channel), and their
    biases [4 * C1], [4 * C2])."""
    first, second = upscaling[0], upscaling[3]
    for conv in (first, second):
        if conv.kernel_size != (2, 2) or conv.stride != (2, 2) or conv.padding != (0, 0):
            raise SplitDecoderError(f"output_upscaling: a 2x2, stride-2 transposed convolution expected, got {conv}")
    c1, c2 = first.out_channels, second.out_channels
    first_w = first.weight.permute(2, 3, 1, 0).reshape(4 * c1, -1)  # [in, out, i, j] -> [(i, j, out), in]
    second_w = second.weight.permute(2, 3, 1, 0).reshape(4 * c2, -1)
    return first_w, first.bias.repeat(4), second_w, second.bias.repeat(4)


def _final_maps(decoder: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The linear maps of ``keys2`` stacked: final attention's k_proj, v_proj and the first upscaling
    convolution: (weights [Ci + Ci + 4 C1, C], biases, Ci)."""
    final = decoder.transformer.final_attn_token_to_image
    first_w, first_b, _, _ = _upscale_weights(decoder.output_upscaling)
    weight = torch.cat([final.k_proj.weight, final.v_proj.weight, first_w])
    return weight, torch.cat([final.k_proj.bias, final.v_proj.bias, first_b]), final.k_proj.out_features


def _block1_maps(block: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Block 1's linear maps of ``keys1`` stacked: token -> image k_proj, v_proj, image -> token q_proj:
    (weights [3 Ci, C], biases, Ci)."""
    to_image, to_token = block.cross_attn_token_to_image, block.cross_attn_image_to_token
    weight = torch.cat([to_image.k_proj.weight, to_image.v_proj.weight, to_token.q_proj.weight])
    bias = torch.cat([to_image.k_proj.bias, to_image.v_proj.bias, to_token.q_proj.bias])
    return weight, bias, to_image.k_proj.out_features


def check_decoder(sam: Any) -> None:
    """Raises :class:`SplitDecoderError` unless ``sam``'s decoder has the structure the split assumes."""
    transformer = sam.mask_decoder.transformer
    if len(transformer.layers) != 2:
        raise SplitDecoderError(f"a two-block transformer expected, this one has {len(transformer.layers)}")
    if not transformer.layers[0].skip_first_layer_pe or transformer.layers[1].skip_first_layer_pe:
        raise SplitDecoderError("block 0 without and block 1 with the query positional encoding expected")
    attentions = [a for layer in transformer.layers for a in (layer.cross_attn_token_to_image,
                                                               layer.cross_attn_image_to_token)]
    heads = {a.num_heads for a in (*attentions, transformer.final_attn_token_to_image)}
    if len(heads) != 1:
        raise SplitDecoderError(f"every cross attention with the same number of heads expected, got {sorted(heads)}")
    _upscale_weights(sam.mask_decoder.output_upscaling)


class DecoderImagePart(nn.Module):
    """The per-image half: embedding [1, C, g, g] -> tensors over the HW = g*g pixels, in the order of
    :data:`IMAGE_OUTPUTS`:

    * ``image`` [1, HW, C] (pixels first): embedding + no-mask embedding + block 0's image -> token
      ``out_proj`` bias;
    * ``token_keys``, ``token_values``, ``image_queries`` [1, Ci, HW]: block 0's image-side projections;
    * ``<map>_base`` = W Gamma0 image and ``<map>_shift`` = W (beta0 + pe) + b (pe for keys and queries
      only) [1, Ci, HW] for block 1's maps of ``keys1`` W (``keys1``, ``values1``, ``queries1``: token
      -> image k_proj, v_proj, image -> token q_proj) through block 0's ``norm4`` (Gamma0, beta0);
    * the same through both ``norm4`` (W Gamma1 Gamma0 image, W (beta1 + pe) + b) for the maps of
      ``keys2``: ``final_keys``, ``final_values`` [1, Ci, HW] and ``upscaling`` [1, HW, 4 C1] (pixels
      first), the first transposed convolution as a per-pixel map (:func:`_upscale_weights`).
    """

    def __init__(self, sam: Any):
        super().__init__()
        check_decoder(sam)
        self.prompt_encoder = sam.prompt_encoder
        self.decoder = sam.mask_decoder

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, ...]:
        block0, block1 = self.decoder.transformer.layers
        keys = (embedding + self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)).flatten(2)  # [1, C, HW]
        pe = self.prompt_encoder.get_dense_pe().flatten(2)
        to_image, to_token = block0.cross_attn_token_to_image, block0.cross_attn_image_to_token
        image = keys + to_token.out_proj.bias[:, None]

        def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
            return layer.weight @ x + layer.bias[:, None]

        gamma0, beta0 = block0.norm4.weight[:, None], block0.norm4.bias[:, None]
        gamma1, beta1 = block1.norm4.weight[:, None], block1.norm4.bias[:, None]
        outputs = [image, linear(to_image.k_proj, keys + pe), linear(to_image.v_proj, keys),
                   linear(to_token.q_proj, keys + pe)]
        w1, b1, ci = _block1_maps(block1)
        for rows, positional in ((slice(0, ci), True), (slice(ci, 2 * ci), False), (slice(2 * ci, 3 * ci), True)):
            weight, shift = w1[rows], w1[rows] @ beta0 + b1[rows, None]
            shift = shift + weight @ pe if positional else shift.expand(1, -1, image.shape[-1])
            outputs += [(weight * gamma0.T) @ image, shift]
        wf, bf, ci = _final_maps(self.decoder)
        for rows, positional in ((slice(0, ci), True), (slice(ci, 2 * ci), False), (slice(2 * ci, len(wf)), False)):
            weight, shift = wf[rows], wf[rows] @ beta1 + bf[rows, None]
            shift = shift + weight @ pe if positional else shift.expand(1, -1, image.shape[-1])
            outputs += [(weight * (gamma1 * gamma0).T) @ image, shift]
        outputs[0] = image.transpose(1, 2)  # pixels first, as the upscaling's two below
        outputs[-2:] = [tensor.transpose(1, 2) for tensor in outputs[-2:]]
        return tuple(outputs)


class _Pixels:
    """Per-pixel vectors [1 or B, h * d, HW] (channels first) seen by an attention with h heads."""

    def __init__(self, values: torch.Tensor, heads: int):
        self.heads = _pixel_heads(values, heads)  # [., h, d, HW]

    def dot(self, queries: torch.Tensor) -> torch.Tensor:
        """Each head's dot products of token vectors [B, h, T, d] with the pixels' -> [B, h, T, HW]."""
        return queries @ self.heads

    def weighted_sum(self, weights: torch.Tensor) -> torch.Tensor:
        """Each head's sums of the pixels' vectors weighted by [B, h, T, HW] -> [B, h, T, d]."""
        return weights @ self.heads.transpose(-1, -2)


class _LowRankPixels:
    """Per-pixel vectors [B, h * d, HW] kept as ``base * scale + left @ right + shift`` and never formed:
    ``base`` and ``shift`` [1, h * d, HW] per image, ``scale`` [B, 1, HW] per pixel, ``left`` [B, h * d, K],
    ``right`` [B, K, HW] (K: the rank). An attention reads them through the same two products as
    :class:`_Pixels`, each split into its three terms: T x K x HW multiply-adds per head for the rank-K
    one, where forming the vectors would take d x K x HW."""

    def __init__(self, base: torch.Tensor, scale: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                 shift: torch.Tensor, heads: int):
        self.base, self.shift = _pixel_heads(base, heads), _pixel_heads(shift, heads)  # [1, h, d, HW]
        self.left = left.reshape(left.shape[0], heads, -1, left.shape[-1])  # [B, h, d, K]
        self.scale, self.right = scale[:, None], right[:, None]  # [B, 1, 1, HW], [B, 1, K, HW]

    def dot(self, queries: torch.Tensor) -> torch.Tensor:
        # the rank-K term as one product over all heads' rows [B, h*T, K] @ [B, K, HW]
        low_rank = ((queries @ self.left).flatten(1, 2) @ self.right[:, 0]).reshape(queries.shape[:3] + (-1,))
        return (queries @ self.base) * self.scale + low_rank + queries @ self.shift

    def weighted_sum(self, weights: torch.Tensor) -> torch.Tensor:
        by_rank = (weights.flatten(1, 2) @ self.right[:, 0].transpose(1, 2)).reshape(weights.shape[:3] + (-1,))
        return ((weights * self.scale) @ self.base.transpose(-1, -2) + by_rank @ self.left.transpose(-1, -2)
                + weights @ self.shift.transpose(-1, -2))


def _tokens_attend_pixels(attention: Any, queries: torch.Tensor, keys: Any, values: Any) -> torch.Tensor:
    """SAM's ``Attention`` of tokens [B, T, C] (not yet projected) to pixels whose keys and values are
    projected (:class:`_Pixels` or :class:`_LowRankPixels`) -> [B, T, C]."""
    q = _heads(attention.q_proj(queries), attention.num_heads)  # [B, h, T, d]
    weights = torch.softmax(keys.dot(q) / math.sqrt(q.shape[-1]), dim=-1)  # [B, h, T, HW]
    return attention.out_proj(values.weighted_sum(weights).transpose(1, 2).flatten(2))


def _pixels_attend_tokens(attention: Any, queries: Any, keys: torch.Tensor,
                          values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's ``Attention`` of pixels, queries projected (:class:`_Pixels` or :class:`_LowRankPixels`), to
    tokens [B, T, C] (keys and values not yet projected), as its low-rank factors: (weights [B, h*T, HW]:
    each head's softmax over the T tokens, values [B, h*T, C]: each head's token values through its slice
    of ``out_proj``). The attention's output is ``values^T @ weights + out_proj.bias`` [B, C, HW]."""
    heads = attention.num_heads
    k = _heads(attention.k_proj(keys), heads)  # [B, h, T, d]
    weights = torch.softmax(queries.dot(k) / math.sqrt(k.shape[-1]), dim=2).flatten(1, 2)  # [B, h*T, HW]
    out_weight = attention.out_proj.weight  # [C, h * d]
    per_head = out_weight.reshape(out_weight.shape[0], heads, -1).permute(1, 2, 0)  # [h, d, C]
    projected = _heads(attention.v_proj(values), heads) @ per_head  # [B, h, T, C]
    return weights, projected.flatten(1, 2)


class DecoderPromptPart(nn.Module):
    """The per-prompt half: the per-image tensors of :class:`DecoderImagePart` (in the order of
    :data:`IMAGE_OUTPUTS`), point_coords [B, N, 2], point_labels [B, N] -> low-res logits [B, M, 4g, 4g]
    and IoUs [B, M], as ``predict_masks`` computes them with SAM's no-mask embedding (see the module
    docstring for the algebra)."""

    def __init__(self, sam: Any):
        super().__init__()
        check_decoder(sam)
        self.prompt_encoder = sam.prompt_encoder
        self.decoder = sam.mask_decoder

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image_tensors, (point_coords, point_labels) = dict(zip(IMAGE_OUTPUTS, inputs[:-2])), inputs[-2:]
        decoder = self.decoder
        block0, block1 = decoder.transformer.layers
        heads = block0.cross_attn_token_to_image.num_heads
        sparse = sparse_embedding(self.prompt_encoder, point_coords, point_labels)
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens[None].expand(sparse.shape[0], -1, -1), sparse], dim=1)  # [B, T, C]

        # 1. Block 0: tokens attend the image; the image attends the tokens: x1 = image + P0^T A0.
        queries = block0.norm1(block0.self_attn(q=tokens, k=tokens, v=tokens))
        queries = self._token_side(block0, queries, tokens, _Pixels(image_tensors["token_keys"], heads),
                                   _Pixels(image_tensors["token_values"], heads))
        a0, p0 = _pixels_attend_tokens(block0.cross_attn_image_to_token, _Pixels(image_tensors["image_queries"], heads),
                                       queries + tokens, queries)
        x1 = image_tensors["image"] + a0.transpose(1, 2) @ p0  # pixels first: [B, HW, C]
        mean1, inv_std1 = _row_stats(x1, block0.norm4.eps)  # [B, 1, HW] each

        # 2. Block 1's projections of keys1 = norm4_0(x1), from the rank-h*T factors (never formed).
        w1, _, ci = _block1_maps(block1)
        gamma0, beta0 = block0.norm4.weight, block0.norm4.bias
        left = torch.cat([(w1 * gamma0) @ p0.transpose(1, 2), _columns(p0, -(w1 @ gamma0))], 2)
        right = torch.cat([a0, mean1], 1) * inv_std1  # [B, h*T + 1, HW]
        keys1_k, keys1_v, pixel_queries = (
            _LowRankPixels(image_tensors[f"{name}_base"], inv_std1, left[:, i * ci:(i + 1) * ci], right,
                           image_tensors[f"{name}_shift"], heads)
            for i, name in enumerate(("keys1", "values1", "queries1")))

        # 3. Block 1: tokens attend the image; the image attends the tokens: y = keys1 + P1^T A1 + bias.
        queries = block1.norm1(queries + block1.self_attn(q=queries + tokens, k=queries + tokens, v=queries))
        queries = self._token_side(block1, queries, tokens, keys1_k, keys1_v)
        a1, p1 = _pixels_attend_tokens(block1.cross_attn_image_to_token, pixel_queries, queries + tokens, queries)
        bias1 = block1.cross_attn_image_to_token.out_proj.bias
        constant = (gamma0, beta0 + bias1)  # keys1 = gamma0 (x1 - mean1) / std1 + beta0, plus the bias
        left = torch.cat([p1.transpose(1, 2), _columns(p1, *constant)], 2)
        right = torch.cat([a1, -mean1 * inv_std1, torch.ones_like(mean1)], 1)
        y = x1 * inv_std1.transpose(1, 2) * gamma0 + right.transpose(1, 2) @ left.transpose(1, 2)  # [B, HW, C]
        mean2, inv_std2 = _row_stats(y, block1.norm4.eps)

        # 4. The maps of keys2 = norm4_1(y): final keys and values (never formed), first upscaling convolution.
        wf, _, ci = _final_maps(decoder)
        wf1 = wf * block1.norm4.weight
        constant = (-(wf1 @ gamma0), wf1 @ (beta0 + bias1), -wf1.sum(1))
        left = torch.cat([(wf1 * gamma0) @ p0.transpose(1, 2), wf1 @ p1.transpose(1, 2), _columns(p1, *constant)],
                         2)  # [B, Cf, 2hT + 3]
        right = torch.cat([a0 * inv_std1, a1, mean1 * inv_std1, torch.ones_like(mean2), mean2], 1) * inv_std2
        scale = inv_std1 * inv_std2
        final_k, final_v = (_LowRankPixels(image_tensors[f"{name}_base"], scale, left[:, i * ci:(i + 1) * ci], right,
                                           image_tensors[f"{name}_shift"], heads)
                            for i, name in enumerate(("final_keys", "final_values")))
        upscaled = (image_tensors["upscaling_base"] * scale.transpose(1, 2)
                    + right.transpose(1, 2) @ left[:, 2 * ci:].transpose(1, 2)
                    + image_tensors["upscaling_shift"])  # pixels first: [B, HW, 4 C1]

        # 5. The final attention of the tokens to the image; IoUs and the hypernetworks' outputs.
        transformer = decoder.transformer
        attended = _tokens_attend_pixels(transformer.final_attn_token_to_image, queries + tokens, final_k, final_v)
        queries = transformer.norm_final_attn(queries + attended)
        hyper = torch.stack([mlp(queries[:, 1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
        return self._masks(upscaled, hyper), decoder.iou_prediction_head(queries[:, 0])

    @staticmethod
    def _token_side(block: Any, queries: torch.Tensor, tokens: torch.Tensor, keys: Any, values: Any) -> torch.Tensor:
        """``TwoWayAttentionBlock.forward``'s token side after its self-attention: the tokens attend the
        pixels (keys and values: :class:`_Pixels` or :class:`_LowRankPixels`), then the MLP -> queries
        [B, T, C]."""
        attended = _tokens_attend_pixels(block.cross_attn_token_to_image, queries + tokens, keys, values)
        queries = block.norm2(queries + attended)
        return block.norm3(queries + block.mlp(queries))

    def _masks(self, upscaled: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """The rest of ``output_upscaling`` from the first convolution's output, pixels first [B, HW, 4 C1]
        (columns: sub-pixel, channel), then each mask token's hypernetwork output [B, M, C2] times it ->
        low-res logits [B, M, 4g, 4g]."""
        upscaling = self.decoder.output_upscaling
        norm, first_gelu, second_gelu = upscaling[1], upscaling[2], upscaling[4]
        _, _, second_w, second_b = _upscale_weights(upscaling)
        batch, pixels, channels = upscaled.shape[0], upscaled.shape[1], hyper.shape[-1]
        z = upscaled.reshape(batch, pixels, 4, -1)  # [B, (y, x), (i1, j1), C1]
        z = first_gelu(nn.functional.layer_norm(z, norm.weight.shape, norm.weight, norm.bias, norm.eps))  # LayerNorm2d
        z = second_gelu(nn.functional.linear(z, second_w, second_b))  # [B, (y, x), (i1, j1), (i2, j2, C2)]
        masks = z.reshape(batch, -1, channels) @ hyper.transpose(1, 2)  # [B, (y, x, i1, j1, i2, j2), M]
        grid = int(round(math.sqrt(pixels)))
        masks = masks.reshape(batch, grid, grid, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(batch, -1, 4 * grid, 4 * grid)  # row 4 y + 2 i1 + i2, column 4 x + 2 j1 + j2
