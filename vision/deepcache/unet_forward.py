"""The UNet computation of a full step and of a retrieval step (mirrors ``UNet2DConditionModel.forward``).

A full step runs the whole UNet as diffusers does (whole blocks) and returns the hidden state that enters
up layer ``b`` (the feature to cache). A retrieval step runs ``conv_in``, the down layers up to branch
``b``, then up layers ``b..0`` on the cached feature, with the upsamplers between them, and the output
head. No block is patched: the blocks are called one by one around the branch.

**Mirrored diffusers version: 0.39.0** (:data:`MIRRORED_DIFFUSERS`). :func:`unet_forward` restates
``UNet2DConditionModel.forward`` of that version (its embeddings, ControlNet residuals, up-sampling sizes),
:func:`_down_layer` / :func:`_up_layer` one layer of ``(CrossAttn)DownBlock2D`` / ``(CrossAttn)UpBlock2D``,
:class:`LoraScale` the ``apply_lora_scale`` decorator, and :mod:`vision.deepcache.controlnet` the part of
``ControlNetModel.forward`` a retrieval step needs. :data:`MIRRORS` records, per diffusers version
checked, a hash of each of those functions' code (docstrings and comments excluded);
:func:`mirror_problem` compares the installed diffusers with them (tests/test_deepcache.py fails with its
message, and :class:`~vision.deepcache.DeepCache` warns once). After a diffusers upgrade: compare the
functions, update this file, and add the new version's :func:`installed_hashes` to :data:`MIRRORS`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import textwrap
import warnings
from typing import Any

import torch

from vision.deepcache.layout import Layout


def unet_forward(u: Any, layout: Layout, b: int, cached: torch.Tensor | None, sample: torch.Tensor, timestep: Any,
                 encoder_hidden_states: torch.Tensor, class_labels: Any = None, timestep_cond: Any = None,
                 attention_mask: Any = None, cross_attention_kwargs: Any = None, added_cond_kwargs: Any = None,
                 down_block_additional_residuals: Any = None, mid_block_additional_residual: Any = None,
                 encoder_attention_mask: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """UNet ``u`` (layout ``layout``, branch ``b``) on a full step (``cached is None``: returns the output
    and the feature to cache) or a retrieval step on ``cached`` (returns the output and None)."""
    forward_upsample_size = any(d % (2 ** u.num_upsamplers) != 0 for d in sample.shape[-2:])
    if attention_mask is not None:
        attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
    if encoder_attention_mask is not None:
        encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
    if u.config.center_input_sample:
        sample = 2 * sample - 1.0
    emb = u.time_embedding(u.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
    class_emb = u.get_class_embed(sample=sample, class_labels=class_labels)
    if class_emb is not None:
        emb = torch.cat([emb, class_emb], dim=-1) if u.config.class_embeddings_concat else emb + class_emb
    aug_emb = u.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                              added_cond_kwargs=added_cond_kwargs)
    if u.config.addition_embed_type == "image_hint":
        aug_emb, hint = aug_emb
        sample = torch.cat([sample, hint], dim=1)
    emb = emb + aug_emb if aug_emb is not None else emb
    if u.time_embed_act is not None:
        emb = u.time_embed_act(emb)
    ehs = u.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                          added_cond_kwargs=added_cond_kwargs)
    h = u.conv_in(sample)
    cak = cross_attention_kwargs
    if cak is not None and cak.get("gligen", None) is not None:
        cak = dict(cak)
        cak["gligen"] = {"objs": u.position_net(**cak.pop("gligen"))}
    ctx = {"encoder_hidden_states": ehs, "attention_mask": attention_mask, "cross_attention_kwargs": cak,
           "encoder_attention_mask": encoder_attention_mask}
    controlnet = down_block_additional_residuals is not None and mid_block_additional_residual is not None

    skips = [h]
    if cached is None:  # full step: whole down blocks and the mid block, as diffusers runs them
        for block in u.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=emb, **ctx)
            else:
                h, res = block(hidden_states=h, temb=emb)
            skips.extend(res)
        if controlnet:
            skips = [s + r for s, r in zip(skips, down_block_additional_residuals)]
        if u.mid_block is not None:
            if getattr(u.mid_block, "has_cross_attention", False):
                h = u.mid_block(h, emb, **ctx)
            else:
                h = u.mid_block(h, emb)
        if controlnet:
            h = h + mid_block_additional_residual
    else:  # retrieval step: conv_in and the down layers up to the branch
        for d, r in layout.down[:b]:
            h = _down_layer(u.down_blocks[d], r, h, emb, ctx)
            skips.append(h)
        if controlnet:
            skips = [s + r for s, r in zip(skips, down_block_additional_residuals)]
        h = cached

    feature = None
    last = len(u.up_blocks) - 1
    for k, block in enumerate(u.up_blocks):
        first, n = layout.up_first[k], layout.up_len[k]
        if first - n + 1 > b:  # entirely deeper than the branch: full steps only, as a whole block
            if cached is not None:
                continue
            res = tuple(skips[first - n + 1: first + 1])
            size = skips[first - n].shape[2:] if k != last and forward_upsample_size else None
            if getattr(block, "has_cross_attention", False):
                h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, upsample_size=size,
                          encoder_hidden_states=ehs, cross_attention_kwargs=cak, attention_mask=attention_mask,
                          encoder_attention_mask=encoder_attention_mask)
            else:
                h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, upsample_size=size)
            continue
        for r in range(n):
            j = first - r
            if j > b and cached is not None:
                continue
            if j == b and cached is None:
                feature = h
            h = _up_layer(block, r, h, skips[j], emb, ctx)
        if block.upsamplers is not None:
            size = skips[first - n].shape[2:] if k != last and forward_upsample_size else None
            for upsampler in block.upsamplers:
                h = upsampler(h, size)

    if u.conv_norm_out is not None:
        h = u.conv_act(u.conv_norm_out(h))
    return u.conv_out(h), feature


def _down_layer(block: Any, r: int, h: torch.Tensor, emb: torch.Tensor, ctx: dict) -> torch.Tensor:
    if r == len(block.resnets):
        for downsampler in block.downsamplers:
            h = downsampler(h)
        return h
    h = block.resnets[r](h, emb)
    if getattr(block, "attentions", None) is not None:
        h = block.attentions[r](h, **ctx, return_dict=False)[0]
    return h


def _freeu(block: Any) -> bool:
    return bool(getattr(block, "s1", None) and getattr(block, "s2", None) and getattr(block, "b1", None)
                and getattr(block, "b2", None))


def _up_layer(block: Any, r: int, h: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor, ctx: dict) -> torch.Tensor:
    if _freeu(block):  # apply_freeu scales its input in place: never touch the cached tensor
        from diffusers.utils.torch_utils import apply_freeu

        h, skip = apply_freeu(block.resolution_idx, h.clone(), skip, s1=block.s1, s2=block.s2, b1=block.b1,
                              b2=block.b2)
    h = block.resnets[r](torch.cat([h, skip], dim=1), emb)
    if getattr(block, "attentions", None) is not None:
        h = block.attentions[r](h, **ctx, return_dict=False)[0]
    return h


class LoraScale:
    """Scale PEFT LoRA layers for one call, as ``UNet2DConditionModel.forward`` does."""

    def __init__(self, model: Any, scale: float):
        self.model, self.scale = model, scale

    def __enter__(self) -> None:
        from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers

        self.active = USE_PEFT_BACKEND
        if self.active:
            scale_lora_layers(self.model, self.scale)

    def __exit__(self, *exc: Any) -> None:
        if self.active:
            from diffusers.utils import unscale_lora_layers

            unscale_lora_layers(self.model, self.scale)


# ---------------------------------------------------------------------------------- the mirrored source
MIRRORED_DIFFUSERS = "0.39.0"
MIRRORED_FUNCTIONS = (  # module, qualified name: the diffusers code this module restates
    ("diffusers.models.unets.unet_2d_condition", "UNet2DConditionModel.forward"),
    ("diffusers.models.unets.unet_2d_blocks", "CrossAttnDownBlock2D.forward"),
    ("diffusers.models.unets.unet_2d_blocks", "DownBlock2D.forward"),
    ("diffusers.models.unets.unet_2d_blocks", "CrossAttnUpBlock2D.forward"),
    ("diffusers.models.unets.unet_2d_blocks", "UpBlock2D.forward"),
    ("diffusers.utils.peft_utils", "apply_lora_scale"),
    ("diffusers.models.controlnets.controlnet", "ControlNetModel.forward"),  # vision/deepcache/controlnet.py
)
# diffusers version -> function -> first 16 hex digits of the sha256 of its code (see source_hash)
MIRRORS: dict[str, dict[str, str]] = {
    "0.39.0": {
        "diffusers.models.unets.unet_2d_condition.UNet2DConditionModel.forward": "c38f02369325e0a4",
        "diffusers.models.unets.unet_2d_blocks.CrossAttnDownBlock2D.forward": "f2a23145dd70f3a6",
        "diffusers.models.unets.unet_2d_blocks.DownBlock2D.forward": "d34a57726dc70f7c",
        "diffusers.models.unets.unet_2d_blocks.CrossAttnUpBlock2D.forward": "5483b1f0b4a0f431",
        "diffusers.models.unets.unet_2d_blocks.UpBlock2D.forward": "77f599338a770a12",
        "diffusers.utils.peft_utils.apply_lora_scale": "a3b0b090cb701f2b",
        "diffusers.models.controlnets.controlnet.ControlNetModel.forward": "ca3c23690b7789b2",
    },
}


def source_hash(module: str, qualname: str) -> str:
    """A hash of a function's code: its AST unparsed without docstrings (so comments, blank lines and
    docstring edits do not count, any code change does); 16 hex digits."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(obj))))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.unparse(tree).encode()).hexdigest()[:16]


def installed_hashes() -> dict[str, str]:
    """:func:`source_hash` of every mirrored function in the installed diffusers."""
    return {f"{module}.{name}": source_hash(module, name) for module, name in MIRRORED_FUNCTIONS}


@functools.lru_cache(maxsize=1)
def mirror_problem() -> str | None:
    """None when the installed diffusers' mirrored functions are those of a version in :data:`MIRRORS`;
    else a message naming the changed functions and what to do."""
    import diffusers

    installed = installed_hashes()
    if any(installed == recorded for recorded in MIRRORS.values()):
        return None
    known = MIRRORS.get(diffusers.__version__) or MIRRORS[MIRRORED_DIFFUSERS]
    changed = sorted(name for name, digest in installed.items() if known.get(name) != digest)
    return (f"diffusers {diffusers.__version__} changed {', '.join(changed)} from the code that "
            f"vision/deepcache/unet_forward.py mirrors (diffusers {MIRRORED_DIFFUSERS}): DeepCache's full and "
            "retrieval paths may no longer equal the UNet's forward. Compare the functions, update "
            "unet_forward.py, and record installed_hashes() under the new version in MIRRORS")


@functools.lru_cache(maxsize=1)
def warn_if_mirror_is_stale() -> None:
    """Warn (once per process) when :func:`mirror_problem` finds a difference."""
    problem = mirror_problem()
    if problem is not None:
        warnings.warn(problem, RuntimeWarning, stacklevel=3)
