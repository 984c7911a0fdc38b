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
from pathlib import Path
from typing import Any

import torch

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


def write_report(text: str, report: dict[str, Any], out: str | None) -> None:
    """Print the Markdown report; with ``out``, also write it there and the JSON ``report`` beside it."""
    print(text)
    if out:
        Path(out).write_text(text, encoding="utf-8")
        Path(out).with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
