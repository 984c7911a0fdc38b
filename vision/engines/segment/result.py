"""The Segment engine's result: masks of one image with their scores, overlays, files and record."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vision.engines.contract import EngineConfig, engine_record
from vision.engines.segment.prompts import Box, Point
from vision.imaging import overlay_labels, overlay_mask, tiny_banner

BOX_COLOUR = (0, 255, 0)


def draw_prompts(image: np.ndarray, points: Sequence[Sequence[float]] = (), box: Box | None = None,
                 corner: tuple[int, int] | None = None) -> np.ndarray:
    """``image`` (RGB uint8 [H, W, 3]) with the prompts drawn, as a new array of the same shape: clicks
    ``(x, y, label)`` as dots (foreground green, background red), the box ``(x0, y0, x1, y1)`` as a green
    frame, and ``corner`` ``(x, y)``, the first of two box-corner clicks, as a green cross in a ring
    (outlined in black, so that it shows on green and light areas too). Coordinates are image pixels."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    r = max(3, min(image.shape[:2]) // 80)  # dot radius, px
    for x, y, label in points:
        colour = (0, 200, 0) if label else (230, 0, 0)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(255, 255, 255))
    if box is not None:
        draw.rectangle(list(box), outline=BOX_COLOUR, width=max(1, r // 2))
    if corner is not None:
        x, y = corner
        reach, width = 2 * r, max(1, r // 2)
        for colour, w in (((0, 0, 0), width + 2), (BOX_COLOUR, width)):  # the outline, then the green on top
            draw.ellipse([x - reach, y - reach, x + reach, y + reach], outline=colour, width=w)
            draw.line([x - reach, y, x + reach, y], fill=colour, width=w)
            draw.line([x, y - reach, x, y + reach], fill=colour, width=w)
    return np.asarray(canvas)


@dataclass
class SegmentResult:
    """Masks for one image, best first (``task`` "points") or largest first (``task`` "everything")."""

    image: np.ndarray  # RGB uint8 [H, W, 3]
    masks: Sequence[np.ndarray]  # bool [H, W] each (prompt mode: each upscaled when first read)
    scores: list[float]  # SAM's predicted IoU of each mask
    task: str  # "points" (clicks and/or a box) or "everything"
    config: EngineConfig  # the SegmentConfig that ran
    backend: str = "torch"  # where SAM ran: torch, onnx or openvino
    name: str = ""  # the input's id (batch mode) or file name
    points: list[Point] = field(default_factory=list)
    box: Box | None = None
    multimask: bool = False
    embedding_cached: bool = False  # the image embedding came from the cache (no encoder pass)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: encoder (0 if cached), decoder, total
    stability: list[float] = field(default_factory=list)  # everything mode: SAM's stability scores
    points_per_side: int | None = None  # everything mode: the grid that ran
    tiny: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def sam_model(self) -> str:
        return self.config.sam_model

    @property
    def reference(self) -> bool:
        return bool(self.config.reference)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return self.image.shape[:2]

    @property
    def mask(self) -> np.ndarray:
        """The best mask (prompt mode) or the union of all masks (everything mode): bool [H, W]."""
        if self.task == "everything":
            return self.labels() > 0
        return self.masks[0] if self.masks else np.zeros(self.size, dtype=bool)

    def labels(self) -> np.ndarray:
        """Everything mode as a label map uint8 [H, W]: mask k (largest first) is k + 1 where no larger
        mask covers the pixel; at most 255 masks."""
        labels = np.zeros(self.size, dtype=np.uint8)
        for k, m in reversed(list(enumerate(self.masks[:255]))):
            labels[m] = k + 1
        return labels

    def rle(self) -> list[dict]:
        """COCO RLE of every mask (``{"size": [H, W], "counts": str}``), in the order of ``masks``."""
        from pycocotools import mask as coco_mask

        out = []
        for m in self.masks:
            code = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
            out.append({"size": [int(v) for v in code["size"]], "counts": code["counts"].decode("ascii")})
        return out

    def overlay(self) -> np.ndarray:
        """The image with the best mask (or every mask, one colour each) tinted, the clicks drawn
        (foreground green, background red) and the box outlined; a banner in tiny mode."""
        if self.task == "everything":
            out = overlay_labels(self.image, self.labels()) if self.masks else self.image.copy()
        else:
            out = overlay_mask(self.image, self.mask, colour=(30, 144, 255))
        out = draw_prompts(out, self.points, self.box)
        return tiny_banner(out) if self.tiny else out

    def to_record(self) -> dict:
        """JSON-able: :func:`~vision.engines.contract.engine_record`'s fields (``models``: {"sam": name}),
        then task, backend, size, scores (best first), areas, cache hit, notes and the task's own fields."""
        record: dict[str, Any] = engine_record(self.config, tiny=self.tiny, timings=self.timings,
                                               models={"sam": self.sam_model})
        record.update({
            "task": self.task, "sam_model": self.sam_model, "backend": self.backend, "width": self.size[1],
            "height": self.size[0], "scores": [round(s, 6) for s in self.scores],
            "areas": [int(m.sum()) for m in self.masks], "embedding_cached": self.embedding_cached,
            "notes": list(self.notes),
        })
        if self.task == "points":
            record.update(score=round(self.scores[0], 6), points=[list(p) for p in self.points],
                          box=list(self.box) if self.box is not None else None, multimask=self.multimask)
        else:
            record.update(masks=len(self.masks), points_per_side=self.points_per_side,
                          stability=[round(s, 6) for s in self.stability])
        if self.name:
            record["target"] = self.name
        return record

    def to_files(self) -> dict[str, Any]:
        """``mask.png`` (best mask or union, 0/255), ``overlay.png``, ``rle.json`` (COCO RLE of every mask
        with its score, ``mode`` "points" or "everything"); everything mode adds ``labels.png`` (indexed
        label map)."""
        files: dict[str, Any] = {
            "mask.png": self.mask, "overlay.png": self.overlay(),
            "rle.json": {"size": list(self.size), "mode": self.task,
                         "masks": [{"segmentation": r, "score": round(s, 6)} for r, s in zip(self.rle(), self.scores)]},
        }
        if self.task == "everything":
            from vision.imaging import label_png

            files["labels.png"] = label_png(self.labels())
        return files
