"""One image encoded by SAM: :class:`SamImage`, the state "this image is encoded" and the masks it gives.

Design. ``SamPredictor`` keeps one image at a time in fields (``features``, ``original_size``,
``input_size``) that its ``set_image`` writes; swapping images meant writing those fields from outside.
A :class:`SamImage` is instead an immutable value: the embedding and the two sizes of one image, made
once by :class:`~vision.sam.runner.SamRunner` (which caches them by content) and never changed, so any
number of them can be alive at once (Trident's two halves, a cache of clicked photos) and shared between
threads. It predicts with ``Sam``'s public modules through a backend (:mod:`vision.sam.backends`:
PyTorch, ONNX Runtime or OpenVINO), which a predictor per image could not do (its ``set_image`` always
runs the torch encoder). Its ``predict`` / ``predict_torch`` take and return exactly what
``SamPredictor``'s do, so code written for a predictor (PerSAM's cascade, Trident's refinement) takes a
``SamImage`` unchanged.

Frames and units: the image is RGB uint8 [H, W, 3] (``original_size`` = (H, W)); SAM's encoder sees it
resized so its long side is S = ``img_size`` (1024), ``input_size`` = (h, w), zero-padded to S x S. The
embedding is [1, C, S/16, S/16] (C = 256); low-res mask logits are [4S/16 = 256]^2 over the padded
square; full masks are logits or bools [H, W] of the original image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from vision.hub import model_lock


@dataclass(frozen=True, eq=False)
class SamImage:
    """An image encoded by a SAM (see the module docstring). ``embedding`` [1, C, g, g] float32;
    ``original_size`` (H, W) of the image; ``input_size`` (h, w) of the resized image inside the
    encoder's S x S input; ``backend`` decodes (:mod:`vision.sam.backends`); ``key`` is the image's
    content key (empty when not cached); ``encoder_seconds`` what its encoding took."""

    model: Any  # the segment_anything ``Sam`` (its thresholds, sizes and postprocessing)
    backend: Any
    embedding: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    key: str = ""
    encoder_seconds: float = 0.0
    transform: ResizeLongestSide = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "transform", ResizeLongestSide(self.model.image_encoder.img_size))

    # ------------------------------------------------------------------------------- the predictor's API
    @property
    def features(self) -> torch.Tensor:
        """The image embedding [1, C, g, g] (``SamPredictor.features``' name)."""
        return self.embedding

    @property
    def device(self) -> torch.device:
        return self.embedding.device

    @property
    def mask_threshold(self) -> float:
        return float(self.model.mask_threshold)

    @property
    def side(self) -> int:
        """S: the side of the encoder's square input (1024 for SAM)."""
        return int(self.model.image_encoder.img_size)

    def get_image_embedding(self) -> torch.Tensor:
        return self.embedding

    def predict(self, point_coords: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                box: np.ndarray | None = None, mask_input: np.ndarray | None = None, multimask_output: bool = True,
                return_logits: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``SamPredictor.predict``: prompts in image pixels (points [N, 2] (x, y) with labels [N], box
        [4] x0, y0, x1, y1, mask_input [1, 256, 256] logits) -> masks [M, H, W] (bool, or logits),
        IoUs [M], low-res logits [M, 256, 256]; M = 3 with ``multimask_output``, else 1."""
        coords = labels = boxes = masks = None
        if point_coords is not None:
            coords = self.points_to_frame(point_coords)[None]
            labels = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)[None]
        if box is not None:
            boxes = self.boxes_to_frame(box)[None]
        if mask_input is not None:
            masks = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)[None]
        full, iou, low_res = self.predict_torch(coords, labels, boxes, masks, multimask_output, return_logits)
        return full[0].cpu().numpy(), iou[0].cpu().numpy(), low_res[0].cpu().numpy()

    def predict_torch(self, point_coords: torch.Tensor | None, point_labels: torch.Tensor | None,
                      boxes: torch.Tensor | None = None, mask_input: torch.Tensor | None = None,
                      multimask_output: bool = True,
                      return_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``SamPredictor.predict_torch``: batched prompts already in the encoder's frame -> masks
        [B, M, H, W], IoUs [B, M], low-res logits [B, M, 256, 256]."""
        low_res, iou = self.decode(point_coords, point_labels, boxes, mask_input, multimask_output)
        full = self.upscale(low_res)
        return (full if return_logits else full > self.mask_threshold), iou, low_res

    # --------------------------------------------------------------------------------- the parts of it
    def points_to_frame(self, points: np.ndarray) -> torch.Tensor:
        """Points [..., 2] (x, y) in image pixels -> the encoder's frame (float32 tensor)."""
        coords = self.transform.apply_coords(np.asarray(points, dtype=np.float64), self.original_size)
        return torch.as_tensor(coords, dtype=torch.float, device=self.device)

    def boxes_to_frame(self, boxes: np.ndarray) -> torch.Tensor:
        """Boxes [..., 4] (x0, y0, x1, y1) in image pixels -> the encoder's frame (float32 tensor)."""
        frame = self.transform.apply_boxes(np.asarray(boxes, dtype=np.float64), self.original_size)
        return torch.as_tensor(frame, dtype=torch.float, device=self.device)

    def decode(self, point_coords: torch.Tensor | None, point_labels: torch.Tensor | None,
               boxes: torch.Tensor | None = None, mask_input: torch.Tensor | None = None,
               multimask_output: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits [B, M, 256, 256] and predicted IoUs [B, M] of batched prompts in the encoder's
        frame (M = 3 with ``multimask_output``: SAM's multimask tokens; else its single-mask token)."""
        with torch.no_grad(), model_lock(self.model):
            low_res, iou = self.backend.decode(self.embedding, point_coords, point_labels, boxes, mask_input)
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return low_res[:, chosen].to(self.device), iou[:, chosen].to(self.device)

    @torch.no_grad()
    def upscale(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res logits [..., 256, 256] -> logits [..., H, W] of the image (``Sam.postprocess_masks``:
        bilinear to S x S, the padding cut, bilinear to (H, W)). Only what is passed is upscaled."""
        lead = low_res.shape[:-2]
        if low_res.numel() == 0:
            return low_res.new_zeros(*lead, *self.original_size)
        flat = low_res.reshape(1, -1, *low_res.shape[-2:])
        factor = self.side // low_res.shape[-1]
        if factor * low_res.shape[-1] != self.side or low_res.shape[-1] != low_res.shape[-2]:
            full = self.model.postprocess_masks(flat, self.input_size, self.original_size)
        else:
            full = self._upscale_kept(flat, factor)
        return full.reshape(*lead, *full.shape[-2:])

    def _upscale_kept(self, flat: torch.Tensor, factor: int) -> torch.Tensor:
        """``Sam.postprocess_masks`` of [1, K, L, L] low-res logits (S = ``factor`` * L), computed over the
        pixels it keeps only: bilinear interpolation (align_corners=False) reads, for output row i, input
        rows floor((i + 0.5) / factor - 0.5) and the next, so the upscale of the first rows that the kept
        ``input_size`` rows read, to ``factor`` times their count, is the kept part of the upscale to S x S
        (same scale, same weights, same neighbours); and resizing to the size it already has is the
        identity, so it is skipped when ``original_size`` equals ``input_size``. Bit for bit the same
        (``tests/test_sam_image.py``); a 1024 x 681 photo needs 688 of the 1024 rows."""
        side = flat.shape[-1]
        rows, cols = (min(side, (size + factor - 1) // factor + 1) for size in self.input_size)
        full = F.interpolate(flat[..., :rows, :cols], (factor * rows, factor * cols), mode="bilinear",
                             align_corners=False)[..., :self.input_size[0], :self.input_size[1]]
        if tuple(self.input_size) != tuple(self.original_size):
            full = F.interpolate(full, self.original_size, mode="bilinear", align_corners=False)
        return full


class UpscaledMasks(Sequence):
    """Masks bool [H, W] of an image from low-res logits [M, 256, 256], each upscaled on first access
    (and kept): a caller who reads only the best mask pays for one upscale, not M. The first ``now``
    are upscaled at once."""

    def __init__(self, image: SamImage, low_res: torch.Tensor, now: int = 0):
        self.image, self.low_res = image, low_res
        self._done: dict[int, np.ndarray] = {}
        for index in range(min(now, len(self))):
            self[index]

    def __len__(self) -> int:
        return int(self.low_res.shape[0])

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]
        if index not in self._done:
            logits = self.image.upscale(self.low_res[index])
            self._done[index] = (logits > self.image.mask_threshold).cpu().numpy()
        return self._done[index]
