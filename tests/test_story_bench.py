"""The Story-Adapter benchmark builds SD1.5's and IP-Adapter's FULL-SIZE architectures (checked on the
meta device: parameter counts of the published models, no memory used)."""

import importlib.util
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent.parent / "bench" / "story.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_story", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_benchmark_models_are_full_size():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    bench = _bench()
    assert callable(bench.main)
    with torch.device("meta"):
        assert _count(UNet2DConditionModel(**bench.SD15_UNET)) == 859_520_964  # SD1.5 UNet
        assert _count(AutoencoderKL(**bench.SD15_VAE)) == 83_653_863  # SD1.5 VAE
        assert _count(CLIPTextModel(CLIPTextConfig(**bench.SD15_TEXT))) == 123_060_480  # CLIP ViT-L/14 text
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**bench.VIT_H_IMAGE))
        assert _count(vision) == 632_076_800  # OpenCLIP ViT-H/14 image tower + projection (IP-Adapter SD1.5)
        assert vision.config.projection_dim == 1024


def test_benchmark_markdown_table():
    bench = _bench()
    summary = {"settings": {"device": "cpu", "generated_frames": 2, "deepcache_interval": 3},
               "machine": {"cpu": "x"}, "ratio": 2.0,
               "modes": {"off": {"seconds": 10.0, "encode_seconds": 1.0, "peak_gib": None},
                         "N=3": {"seconds": 5.0, "encode_seconds": 1.0, "peak_gib": None}}}
    text = bench.markdown(summary)
    assert "2.00x" in text and "| DeepCache off | 10.00 | 5.00 |" in text
