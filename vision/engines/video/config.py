"""The video engine's settings (:class:`VideoConfig`), its presets and its error type.

Torch-free, so the command line builds its options without loading models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from vision.engines.contract import EngineConfig

TRACKS = ("exemplar", "sam2")
# SAM 2.1 video checkpoints in the weights registry (vision/weights.py), lightest first.
SAM2_MODELS = ("sam2_tiny", "sam2_small", "sam2_base_plus", "sam2_large")

PRESETS: dict[str, dict[str, Any]] = {
    # every frame found from the exemplar: DINOv2 features + SAM-B, no Stable Diffusion per frame
    "default": {"track": "exemplar", "image_preset": "fast", "sam_model": "sam_b"},
    # SAM's own embedding as features and the light sam_t: runs with no weights but sam_t
    "fast": {"track": "exemplar", "image_preset": "default", "features": "sam", "sam_model": "sam_t"},
    # the first frame from the exemplar (or a click, box or mask), then SAM 2.1 tiny propagates it
    "sam2": {"track": "sam2", "image_preset": "fast", "sam_model": "sam_b", "sam2_model": "sam2_tiny"},
    "sam2_large": {"track": "sam2", "image_preset": "fast", "sam_model": "sam_b", "sam2_model": "sam2_large"},
}


class VideoError(ValueError):
    """An input or setting the video engine cannot use; the message names the file or field."""


@dataclass(frozen=True)
class VideoConfig(EngineConfig):
    """Settings of :class:`~vision.engines.video.engine.VideoEngine`.

    ``track``: ``"exemplar"`` (every frame segmented by the image-prompt engine, with the temporal prior
    ``prior``: the region around the previous frame's mask, grown by ``prior_margin``) or ``"sam2"`` (the
    prompt frame's mask propagated by SAM 2.1's video model ``sam2_model``).
    The image-prompt engine (:mod:`vision.engines.ipseg`, methods ``ipseg`` / ``gfsam``) runs
    ``IPSegConfig.from_preset(image_preset)`` with ``method``, ``features``, ``sam_model``,
    ``max_instances`` and ``presence_threshold`` when given (None: that preset's).
    ``every``: take every N-th frame; ``max_frames``: at most N frames (after ``every``).
    """

    ENGINE: ClassVar[str] = "video"
    ERROR: ClassVar[type[ValueError]] = VideoError
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: str = "default"
    track: str = "exemplar"
    method: str = "ipseg"  # the image-prompt method: "ipseg" (or "gfsam" where the image engine has it)
    reference: bool = False  # no reference code for video: the exemplar method's own reference mode is not used
    image_preset: str = "fast"
    features: str | None = None
    sam_model: str | None = None
    max_instances: int | None = None
    presence_threshold: float | None = None
    prior: bool = True  # exemplar track: search the region around the previous frame's mask
    prior_margin: float = 0.5  # that region: the previous box grown by this x its longer side on each side
    sam2_model: str = "sam2_tiny"
    every: int = 1
    max_frames: int | None = None

    def image_config(self) -> Any:
        """The image-prompt engine's config these settings describe."""
        from vision.engines.ipseg.config import IPSegConfig

        given = {"method": self.method, "features": self.features, "sam_model": self.sam_model,
                 "max_instances": self.max_instances, "presence_threshold": self.presence_threshold}
        return IPSegConfig.from_preset(self.image_preset, **{k: v for k, v in given.items() if v is not None})

    def problems(self) -> list[str]:
        problems = []
        if self.track not in TRACKS:
            problems.append(f"track={self.track!r} must be one of {', '.join(TRACKS)}")
        if self.sam2_model not in SAM2_MODELS:
            problems.append(f"sam2_model={self.sam2_model!r} must be one of {', '.join(SAM2_MODELS)}")
        if not isinstance(self.every, int) or self.every < 1:
            problems.append(f"every={self.every!r} must be an integer >= 1 (1: every frame)")
        if self.max_frames is not None and (not isinstance(self.max_frames, int) or self.max_frames < 1):
            problems.append(f"max_frames={self.max_frames!r} must be an integer >= 1, or None for all frames")
        if not isinstance(self.prior_margin, (int, float)) or not 0 <= self.prior_margin <= 10:
            problems.append(f"prior_margin={self.prior_margin!r} must be a number from 0 to 10 (x the object's size)")
        if self.reference:
            problems.append("reference=True: there is no reference code for video (set it on the image method)")
        try:
            problems += [f"image engine: {p}" for p in self.image_config().problems()]
        except ValueError as err:  # an unknown image preset or field
            problems.append(f"image_preset={self.image_preset!r}: {err}")
        return problems

    def models(self) -> dict[str, str]:
        """Role -> hub name of every model a run may use (the image engine's, and SAM 2 when tracking)."""
        models = dict(self.image_config().models())
        if self.track == "sam2":
            models["sam2"] = self.sam2_model
        return models

    def describe(self) -> dict[str, Any]:
        """What ran beyond :func:`~vision.engines.contract.engine_record`'s fields."""
        image = self.image_config()
        out = {"track": self.track, "image_preset": self.image_preset, "features": image.features,
               "sam_model": image.sam_model, "every": self.every, "max_frames": self.max_frames}
        if self.track == "sam2":
            out["sam2_model"] = self.sam2_model
        else:
            out["prior"] = f"search-region (margin {self.prior_margin:g})" if self.prior else "none"
        return out
