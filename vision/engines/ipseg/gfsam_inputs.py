"""GF-SAM's inputs: the frame SAM sees, the DINOv2 tokens of the reference's square, and the prompt
region's weight per grid cell (step 0-1 of :mod:`vision.engines.ipseg.gfsam`).

Reference mode works on the reference's square: the image stretched to 1024x1024 by PIL bilinear (what
``transforms.Resize((1024, 1024))`` does to a PIL image), as float [0, 1] (``ToTensor``); SAM gets that
square back as uint8 through ``mul(255).byte()`` (truncating), DINOv2 gets it resized to 518 (bilinear, no
antialiasing: the reference's pinned torchvision 0.14.1 did not antialias tensors) and ImageNet-normalised.
Our default frame is the image as ``SamPredictor`` resizes it (long side 1024, aspect kept).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REFERENCE_SIDE = 1024  # the reference's square (SAM's input size)
REFERENCE_DINO_SIZE = 518  # the reference's DINOv2 input side (37 x 37 patches of 14)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GFSAMInputError(ValueError):
    """An input GF-SAM cannot use; the message names the field."""


# ------------------------------------------------------------------------------------------ frames
def reference_square(image: np.ndarray, side: int = REFERENCE_SIDE) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> float32 [3, side, side] in [0, 1]: stretched by PIL bilinear, then
    ``to_tensor`` (the reference's dataset transform)."""
    from torchvision.transforms.functional import to_tensor

    return to_tensor(Image.fromarray(np.ascontiguousarray(image)).resize((side, side), Image.BILINEAR))


def reference_sam_frame(square: torch.Tensor) -> np.ndarray:
    """The square [3, S, S] in [0, 1] -> the uint8 [S, S, 3] image the reference gives SAM
    (``mul(255).byte()``: truncation, so a float just below a level drops by one)."""
    return square.mul(255).byte().permute(1, 2, 0).numpy()


def sam_frame(image: np.ndarray, side: int = REFERENCE_SIDE) -> np.ndarray:
    """Our frame: RGB uint8 [H, W, 3] resized as ``SamPredictor`` resizes it (long side ``side``, aspect
    kept, ``ResizeLongestSide``): encoding the frame gives the image's own embedding, and the point masks
    stay at most ``side`` pixels on a side."""
    from segment_anything.utils.transforms import ResizeLongestSide

    return ResizeLongestSide(side).apply_image(np.ascontiguousarray(image))


# ---------------------------------------------------------------------------------------- features
def reference_dino_pixels(square: torch.Tensor, size: int = REFERENCE_DINO_SIZE) -> torch.Tensor:
    """The square [3, S, S] in [0, 1] -> DINOv2's input float32 [1, 3, size, size]: bilinear without
    antialiasing, then ImageNet mean/std (the reference's ``encoder_transform``)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import normalize, resize

    pixels = resize(square, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=False)
    return normalize(pixels, IMAGENET_MEAN, IMAGENET_STD)[None]


def dino_prenorm_tokens(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Patch tokens of DINOv2's last block before its final LayerNorm (the reference's ``x_prenorm``,
    transformers' ``hidden_states[-1]``), CLS dropped: pixels [1, 3, S, S] -> float32 [N, C], N = (S / 14)^2."""
    param = next(model.parameters())
    with torch.no_grad():
        hidden = model(pixel_values=pixels.to(device=param.device, dtype=param.dtype),
                       output_hidden_states=True).hidden_states[-1]
    patches = (pixels.shape[-2] // model.config.patch_size) * (pixels.shape[-1] // model.config.patch_size)
    return hidden[0, -patches:].float().cpu()


# ------------------------------------------------------------------------------- region on the grid
def reference_region_weights(mask: np.ndarray, grid: int, side: int = REFERENCE_SIDE) -> torch.Tensor:
    """The reference's prompt mask on the grid: bool [H, W] -> nearest to [side, side] (its dataset), then
    bilinear with ``align_corners=True`` to [grid, grid] (``generate_prior``): float32 [grid * grid]."""
    square = F.interpolate(torch.as_tensor(np.asarray(mask), dtype=torch.float32)[None, None], (side, side),
                           mode="nearest")
    return F.interpolate(square, (grid, grid), mode="bilinear", align_corners=True).flatten()


def region_weights(mask: np.ndarray, grid: int) -> torch.Tensor:
    """Our prompt mask on the grid: the share of each of the grid's cells (the grid spans the image) that
    the bool mask [H, W] covers: float32 [grid * grid] in [0, 1]."""
    pixels = torch.as_tensor(np.asarray(mask), dtype=torch.float32)[None, None]
    return F.adaptive_avg_pool2d(pixels, (grid, grid)).flatten()


def checked_weights(weights: torch.Tensor, field: str) -> torch.Tensor:
    """``weights`` [N] unchanged, or :class:`GFSAMInputError` naming ``field`` when the region reaches no
    cell of the grid. (A region covering every cell is fine: the negative map is then 0 and filters nothing.)"""
    if not bool((weights > 0).any()):
        side = round(len(weights) ** 0.5)
        raise GFSAMInputError(f"{field}: the prompt region reaches no cell of the {side}x{side} feature grid "
                              "(mark a larger part of the concept)")
    return weights
