"""What each frame's cross-attention sees besides its text: the round's reference tokens and its characters'.

Without declared characters this is Story-Adapter as published (one IP-Adapter, the previous round's
frames, scale lambda_r; round 0 has no adapter at all). With characters two copies of the family's
IP-Adapter are loaded, with the same weights, and every cross-attention layer computes (diffusers'
``IPAdapterAttnProcessor2_0``, one softmax per adapter)::

    Attn(Q, K_text, V_text) + lambda_r * Attn(Q, K_round, V_round) + w_c * Attn(Q, K_char, V_char)

* adapter 0, the round: K_round/V_round from the 4B tokens of the previous round's B frames (as without
  characters); ``lambda_r = linspace(lambda_start, lambda_end, R)[r - 1]``, and 0 in round 0, where the
  term is skipped (diffusers skips an adapter whose scale is 0);
* adapter 1, the characters: K_char/V_char from the 4k tokens of the k characters the frame names, each
  character one identity = the mean of its reference images' CLIP image embeddings, projected to 4 tokens;
  ``w_c = character_scale`` (0.6 by default) in every round, 0 for a frame that names no character;
* classifier-free guidance: the unconditional half sees the projection of zero embeddings in both.

The two sets are weighted separately rather than joined in one softmax because the round's set grows with
the story: joined, a character's 4 tokens among 4 + 4B would get about 1/(B + 1) of the reference
attention (under 1% in a 100-frame story); apart, the character keeps w_c at any length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ROUND, CHARACTERS = 0, 1  # adapter indices when characters are declared


@dataclass
class Cast:
    """The characters as the rounds use them: ``frames[i]`` the names frame i uses, ``embeddings[name]`` a
    character's identity [D] (mean CLIP image embedding of its references), ``scale`` w_c."""

    frames: list[tuple[str, ...]]
    embeddings: dict[str, torch.Tensor]
    scale: float


def _batch(positive: torch.Tensor, cfg: bool, like: torch.Tensor) -> torch.Tensor:
    """Embeddings [n, D] -> one adapter's input [2 (CFG: zeros, then these) or 1, n, D] on ``like``'s device/dtype."""
    positive = positive[None].to(device=like.device, dtype=like.dtype)
    return torch.cat([torch.zeros_like(positive), positive]) if cfg else positive


def ip_inputs(round_embeds: torch.Tensor | None, lam: float, cast: Cast | None, frame: int, cfg: bool,
              like: torch.Tensor) -> tuple[float | list[float] | None, list[torch.Tensor] | None]:
    """(IP-Adapter scale(s), ``ip_adapter_image_embeds``) for frame ``frame`` (see the module docstring).

    ``round_embeds``: the previous round's CLIP embeddings [B, D] (None in round 0). Without a cast: None
    in round 0 (no adapter), else ``(lambda_r, [[2|1, B, D]])``. With one: ``([lambda_r or 0, w_c or 0],
    [round [2|1, B, D], characters [2|1, k, D]])``, an absent set being one zero embedding at scale 0.
    """
    if cast is None:
        return (None, None) if round_embeds is None else (lam, [_batch(round_embeds, cfg, like)])
    names = cast.frames[frame]
    empty = torch.zeros_like(next(iter(cast.embeddings.values())))[None]  # [1, D]
    characters = torch.stack([cast.embeddings[n] for n in names]) if names else empty
    scales = [lam if round_embeds is not None else 0.0, cast.scale if names else 0.0]
    embeds = [_batch(round_embeds if round_embeds is not None else empty, cfg, like), _batch(characters, cfg, like)]
    return scales, embeds
