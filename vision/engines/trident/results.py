"""The class-name engine's result (Trident and CorrCLIP alike): :class:`TridentResult`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from vision import imaging
from vision.engines.contract import engine_record
from vision.engines.trident.classes import Classes
from vision.engines.trident.config import TridentConfig


@dataclass
class TridentResult:
    """Outputs for one image. ``labels``/``coarse``: [H, W] int32 class indices (``coarse``: before
    Trident's SAM refinement / CorrCLIP's map correction); ``probs``: [K, H, W] float32 class
    probabilities (``None`` when not requested); ``overlay``: [H, W, 3] uint8; ``regions``: CorrCLIP's
    region id map [H, W] int32 (0: no mask; ``None`` for Trident); ``timings``: seconds per stage;
    ``info``: grid sizes, prompt or region counts, truncated names."""

    labels: np.ndarray
    coarse: np.ndarray
    probs: np.ndarray | None
    overlay: np.ndarray
    classes: Classes
    config: TridentConfig
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    tiny: bool = False
    regions: np.ndarray | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.classes.display

    def regions_overlay(self) -> np.ndarray | None:
        """The region masks over the image's label overlay's size: [H, W, 3] uint8 (one colour per region,
        black where no mask), or None for Trident."""
        if self.regions is None:
            return None
        image = imaging.overlay_labels(np.zeros_like(self.overlay), self.regions, alpha=1.0)
        return imaging.tiny_banner(image) if self.tiny else image

    def to_record(self) -> dict[str, Any]:
        """A JSON-able summary: :func:`~vision.engines.contract.engine_record`'s fields (method, preset,
        mode, reference, models, tiny notice, timings), classes, pixel share of each class present,
        settings, grid sizes and prompt (Trident) or region (CorrCLIP) counts."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.classes.names))
        total = max(1, self.labels.size)
        cfg = self.config
        record = engine_record(cfg, tiny=self.tiny, timings=self.timings, models=cfg.models())
        record.update({
            "classes": list(self.classes.display),
            "background": self.classes.background,
            "height": int(self.labels.shape[0]),
            "width": int(self.labels.shape[1]),
            "pixel_fraction": {self.classes.display[i]: round(float(c) / total, 5)
                               for i, c in enumerate(counts) if c},
            "config": dataclasses.asdict(cfg),
            **self.info,
        })
        return record

    def to_files(self) -> dict[str, Any]:
        """``labels.png`` and ``coarse.png`` (indexed-palette PNGs, pixel value = class index),
        ``overlay.png``, and for CorrCLIP ``regions.png`` (16-bit region ids, reusable as ``regions=``)
        and ``regions_overlay.png``; images for :mod:`vision.batch` to encode and write."""
        files = {"labels.png": imaging.label_png(self.labels), "coarse.png": imaging.label_png(self.coarse),
                 "overlay.png": self.overlay}
        if self.regions is not None:
            files["regions.png"] = Image.fromarray(self.regions.astype(np.uint16))
            files["regions_overlay.png"] = self.regions_overlay()
        return files
