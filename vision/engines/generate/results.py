"""What a generation call returns: :class:`GenerationResult` (images, settings, timings, the record)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from vision.engines.contract import engine_record
from vision.engines.generate.config import GenerateConfig


@dataclasses.dataclass
class GenerationResult:
    """Images of one call (RGB uint8 ``[H, W, 3]`` each), with the settings, seeds, timings and, in compare
    mode, the images of the same seeds without the cache.

    ``cache``: the cache that ran (``method`` and its settings; DeepCache adds its decisions: full/partial
    UNet calls and full steps). ``models``: role -> hub name or checkpoint. ``checkpoint`` / ``loras`` /
    ``control``: the user's models and control input, as the record states them. ``notes``: what the
    engine changed about the inputs (e.g. a control image resized), for the user.
    """

    config: GenerateConfig
    images: list[np.ndarray]
    prompts: list[str]
    seeds: list[int]
    width: int
    height: int
    seconds: float
    cache: dict | None = None
    baseline_images: list[np.ndarray] | None = None
    baseline_seconds: float | None = None
    img2img: bool = False
    tiny: bool = False
    models: dict[str, str] = dataclasses.field(default_factory=dict)
    checkpoint: dict | None = None
    loras: list[dict] = dataclasses.field(default_factory=list)
    control: dict | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    control_image: np.ndarray | None = None  # the control map the ControlNet read, RGB uint8 [H, W, 3]

    @property
    def deepcache(self) -> dict | None:
        """DeepCache's decisions of the cached run (None when another cache or none ran)."""
        return (self.cache or {}).get("calls")

    @property
    def speedup(self) -> float | None:
        if self.baseline_seconds is None or not self.seconds:
            return None
        return self.baseline_seconds / self.seconds

    @property
    def timings(self) -> dict[str, float]:
        """Seconds of the (cached) run and per image; compare mode: the plain run's and the speed-up."""
        out = {"seconds": self.seconds, "seconds_per_image": self.seconds / len(self.images)}
        if self.baseline_seconds is not None:
            out["baseline_seconds"] = self.baseline_seconds
            out["speedup"] = self.speedup
        return out

    def difference(self) -> dict | None:
        """Cached vs plain images (compare mode): max and mean absolute difference (0-255), PSNR (dB)."""
        if self.baseline_images is None:
            return None
        a = np.stack(self.images).astype(np.float64)
        b = np.stack(self.baseline_images).astype(np.float64)
        mse = float(((a - b) ** 2).mean())
        return {"max_abs": float(np.abs(a - b).max()), "mean_abs": round(float(np.abs(a - b).mean()), 4),
                "psnr_db": round(10 * math.log10(255.0 ** 2 / mse), 2) if mse > 0 else float("inf")}

    def to_record(self) -> dict[str, Any]:
        """JSON-able: :func:`~vision.engines.contract.engine_record`'s fields (method = the cache method),
        then prompts, seeds, size, the config, the cache and its decisions, the user's models and control."""
        record = engine_record(self.config, tiny=self.tiny, timings=self.timings, models=self.models,
                               method=self.config.cache_method)
        record.update({"prompts": self.prompts, "seeds": self.seeds, "width": self.width, "height": self.height,
                       "img2img": self.img2img, "config": dataclasses.asdict(self.config), "cache": self.cache,
                       "deepcache_calls": self.deepcache, "checkpoint": self.checkpoint, "loras": self.loras,
                       "control": self.control, "notes": self.notes})
        if self.baseline_images is not None:
            record["difference_vs_plain"] = self.difference()
        return record

    def to_files(self) -> dict[str, np.ndarray]:
        """``{suffix: image}`` for :mod:`vision.batch`: ``png`` (one image) or ``{i}.png``; compare mode
        adds ``plain.png`` / ``{i}.plain.png`` (the same seed without the cache); a ControlNet run adds
        ``control.png`` (the control map it read)."""
        one = len(self.images) == 1
        files = {("png" if one else f"{i}.png"): im for i, im in enumerate(self.images)}
        for i, im in enumerate(self.baseline_images or []):
            files["plain.png" if one else f"{i}.plain.png"] = im
        if self.control_image is not None:
            files["control.png"] = self.control_image
        return files
