"""Tiny model FILES in the real formats users bring, written from tiny models (for tests and ``--tiny``).

* :func:`write_sd_checkpoint`: a single-file SD1.5 / SDXL checkpoint in the original (LDM / A1111 /
  ComfyUI) key layout: ``model.diffusion_model.*`` (UNet, ``input_blocks`` / ``middle_block`` /
  ``output_blocks``), ``first_stage_model.*`` (VAE, conv-1x1 attention), ``cond_stage_model.transformer.*``
  (SD1.x CLIP) or ``conditioner.embedders.0.transformer.*`` + ``conditioner.embedders.1.model.*``
  (SDXL: CLIP-L, and OpenCLIP bigG's layout with fused ``in_proj`` and a ``[width, proj]`` projection).
* :func:`write_lora`: a LoRA ``.safetensors`` in kohya's layout (``lora_unet_*.lora_down/lora_up/alpha``,
  what most shared LoRAs use) or diffusers' (``unet.*.lora_A/lora_B``).
* :func:`write_controlnet`: a ControlNet as a diffusers folder (``config.json`` + safetensors), the
  layout of the standard ControlNet checkpoints.

The key renaming here is the inverse of diffusers' single-file conversion; tests load these files
through the same code path as real ones (:mod:`vision.engines.generate.models`) and compare weights.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet(rest: str) -> str:
    for new, old in _RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def ldm_unet_key(key: str, unet: Any) -> str:
    """A diffusers ``UNet2DConditionModel`` state-dict key -> its original-layout key (no prefix)."""
    per_level = unet.config.layers_per_block + 1
    head, _, rest = key.rpartition(".")
    if head in _UNET_FIXED:
        return f"{_UNET_FIXED[head]}.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        part = f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}"
        return f"input_blocks.{per_level * i + j + 1}.{part}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{per_level * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        if m[1] == "attentions":
            return f"middle_block.1.{m[3]}"
        return f"middle_block.{2 * int(m[2])}.{_resnet(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        part = f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}"
        return f"output_blocks.{per_level * i + j}.{part}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        i = int(m[1])
        slot = 2 if getattr(unet.up_blocks[i], "attentions", None) is not None else 1
        return f"output_blocks.{per_level * i + per_level - 1}.{slot}.conv.{m[2]}"
    raise KeyError(f"no original-layout name for UNet key {key}")


def ldm_vae_key(key: str, vae: Any) -> str:
    """A diffusers ``AutoencoderKL`` key -> its original-layout key (no prefix)."""
    levels = len(vae.config.block_out_channels)
    key = key.replace("conv_norm_out", "norm_out")
    if m := re.fullmatch(r"(encoder)\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[2]}.block.{m[3]}.{m[4].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)",
                         key):
        name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[m[2]]
        return f"{m[1]}.mid.attn_1.{name}.{m[3]}"
    return key  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv keep their names


def _vae_tensor(key: str, value: torch.Tensor) -> torch.Tensor:
    """The original VAE's attention projections are 1x1 convolutions: Linear [C, C] -> [C, C, 1, 1]."""
    if ".mid.attn_1." in key and key.endswith(".weight") and value.ndim == 2:
        return value[:, :, None, None]
    return value


def open_clip_text_state(encoder: Any) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` state dict in OpenCLIP's layout (SDXL's second text encoder)."""
    out: dict[str, torch.Tensor] = {}
    state = encoder.state_dict()
    tm = "text_model."
    out["token_embedding.weight"] = state[tm + "embeddings.token_embedding.weight"]
    out["positional_embedding"] = state[tm + "embeddings.position_embedding.weight"]
    out["ln_final.weight"], out["ln_final.bias"] = state[tm + "final_layer_norm.weight"], state[
        tm + "final_layer_norm.bias"]
    out["text_projection"] = state["text_projection.weight"].T.contiguous()
    for i in range(encoder.config.num_hidden_layers):
        src, dst = f"{tm}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")])
            for new, old in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[f"{dst}{new}.{kind}"] = state[f"{src}{old}.{kind}"]
    return out


def sd_checkpoint_state(unet: Any, vae: Any | None, text_encoder: Any | None,
                        text_encoder_2: Any | None = None) -> dict[str, torch.Tensor]:
    """The original-layout state dict of an SD1.5 (``text_encoder_2`` None) or SDXL checkpoint; a part
    given as None is left out (as in UNet-only files)."""
    state = {f"model.diffusion_model.{ldm_unet_key(k, unet)}": v for k, v in unet.state_dict().items()}
    if vae is not None:
        for k, v in vae.state_dict().items():
            name = f"first_stage_model.{ldm_vae_key(k, vae)}"
            state[name] = _vae_tensor(name, v)
    if text_encoder is not None:
        xl = text_encoder_2 is not None
        prefix = "conditioner.embedders.0.transformer." if xl else "cond_stage_model.transformer."
        state.update({prefix + k: v for k, v in text_encoder.state_dict().items()})
    if text_encoder_2 is not None:
        state.update({f"conditioner.embedders.1.model.{k}": v for k, v in open_clip_text_state(text_encoder_2).items()})
    return {k: v.detach().contiguous() for k, v in state.items()}


def write_sd_checkpoint(path: str | Path, unet: Any, vae: Any | None, text_encoder: Any | None,
                        text_encoder_2: Any | None = None) -> Path:
    """Write :func:`sd_checkpoint_state` as one ``.safetensors`` file; returns its path."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(sd_checkpoint_state(unet, vae, text_encoder, text_encoder_2), str(path))
    return path


def lora_state(unet: Any, rank: int = 4, seed: int = 0, layout: str = "kohya",
               targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")) -> dict[str, torch.Tensor]:
    """A random LoRA for ``unet``'s attention projections: down ``[rank, in]``, up ``[out, rank]`` (and
    kohya's ``alpha`` = rank, i.e. scale 1), in ``layout`` ``kohya`` or ``diffusers``."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear) or not any(name.endswith("." + t) for t in targets):
            continue
        down = torch.randn(rank, module.in_features, generator=generator) * 0.2
        up = torch.randn(module.out_features, rank, generator=generator) * 0.2
        if layout == "kohya":
            base = "lora_unet_" + name.replace(".", "_")
            state.update({f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up,
                          f"{base}.alpha": torch.tensor(float(rank))})
        else:
            state.update({f"unet.{name}.lora_A.weight": down, f"unet.{name}.lora_B.weight": up})
    return state


def write_lora(path: str | Path, unet: Any, rank: int = 4, seed: int = 0, layout: str = "kohya") -> Path:
    """Write :func:`lora_state` as a ``.safetensors`` LoRA file; returns its path."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(lora_state(unet, rank, seed, layout), str(path))
    return path


def write_controlnet(folder: str | Path, unet: Any, seed: int = 0) -> Path:
    """A ControlNet of ``unet``'s layout (:func:`vision.tiny.controlnet_from`: random zero convolutions)
    saved as a diffusers folder; returns the folder."""
    from vision.tiny import controlnet_from

    folder = Path(folder)
    controlnet_from(unet, seed).save_pretrained(folder)
    return folder
