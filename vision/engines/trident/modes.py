"""The two behaviours ``TridentConfig.reference`` chooses between: :class:`OpenMode` (the project's) and
:class:`ReferenceMode` (the reference code's, quirks included). Each method is one difference; the list
of differences with their reasons is in :mod:`vision.engines.trident.engine`'s docstring, item numbers
in brackets. :func:`mode_for` is the only place that reads the switch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vision.classnames import CLASS_LISTS, REFERENCE_CLASS_LISTS, ClassList
from vision.engines.trident import aggregate, refine, splice


class OpenMode:
    """The project's behaviour (the "open" preset, and any preset with ``reference=False``)."""

    name = "product"
    resize_pos = staticmethod(splice.resize_pos_embed)  # [R2] CLIP's and DINO's positional embeddings
    prompts = refine.OpenPrompts()  # [R4, R5] refinement's boxes, coordinate frame and dense prompt

    def class_list(self, preset: str) -> ClassList:
        """[R7] A benchmark's class list (the strings CLIP encodes)."""
        return CLASS_LISTS[preset]

    def clip_input_shape(self, height: int, width: int, short_side: int, max_long_side: int, patch: int,
                         window: int) -> tuple[int, int]:
        """[R1] (rows, cols) of the image CLIP and DINO see, for an image of ``height`` x ``width``."""
        h, w = splice.keep_ratio_shape(height, width, short_side, max_long_side)
        return splice.round_each_side(h, w, patch, window)

    def clip_pixels(self, rgb: np.ndarray, short_side: int, max_long_side: int, patch: int, window: int,
                    device: torch.device) -> torch.Tensor:
        """[R1] The image CLIP and DINO see: [1, 3, rows, cols] float in 0..1, from RGB uint8 [H, W, 3]."""
        h, w = self.clip_input_shape(*rgb.shape[:2], short_side, max_long_side, patch, window)
        return _to_tensor(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR), device)

    def sam_image(self, rgb: np.ndarray, patch: int) -> np.ndarray:
        """[R3] The image SAM encodes (before its own long-side-1024 resize)."""
        return rgb

    def view_features(self, spliced: torch.Tensor, part: int, parts: int, columns: tuple[int, int],
                      sam_width: int, grid: tuple[int, int]) -> torch.Tensor:
        """[R6] The spliced CLIP features [C, rows, cols] under SAM view ``part`` of ``parts`` (its SAM-image
        ``columns`` of ``sam_width``), resized to the view's token ``grid``: [C, *grid]."""
        return aggregate.crop_resize(spliced, columns[0] / sam_width, columns[1] / sam_width, grid)

    def join_logits(self, view_logits: Sequence[torch.Tensor], columns: Sequence[tuple[int, int]],
                    sam_width: int, size: tuple[int, int]) -> torch.Tensor:
        """[R6] Logits [Q, H, W] of the image from each view's logits [Q, rows, cols_i] (bilinear)."""
        height, width = size
        parts = []
        for logits, (x0, x1) in zip(view_logits, columns):
            cols = x1 * width // sam_width - x0 * width // sam_width
            parts.append(F.interpolate(logits[None], size=(height, cols), mode="bilinear", align_corners=False)[0])
        return torch.cat(parts, dim=2)

    def refinement_views(self, views: Sequence[Any], width: int, sam_width: int,
                         encode_whole: Callable[[], dict[str, Any]]) -> list[tuple[int, int, dict[str, Any]]]:
        """[R6] (first column, end column, predictor state) of each region refined on its own."""
        return [(v.x0 * width // sam_width, v.x1 * width // sam_width, v.state) for v in views]


class ReferenceMode(OpenMode):
    """The reference code's behaviour (every benchmark preset)."""

    name = "reference"
    resize_pos = staticmethod(splice.resize_pos_embed_by_scale)
    prompts = refine.ReferencePrompts()

    def class_list(self, preset):
        return REFERENCE_CLASS_LISTS[preset]

    def clip_input_shape(self, height, width, short_side, max_long_side, patch, window):
        h, w = splice.keep_ratio_shape(height, width, short_side, max_long_side)
        return splice.round_like_reference(h, w, patch, window)

    def clip_pixels(self, rgb, short_side, max_long_side, patch, window, device):
        # mmseg resizes the uint8 image (cv2, bilinear), the reference then interpolates that tensor.
        h, w = splice.keep_ratio_shape(*rgb.shape[:2], short_side, max_long_side)
        pixels = _to_tensor(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR), device)
        size = splice.round_like_reference(h, w, patch, window)
        if size == (h, w):
            return pixels
        return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)

    def sam_image(self, rgb, patch):
        h, w = rgb.shape[:2]
        size = (splice.round_up(h, patch), splice.round_up(w, patch))
        if size == (h, w):
            return rgb
        return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def view_features(self, spliced, part, parts, columns, sam_width, grid):
        return aggregate.split_resize(spliced, part, parts, grid)

    def join_logits(self, view_logits, columns, sam_width, size):
        joined = torch.cat(list(view_logits), dim=2)
        return F.interpolate(joined[None], size=size, mode="bilinear", align_corners=False)[0]

    def refinement_views(self, views, width, sam_width, encode_whole):
        return [(0, width, views[0].state if len(views) == 1 else encode_whole())]


OPEN = OpenMode()
REFERENCE = ReferenceMode()


def mode_for(config: Any) -> OpenMode:
    """The behaviour ``config.reference`` selects."""
    return REFERENCE if config.reference else OPEN


def _to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float() / 255.0
