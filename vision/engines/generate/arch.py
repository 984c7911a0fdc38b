"""The module configurations of the SD1.5 and SDXL architectures, for loading single-file checkpoints.

A single ``.safetensors`` checkpoint holds weights but no configuration; diffusers' ``from_single_file``
reads the configuration from a diffusers-layout folder (``config=``), which it would otherwise fetch from
the Hub. :func:`config_folder` writes that folder: with full-size models, the configurations below (those
of ``stable-diffusion-v1-5`` and ``stable-diffusion-xl-base-1.0``; tests/test_generate_models.py checks
their parameter counts); with tiny models, the tiny hub modules' own configurations.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

_CLIP_L = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": 49408,
           "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
           "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05,
           "projection_dim": 768, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
_VAE = {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
        "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32, "act_fn": "silu",
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
_UNET = {"_class_name": "UNet2DConditionModel", "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
         "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-05, "flip_sin_to_cos": True, "freq_shift": 0,
         "center_input_sample": False, "downsample_padding": 1, "mid_block_scale_factor": 1}

REAL_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "sd15": {
        "unet": {**_UNET, "sample_size": 64, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768,
                 "attention_head_dim": 8, "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3},
        "vae": {**_VAE, "sample_size": 512, "scaling_factor": 0.18215},
        "text_encoder": _CLIP_L,
    },
    "sdxl": {
        "unet": {**_UNET, "sample_size": 128, "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
                 "attention_head_dim": [5, 10, 20], "transformer_layers_per_block": [1, 2, 10],
                 "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
                 "projection_class_embeddings_input_dim": 2816,
                 "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]},
        "vae": {**_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
        "text_encoder": _CLIP_L,
        "text_encoder_2": {**_CLIP_L, "architectures": ["CLIPTextModelWithProjection"], "hidden_size": 1280,
                           "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
                           "hidden_act": "gelu", "projection_dim": 1280},
    },
}
BASE_FAMILY = {"sd15": "sd15", "sdxl": "sdxl"}  # the hub family whose tokenizers and scheduler a checkpoint uses
PIPELINES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
_CLASSES = {"unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
            "text_encoder": ("transformers", "CLIPTextModel"),
            "text_encoder_2": ("transformers", "CLIPTextModelWithProjection")}


def module_configs(hub: Any, arch: str) -> dict[str, dict[str, Any]]:
    """``{part: config dict}`` of ``arch``: the tiny hub modules' own, else :data:`REAL_CONFIGS`."""
    if not getattr(hub, "tiny", False):
        return REAL_CONFIGS[arch]
    from vision.engines.generate.config import family_spec

    spec = family_spec(BASE_FAMILY[arch])
    out = {}
    for part in REAL_CONFIGS[arch]:
        config = hub.get(spec[part]).config
        out[part] = dict(config) if part in ("unet", "vae") else config.to_dict()
    return out


def config_folder(hub: Any, arch: str) -> Path:
    """A diffusers-layout folder of ``arch``'s configurations (``model_index.json`` and one
    ``config.json`` per module), written once per process and model size (tiny or full)."""
    return _write_folder(arch, json.dumps(module_configs(hub, arch), sort_keys=True, default=list))


@functools.lru_cache(maxsize=8)
def _write_folder(arch: str, configs_json: str) -> Path:
    import diffusers

    configs = json.loads(configs_json)
    folder = Path(tempfile.mkdtemp(prefix=f"vision-{arch}-config-"))
    index: dict[str, Any] = {"_class_name": PIPELINES[arch], "_diffusers_version": diffusers.__version__,
                             "scheduler": ["diffusers", "DDIMScheduler"],
                             "tokenizer": ["transformers", "CLIPTokenizer"]}
    if arch == "sdxl":
        index["tokenizer_2"] = ["transformers", "CLIPTokenizer"]
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None])
    for part, config in configs.items():
        index[part] = list(_CLASSES[part])
        (folder / part).mkdir()
        (folder / part / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    return folder
