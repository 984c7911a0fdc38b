"""The inputs of CorrCLIP's equality tests, built the same way here and in the reference harness.

Small random models whose weights do not depend on any library's initialisation (each parameter is
drawn, in name order, from one seeded generator), and two hand-made cases (an image and its region id
map). ``tests/fixtures/corrclip/README.md`` says how the reference's outputs on them were produced.

The CLIP has 12 blocks (ViT-B's depth, so the spatial branch averages blocks 5..9 as in the paper
setting) and patch 14; the DINO has patch 8 (DINO ViT-B/8's): the window of 56 pixels is then a 4x4
CLIP grid and a 7x7 DINO grid, so CLIP's values are resized to DINO's grid as in the reference.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

CLIP_LAYERS, CLIP_WIDTH, CLIP_PATCH, EMBED = 12, 32, 14, 32
DINO_WIDTH, DINO_PATCH = 32, 8
WINDOW, STRIDE, LOGIT_SCALE = 56, 14, 40.0
CLASS_NAMES = [["sky", "grass", "tree"], ["cat"], ["dog"]]  # class 0 (background) has three names


def seeded_fill(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter, in name order, with draws of one seeded generator: biases N(0, 0.02),
    norm weights 1 + N(0, 0.1), matrices N(0, 1/fan_in), other vectors N(0, 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, param in sorted(model.named_parameters()):
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
        if name.endswith("bias"):
            value = 0.02 * noise
        elif param.ndim == 1 and ("ln" in name or "norm" in name):
            value = 1.0 + 0.1 * noise
        elif param.ndim >= 2:
            value = noise / math.sqrt(math.prod(param.shape[1:]))
        else:
            value = 0.1 * noise
        state[name] = value.to(param.dtype)
    model.load_state_dict(state, strict=False)
    return model.eval()


def clip_config() -> tuple[dict, dict]:
    """(vision, text) settings of the test CLIP (fields both open_clip versions know)."""
    vision = {"layers": CLIP_LAYERS, "width": CLIP_WIDTH, "head_width": 16, "patch_size": CLIP_PATCH, "image_size": 224}
    text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
    return vision, text


@functools.cache
def build_clip() -> torch.nn.Module:
    """open_clip ``CLIP`` (quick-GELU) with the settings of :func:`clip_config` and seeded weights (one
    instance per process: tests must not change it)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision, text = clip_config()
    model = CLIP(embed_dim=EMBED, vision_cfg=CLIPVisionCfg(**vision), text_cfg=CLIPTextCfg(**text), quick_gelu=True)
    return seeded_fill(model, seed=1)


@functools.cache
def build_dino() -> torch.nn.Module:
    """transformers ``ViTModel`` in DINO ViT-B/8's layout (patch 8, LayerNorm eps 1e-6), seeded weights."""
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=DINO_WIDTH, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    patch_size=DINO_PATCH, image_size=224, layer_norm_eps=1e-6, qkv_bias=True)
    return seeded_fill(ViTModel(cfg, add_pooling_layer=False), seed=2)


@dataclass(frozen=True)
class Case:
    """An original image of ``original`` (rows, cols), resized (bilinear) to ``size``, its region ids at
    the original size, and the settings of the run."""

    name: str
    original: tuple[int, int]
    size: tuple[int, int]
    prob_thd: float


CASES = {
    # An unsegmented strip (left) and four regions; regions 1 and 2 share their colour (they merge).
    "regions": Case("regions", (14, 21), (56, 84), 0.2),
    # Every pixel in a region (no id 0) and a resized height under the window (padded windows).
    "covered_padded": Case("covered_padded", (10, 20), (40, 80), 0.0),
}


def case_ids(case: Case) -> np.ndarray:
    """Region id map [rows, cols] int32 at the original size."""
    h, w = case.original
    ids = np.zeros((h, w), dtype=np.int32)
    if case.name == "regions":
        ids[:7, 3:10], ids[:7, 10:17], ids[7:, 3:13], ids[7:, 13:] = 1, 2, 3, 4
    else:
        ids[:, :6], ids[:, 6:11], ids[:5, 11:], ids[5:, 11:] = 7, 3, 9, 5
    return ids


def case_image(case: Case) -> np.ndarray:
    """RGB uint8 [rows, cols, 3] at the original size: one colour per region plus seeded noise."""
    colours = {0: (128, 128, 128), 1: (200, 40, 40), 2: (200, 40, 40), 3: (40, 180, 60), 4: (40, 60, 200),
               5: (220, 200, 40), 7: (90, 30, 150), 9: (20, 160, 170)}
    ids = case_ids(case)
    image = np.zeros((*case.original, 3), dtype=np.float64)
    for region, colour in colours.items():
        image[ids == region] = colour
    noise = np.random.default_rng(7).normal(0.0, 12.0, image.shape)
    return np.clip(image + noise, 0, 255).round().astype(np.uint8)


def case_resized(case: Case) -> np.ndarray:
    """The image at ``case.size`` (cv2 bilinear, as mmseg's ``Resize``): RGB uint8 [rows, cols, 3]."""
    import cv2

    return cv2.resize(case_image(case), (case.size[1], case.size[0]), interpolation=cv2.INTER_LINEAR)
