"""Builders of the full-size foundation models from resolved weight files.

Each builder takes ``(folder, device, dtype)`` where ``folder`` holds the files listed for the model in
:mod:`vision.weights`, and returns the model in eval mode. Load failures of present files are raised as
:class:`vision.weights.WeightsCorruptError`. Tokenizers and scheduler configurations need no download:
the CLIP BPE vocabulary ships with ``open_clip`` and SD's scheduler settings are fixed numbers.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

# Stable Diffusion 1.5 / SDXL training noise schedule (identical for both).
SD_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
}


def load_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` (preferred) or ``.pth``/``.bin`` (``weights_only=True``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def dinov2(folder: Path, device: str, dtype: torch.dtype) -> Any:
    from transformers import Dinov2Model

    return Dinov2Model.from_pretrained(folder, torch_dtype=dtype).to(device)


DINO_LAYER_NORM_EPS = 1e-6  # DINO's own (facebookresearch/dino vision_transformer.py); the Hub config says 1e-12


def dino_v1(folder: Path, device: str, dtype: torch.dtype) -> Any:
    """DINO v1 ViT-B/16 (transformers' ``ViTModel``) with the LayerNorm eps it was trained with, 1e-6, the
    value of the torch.hub DINO that Trident's reference code loads (the Hub's config.json says 1e-12, which
    shifts the tokens of low-variance inputs)."""
    from transformers import ViTModel

    return ViTModel.from_pretrained(folder, add_pooling_layer=False, torch_dtype=dtype,
                                    layer_norm_eps=DINO_LAYER_NORM_EPS).to(device)


def open_clip_model(arch: str):
    def build(folder: Path, device: str, dtype: torch.dtype) -> Any:
        import open_clip

        model = open_clip.create_model(arch, pretrained=str(folder / "open_clip_model.safetensors"))
        return model.to(device=device, dtype=dtype)

    return build


def sam(arch: str):
    def build(folder: Path, device: str, dtype: torch.dtype) -> Any:
        from segment_anything import sam_model_registry

        model = sam_model_registry[arch](checkpoint=None)
        (checkpoint,) = folder.glob("sam_vit_*.pth")
        model.load_state_dict(load_torch_file(checkpoint))
        return model.to(device=device, dtype=dtype)

    return build


def sam_t(folder: Path, device: str, dtype: torch.dtype) -> Any:
    """SAM with MobileSAM's TinyViT encoder from ``sam_t.safetensors`` (see :mod:`vision.models.sam_t_weights`)."""
    from vision.models import sam_t_weights

    return sam_t_weights.load(folder).to(device=device, dtype=dtype)


def mask2former(folder: Path, device: str, dtype: torch.dtype) -> Any:
    """``Mask2FormerForUniversalSegmentation`` (transformers) from ``config.json`` + ``pytorch_model.bin``
    (transformers loads ``.bin`` files with ``weights_only=True``)."""
    from transformers import Mask2FormerForUniversalSegmentation

    return Mask2FormerForUniversalSegmentation.from_pretrained(folder, torch_dtype=dtype).to(device)


def mask2former_processor(folder: Path, device: str, dtype: torch.dtype) -> Any:
    """The checkpoint's ``Mask2FormerImageProcessor`` (its ``preprocessor_config.json``: resize, normalise)."""
    from transformers import Mask2FormerImageProcessor

    return Mask2FormerImageProcessor.from_pretrained(folder)


def sam2_video(folder: Path, device: str, dtype: torch.dtype) -> Any:
    """SAM 2.1's video model (``transformers.Sam2VideoModel``) from ``config.json`` + ``model.safetensors``."""
    from transformers import Sam2VideoModel

    return Sam2VideoModel.from_pretrained(folder, torch_dtype=dtype).to(device)


def diffusers_model(cls_name: str, subfolder: str, variant: str | None = "fp16"):
    def build(folder: Path, device: str, dtype: torch.dtype) -> Any:
        import diffusers

        cls = getattr(diffusers, cls_name)
        return cls.from_pretrained(folder, subfolder=subfolder, variant=variant, torch_dtype=dtype).to(device)

    return build


def transformers_model(cls_name: str, subfolder: str, variant: str | None = "fp16"):
    def build(folder: Path, device: str, dtype: torch.dtype) -> Any:
        import transformers

        cls = getattr(transformers, cls_name)
        return cls.from_pretrained(folder / subfolder, variant=variant, torch_dtype=dtype).to(device)

    return build


def ip_adapter_weights(filename: str):
    """IP-Adapter file -> ``{"image_proj": {...}, "ip_adapter": {...}}`` as diffusers' loader expects."""

    def build(folder: Path, device: str, dtype: torch.dtype) -> dict[str, dict[str, torch.Tensor]]:
        flat = load_torch_file(folder / filename)
        nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in flat.items():
            group, _, rest = key.partition(".")
            nested[group][rest] = value.to(device=device, dtype=dtype)
        return nested

    return build


def weights_file(filename: str):
    """A model that is one file read by its user (a LoRA: diffusers' LoRA loader reads the file) -> its path."""

    def build(folder: Path, device: str, dtype: torch.dtype) -> Path:
        path = folder / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing")
        return path

    return build


@functools.cache
def clip_tokenizer_files(folder: str | None = None) -> Path:
    """``vocab.json`` and ``merges.txt`` of the CLIP BPE that ``open_clip`` ships, written once into ``folder``
    (default: ``<weights folder>/clip_bpe``, so no process leaves a copy in the temporary folder); returns it.

    The merges are the first 48,894 lines after the header of ``bpe_simple_vocab_16e6.txt.gz`` and the
    vocabulary is the 256 byte symbols, the same with ``</w>``, the merged pairs and the two special
    tokens: 49,408 entries, the vocabulary of SD's text encoders. Files already there are reused; new ones
    are written to a temporary name and renamed, so concurrent processes never read half a file.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    from vision.weights import weights_dir

    out = Path(folder) if folder else weights_dir() / "clip_bpe"
    if (out / "vocab.json").is_file() and (out / "merges.txt").is_file():
        return out
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("vocab.json", json.dumps({tok: i for i, tok in enumerate(vocab)})),
                       ("merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")):
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, out / name)
    return out


def clip_tokenizer(pad_token: str = "<|endoftext|>") -> Any:
    """A ``transformers.CLIPTokenizer`` equal to SD's (``pad_token="!"`` gives SDXL's second one)."""
    from transformers import CLIPTokenizer

    folder = clip_tokenizer_files()
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token,
                         model_max_length=77)


def sd_scheduler() -> Any:
    """The DDIM scheduler of SD1.5/SDXL; engines derive their own with ``Cls.from_config(s.config)``."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(SD_SCHEDULER_CONFIG)


# Stable Diffusion 3.5's flow-matching schedule (its scheduler_config.json)
SD3_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 3.0}


def sd3_scheduler() -> Any:
    """SD3.5's FlowMatchEulerDiscreteScheduler (the engine derives its own with ``from_config``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER_CONFIG)


def t5_tokenizer(folder: Path, device: str, dtype: torch.dtype) -> Any:
    """SD3.5's T5 tokenizer (``tokenizer_3/``)."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(folder / "tokenizer_3")
