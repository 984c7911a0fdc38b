"""The video engine's results: one :class:`FrameResult` per frame (streamed, with its masks and the
frame itself), and :class:`VideoResult` for a whole call (per-frame scores and RLE masks, no pixels)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vision.engines.contract import engine_record
from vision.engines.video.config import VideoConfig
from vision.imaging import overlay_mask, palette, stamp_text, tiny_banner


@dataclass
class TrackedInstance:
    """One object instance in a frame: ``id`` is stable across frames (1, 2, ...)."""

    id: int
    mask: np.ndarray  # bool [H, W]
    score: float  # the image engine's instance score (exemplar) or SAM 2's object score 0..1 (sam2)
    concept: str = "object"

    def to_record(self) -> dict:
        ys, xs = np.nonzero(self.mask)
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None
        return {"id": self.id, "concept": self.concept, "score": round(float(self.score), 6),
                "area": int(self.mask.sum()), "bbox": box}


@dataclass
class FrameResult:
    """The engine's answer for one frame (``image=None`` and ``error`` set when the frame failed)."""

    index: int  # frame index in the source video (0-based)
    name: str  # zero-padded index, e.g. "00012": output file names sort in frame order
    time: float  # seconds from the video's start
    image: np.ndarray | None  # the frame, RGB uint8 [H, W, 3]
    instances: list[TrackedInstance]
    score: float | None  # exemplar: the image engine's presence (a cosine, or 0..1 where it is calibrated: SAM
    # features with sam_t); sam2: object score 0..1
    present: bool
    config: VideoConfig
    tiny: bool = False
    prior: str = "none"  # what carried over from earlier frames: see the engine's docstring
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def mask(self) -> np.ndarray:
        """Union of the instances' masks, bool [H, W] (all False when the object is absent)."""
        shape = self.image.shape[:2] if self.image is not None else (0, 0)
        out = np.zeros(shape, dtype=bool)
        for inst in self.instances:
            out |= inst.mask
        return out

    def to_record(self) -> dict:
        """The frame's ``results.jsonl`` fields: what ran (engine record), the frame, score, instances."""
        record = engine_record(self.config, tiny=self.tiny, timings=self.timings, models=self.config.models())
        record.update(self.config.describe())
        record.update({"frame": self.index, "time": round(self.time, 4), "present": self.present,
                       "score": None if self.score is None else round(float(self.score), 6),
                       "category": self.instances[0].concept if self.instances else "object",
                       "prior": self.prior, "instances": [i.to_record() for i in self.instances],
                       "notes": list(self.notes)})
        if self.image is not None:
            record.update(height=int(self.image.shape[0]), width=int(self.image.shape[1]))
        return record

    def to_files(self) -> dict[str, Any]:
        """``{"mask.png": union mask}``, and with several instances one ``<concept>_<id>.inst.png`` each."""
        files: dict[str, Any] = {"mask.png": self.mask}
        if len(self.instances) > 1:
            for inst in self.instances:
                files[instance_suffix(inst.concept, inst.id)] = inst.mask
        return files

    def overlay(self) -> np.ndarray:
        """The frame with each instance tinted in its id's colour (see :func:`overlay_frame`)."""
        return overlay_frame(self.image, [(i.id, i.mask) for i in self.instances], self.score, self.tiny)


def overlay_frame(image: np.ndarray, masks: list[tuple[int, np.ndarray]], score: float | None = None,
                  tiny: bool = False, error: str | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3]: ``image`` with each (id, bool [H, W] mask) tinted in palette colour ``id`` and
    outlined; ``score`` printed in the corner; a failed frame says so; tiny mode carries its banner."""
    import cv2

    colours = palette(max([i for i, _ in masks], default=0) + 2)
    out = np.array(image, dtype=np.uint8)  # a writable copy (decoded frames may be read-only)
    for ident, mask in masks:
        colour = tuple(int(v) for v in colours[ident + 1])
        out = overlay_mask(out, mask, colour=colour)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        out = cv2.drawContours(out, contours, -1, colour, 2)
    if error is not None:
        out = stamp_text(out, f"frame failed: {error}")
    elif score is not None:
        h = out.shape[0]
        cv2.putText(out, f"{score:.3f}", (4, h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
    return tiny_banner(out) if tiny else out


@dataclass
class FrameSummary:
    """One frame of a :class:`VideoResult`: scores and COCO RLE masks (no pixels)."""

    index: int
    time: float
    score: float | None
    present: bool
    ids: list[int]
    rles: list[dict]  # pycocotools RLE of each instance mask
    error: str | None = None

    def masks(self) -> list[np.ndarray]:
        """The instance masks, bool [H, W] each (decoded from RLE)."""
        from pycocotools import mask as mask_utils

        return [mask_utils.decode(r).astype(bool) for r in self.rles]

    @classmethod
    def of(cls, frame: FrameResult) -> FrameSummary:
        from pycocotools import mask as mask_utils

        rles = [mask_utils.encode(np.asfortranarray(i.mask.astype(np.uint8))) for i in frame.instances]
        return cls(frame.index, frame.time, frame.score, frame.present, [i.id for i in frame.instances], rles,
                   frame.error)


@dataclass
class VideoResult:
    """A whole call of the engine: per-frame summaries in frame order, the video's description, timings."""

    frames: list[FrameSummary]
    config: VideoConfig
    video: dict  # path, frames, fps, width, height (see :class:`vision.videoio.VideoInfo`)
    tiny: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def scores(self) -> list[float | None]:
        return [f.score for f in self.frames]

    def to_record(self) -> dict:
        record = engine_record(self.config, tiny=self.tiny, timings=self.timings, models=self.config.models())
        done = [f for f in self.frames if f.error is None]
        record.update(self.config.describe())
        record.update({"video": self.video, "frames": len(self.frames), "failed": len(self.frames) - len(done),
                       "present": sum(f.present for f in done), "notes": list(self.notes),
                       "per_frame": [{"frame": f.index, "time": round(f.time, 4), "score": f.score,
                                      "present": f.present, "ids": f.ids, "error": f.error} for f in self.frames]})
        return record


def instance_suffix(concept: str, ident: int) -> str:
    """The output suffix of one instance's mask: ``<concept slug>_<id>.inst.png`` (COCO export reads the
    concept back from it)."""
    return f"{re.sub(r'[^A-Za-z0-9-]+', '-', concept).strip('-') or 'object'}_{ident}.inst.png"
