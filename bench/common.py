"""What every benchmark shares: SD1.5's full-size configurations and a description of the machine.

The configurations are those of ``stable-diffusion-v1-5`` (``unet/``, ``vae/``, ``text_encoder/``
config.json) and of IP-Adapter SD1.5's ViT-H/14 image encoder; every argument not listed is the class
default, which for these classes is the real model's value. Benchmarks build them with random weights:
speed is a property of the architecture, not of the weights.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"  # the recorded results, tracked in git


def add_save_option(parser: Any, what: str) -> None:
    """``--save``: also write the report into ``bench/results/`` (the recorded results, tracked in git). Without
    it (or ``--out``) a benchmark only prints: a run on a user's machine never overwrites the recorded ones."""
    parser.add_argument("--save", action="store_true", help=f"write {what} into bench/results/ (the recorded "
                        "results, tracked in git); without it or --out the report is only printed")


def report_path(args: Any, name: str, out: str | None = None) -> Path | None:
    """Where a benchmark writes its report: ``out`` (its ``--out``/``--results``), else ``bench/results/NAME``
    with ``--save``, else None (print only)."""
    if out:
        return Path(out)
    return RESULTS / name if getattr(args, "save", False) else None


SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, sample_size=512, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                 projection_dim=768, pad_token_id=1, bos_token_id=0, eos_token_id=2)
VIT_H_IMAGE = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                   image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu")
# IP-Adapter SDXL's image encoder (h94/IP-Adapter sdxl_models/image_encoder/config.json): OpenCLIP ViT-bigG/14
VIT_BIGG_IMAGE = dict(hidden_size=1664, intermediate_size=8192, num_hidden_layers=48, num_attention_heads=16,
                      image_size=224, patch_size=14, projection_dim=1280, hidden_act="gelu")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _uname() -> str:
    try:
        return subprocess.run(["uname", "-a"], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return " ".join(platform.uname())


def machine() -> dict[str, Any]:
    """The machine and library versions a benchmark ran with (``gpu`` only when CUDA is available)."""
    import diffusers
    import numpy
    import PIL
    import transformers

    info: dict[str, Any] = {
        "uname": _uname(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "numpy": numpy.__version__, "pillow": PIL.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


# ------------------------------------------------------------------------------ full-size models, GPU

# SDXL base 1.0 (``unet/``, ``text_encoder_2/`` config.json; its ``text_encoder`` is SD1.5's CLIP-L and
# its VAE SD1.5's architecture at 1024 px).
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
SDXL_VAE = {**SD15_VAE, "sample_size": 1024, "scaling_factor": 0.13025}
SDXL_TEXT_2 = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                   num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
                   pad_token_id=1, bos_token_id=0, eos_token_id=2)


def _full_size_builders() -> dict[str, Any]:
    """Hub name -> ``build(device)``: the full-size architecture with random weights (no download)."""
    import open_clip
    import segment_anything as sa
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        Dinov2Config,
        Dinov2Model,
        ViTConfig,
        ViTModel,
    )

    return {
        "dinov2_b14": lambda d: Dinov2Model(Dinov2Config(patch_size=14, image_size=518)),
        "dino_b16": lambda d: ViTModel(ViTConfig(patch_size=16), add_pooling_layer=False),
        # open_clip moves the model to its `device` argument (default cpu): give it the target device
        "clip_b16": lambda d: open_clip.create_model("ViT-B-16-quickgelu", device=d),
        "clip_h14": lambda d: open_clip.create_model("ViT-H-14", device=d),
        "sam_b": lambda d: sa.build_sam_vit_b(checkpoint=None),
        "sam_h": lambda d: sa.build_sam_vit_h(checkpoint=None),
        "sd15_unet": lambda d: UNet2DConditionModel(**SD15_UNET),
        "sd15_vae": lambda d: AutoencoderKL(**SD15_VAE),
        "sd15_text_encoder": lambda d: CLIPTextModel(CLIPTextConfig(**SD15_TEXT)),
        "sdxl_unet": lambda d: UNet2DConditionModel(**SDXL_UNET),
        "sdxl_vae": lambda d: AutoencoderKL(**SDXL_VAE),
        "sdxl_text_encoder": lambda d: CLIPTextModel(CLIPTextConfig(**SD15_TEXT)),
        "sdxl_text_encoder_2": lambda d: CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_2)),
        "ip_image_encoder_h": lambda d: CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H_IMAGE)),
        "ip_image_encoder_bigg": lambda d: CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_BIGG_IMAGE)),
    }


FULL_SIZE_NAMES = ("dinov2_b14", "dino_b16", "clip_b16", "clip_h14", "sam_b", "sam_h", "sd15_unet", "sd15_vae",
                   "sd15_text_encoder", "sdxl_unet", "sdxl_vae", "sdxl_text_encoder", "sdxl_text_encoder_2",
                   "ip_image_encoder_h", "ip_adapter_sd15", "ip_image_encoder_bigg", "ip_adapter_sdxl")


def full_size_model(name: str, device: str, dtype: torch.dtype) -> Any:
    """A full-size random-weight model ``name`` (a hub name), built directly on ``device`` (seeded: the
    parameters are initialised there, so a GPU builds in a second what a CPU takes many to), in eval mode.
    ``ip_adapter_sd15`` and ``ip_adapter_sdxl`` are made by :func:`put_full_size`, which knows the UNet they are
    sized for."""
    builders = _full_size_builders()
    if name not in builders:
        raise KeyError(f"no full-size builder for {name!r}; known: {', '.join(builders)}")
    torch.manual_seed(0)
    with torch.device(device):
        model = builders[name](device)
    return model.to(device=device, dtype=dtype).eval()


ADAPTER_FOR = {"ip_adapter_sd15": ("sd15_unet", VIT_H_IMAGE["projection_dim"]),
               "ip_adapter_sdxl": ("sdxl_unet", VIT_BIGG_IMAGE["projection_dim"])}


def put_full_size(hub: Any, names: list[str] | tuple[str, ...]) -> dict[str, float]:
    """Put full-size random-weight instances of ``names`` that ``hub`` does not hold yet into it, in the
    hub's dtype policy (fp16 on CUDA, SAM fp32). Returns the seconds each build took."""
    from vision import tiny

    built = {}
    for name in names:
        if hub.is_loaded(name):
            continue
        start = time.perf_counter()
        if name in ADAPTER_FOR:  # h94/IP-Adapter's layout, sized for the hub's UNet and its image encoder
            unet, width = ADAPTER_FOR[name]
            state = tiny.ip_adapter_state_dict(hub.get(unet), width)
            dtype = hub.dtype_for(name)
            model = {group: {k: v.to(device=hub.device, dtype=dtype) for k, v in sd.items()}
                     for group, sd in state.items()}
        else:
            model = full_size_model(name, hub.device, hub.dtype_for(name))
        hub.put(name, model)
        built[name] = time.perf_counter() - start
    return built


def gpu_info() -> dict[str, Any]:
    """The GPU, its driver and the CUDA stack torch runs on ({} without CUDA)."""
    if not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {
        "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count, "capability": f"sm_{props.major}{props.minor}",
        "count": torch.cuda.device_count(), "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "driver": "unknown (nvidia-smi failed)",
    }
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, check=True, timeout=20)
        info["driver"] = query.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return info


def timed_call(fn: Any, device: str) -> tuple[Any, float]:
    """``(fn(), seconds)``: CUDA events around the call on CUDA (then synchronised), else the wall clock."""
    if str(device).startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        return out, start.elapsed_time(end) / 1000
    began = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - began


def write_report(text: str, report: dict[str, Any], out: str | None) -> None:
    """Print the Markdown report; with ``out``, also write it there and the JSON ``report`` beside it."""
    print(text)
    if out:
        Path(out).write_text(text, encoding="utf-8")
        Path(out).with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
