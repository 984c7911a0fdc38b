"""Character identity similarity for ``eval story``: how much a character in a frame looks like its pictures.

For a character c and a frame f that uses it (its ``frame_characters``), the score is

    identity(c, f) = max over crops w of f of cos(E(w), R_c),   R_c = normalise(mean_k E(reference_k))

* the crops are the character crop candidates of :func:`crop_windows`: the whole frame and square-ish
  windows of 3/4 and 1/2 of its sides on a 3 x 3 grid of positions (19 in all); the best-matching window
  is the frame's crop of c (its box is logged). Story frames have no character boxes and the hub has no
  detector, so the window that looks most like the reference stands for it;
* E is an image embedding of the hub, L2-normalised: DINOv2 (``dinov2_b14``, the default: the CLS token
  after its final LayerNorm, the frame resized to 224^2 bicubic with ImageNet mean/std) or any hub CLIP
  (``clip_h14``, ``clip_g14``, ...: open_clip's evaluation preprocessing through
  :class:`~vision.evaluation.clip_scoring.ClipScorer`).

A character's consistency in a round is the mean of identity(c, f) over the frames that use it; a story's,
the mean over its characters; a round's, the mean over all characters of all stories. Cosines, fractions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

DEFAULT_IDENTITY = "dinov2_b14"
DINO_SIZE = 224
WINDOW_SCALES = (1.0, 0.75, 0.5)  # window side / frame side
GRID = 3  # window positions per axis (for scales below 1)


def crop_windows(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """Candidate character crops (x0, y0, x1, y1) of a frame: the frame, then windows of each scale in
    :data:`WINDOW_SCALES` at ``GRID`` evenly spaced positions per axis (first and last flush with the edges)."""
    boxes = []
    for scale in WINDOW_SCALES:
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        ys = [0] if h == height else np.linspace(0, height - h, GRID).round().astype(int).tolist()
        xs = [0] if w == width else np.linspace(0, width - w, GRID).round().astype(int).tolist()
        boxes += [(x, y, x + w, y + h) for y in ys for x in xs]
    return boxes


class IdentityScorer:
    """Normalised image embeddings [N, D] of one hub model (DINOv2 or an open_clip CLIP) for identity scores."""

    def __init__(self, name: str, hub: Any):
        self.name = name
        self.model = hub.get(name)
        self.clip = None
        if not name.startswith("dinov2"):
            from vision.evaluation.clip_scoring import ClipScorer

            self.clip = ClipScorer.from_hub(name, hub)

    def embed(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 images [H, W, 3] -> L2-normalised embeddings [N, D] (float32, CPU)."""
        if self.clip is not None:
            return self.clip.image_embeddings(images)
        from vision.engines.ipseg.features import IMAGENET_MEAN, IMAGENET_STD

        param = next(self.model.parameters())
        resized = [np.array(Image.fromarray(np.asarray(im, dtype=np.uint8)).resize((DINO_SIZE, DINO_SIZE),
                                                                                  Image.BICUBIC)) for im in images]
        pixels = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float() / 255.0  # [N, 3, 224, 224]
        pixels = (pixels - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        with torch.no_grad():
            cls = self.model(pixel_values=pixels.to(device=param.device, dtype=param.dtype)).pooler_output
        return torch.nn.functional.normalize(cls.float().cpu(), dim=-1)

    def reference(self, pictures: Sequence[np.ndarray]) -> torch.Tensor:
        """A character's reference R_c [D]: the normalised mean of its pictures' embeddings."""
        return torch.nn.functional.normalize(self.embed(pictures).mean(0), dim=-1)

    def identity(self, frame: np.ndarray, reference: torch.Tensor) -> tuple[float, tuple[int, int, int, int]]:
        """(identity(c, f), the best window's box) for one frame [H, W, 3] and a reference [D]."""
        boxes = crop_windows(*frame.shape[:2])
        crops = [frame[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes]
        sims = self.embed(crops) @ reference
        best = int(sims.argmax())
        return float(sims[best]), boxes[best]


def character_consistency(scorer: IdentityScorer, frames: Sequence[np.ndarray], casts: Sequence[Sequence[str]],
                          references: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per character: the mean identity over the frames that use it, and each frame's score and crop box
    (``{name: {"mean": float, "frames": [{"frame": i, "identity": s, "box": [x0, y0, x1, y1]}]}}``)."""
    out: dict[str, dict] = {}
    for i, (frame, cast) in enumerate(zip(frames, casts, strict=True)):
        for name in cast:
            score, box = scorer.identity(frame, references[name])
            out.setdefault(name, {"frames": []})["frames"].append({"frame": i, "identity": score, "box": list(box)})
    for entry in out.values():
        entry["mean"] = float(np.mean([f["identity"] for f in entry["frames"]]))
    return out
