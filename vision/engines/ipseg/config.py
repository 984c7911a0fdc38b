"""IPSeg's settings (:class:`IPSegConfig`), its named presets and its error types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from vision.engines.contract import EngineConfig

FEATURES = ("dino+sd", "dino", "sam")  # the paper's DINOv2 + SD1.5, DINOv2 only, SAM's image embedding
SAM_MODELS = ("sam_t", "sam_b", "sam_h")
SD_FEATURES = ("s5", "s4", "s3")
FEATURE_LABELS = {"dino+sd": "dinov2+sd15", "dino": "dinov2-only", "sam": "sam-embedding"}
METHODS = ("ipseg", "gfsam")  # the exemplar methods this engine runs (GF-SAM: vision/engines/ipseg/gfsam.py)
GFSAM_FEATURES = ("dino", "sam")  # GF-SAM compares one feature map: DINOv2's tokens or SAM's embedding
# The preset a method gets when none is named (the command line's --method alone): each method's light
# product-mode preset; the reference settings are the "paper" and "gfsam" presets.
METHOD_PRESETS = {"ipseg": "default", "gfsam": "gfsam_fast"}

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},  # the paper's features with our corrections, SAM-B as the light segmenter
    "paper": {"reference": True, "features": "dino+sd", "sam_model": "sam_h", "seed": 0, "sd_noise_seed": 42},
    "fast": {"features": "dino"},  # no Stable Diffusion: SD weights never loaded
    # GF-SAM as its reference runs it: DINOv2 ViT-L/14 on the 518 square (37 x 37 tokens), SAM-H, <= 128 points
    "gfsam": {"method": "gfsam", "reference": True, "features": "dino", "dino_model": "dinov2_l14", "dino_size": 518,
              "sam_model": "sam_h"},
    "gfsam_fast": {"method": "gfsam", "features": "sam", "sam_model": "sam_t"},  # SAM alone: sam_t's embedding
}


class IPSegError(ValueError):
    """An input IPSeg cannot use; the message says why and what to do (shown to the user as is)."""


class IPSegWarning(UserWarning):
    """An input IPSeg adjusted (e.g. a resized prompt mask); also listed in the result's ``notes``."""


@dataclass(frozen=True)
class IPSegConfig(EngineConfig):
    """Settings; the defaults are the paper's method (with SAM-B as the light segmenter) and our
    corrections of the reference code. ``IPSegConfig.from_preset("paper")`` reproduces the reference
    (see :mod:`vision.engines.ipseg.engine` for every behaviour ``reference`` changes).

    ``features`` is the one way to choose the feature source: ``"dino+sd"`` (the paper's), ``"dino"``
    (DINOv2 only, fast) or ``"sam"`` (the SAM image embedding the cascade computes anyway, PerSAM's
    source: a run needs SAM alone). For backward compatibility ``sd_weight=0`` with ``"dino+sd"``
    means ``"dino"``.

    ``method="gfsam"`` runs GF-SAM (:mod:`vision.engines.ipseg.gfsam`) on the same inputs: it uses
    ``features`` ("dino" or "sam"), ``dino_model``, ``dino_size``, ``sam_model``, ``max_points``,
    ``presence_threshold``, ``reference`` and ``min_side``; IPSeg's point and instance settings (``top_k``,
    ``clusters``, ``kmeans_iters``, ``seed``, ``kshot``, ``max_instances``, ``instance_ratio``) do not apply
    (k-shot maps are averaged, as the reference does; the answer is one mask, the union of the kept
    clusters' masks).
    """

    ENGINE: ClassVar[str] = "ipseg"
    TITLE: ClassVar[str] = "IPSeg"
    ERROR: ClassVar[type[ValueError]] = IPSegError
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: str = "default"
    method: str = "ipseg"  # the exemplar method (see METHODS)
    features: str = "dino+sd"
    reference: bool = False  # reproduce the reference code (luckybird1994/IPSeg), quirks included
    dino_model: str = "dinov2_b14"
    dino_size: int = 840  # letterbox side for DINOv2 (840 / 14 = the 60x60 grid)
    sd_weight: float = 0.1  # weight of the SD term (features "dino+sd")
    sd_layer_weights: tuple[float, float, float] = (0.3, 0.2, 0.1)  # s5, s4, s3 (reference: s3, s4, s5)
    sd_size: int = 960  # letterbox side for SD
    sd_crop: int = 512  # reference mode: SD runs on overlapping crops of this side (SD1.5's native size)
    sd_timestep: int = 100
    sd_noise_seed: int | None = None  # seed of the SD noise; None: ``seed``
    latent_scale: float = 0.18215
    sam_model: str = "sam_b"  # "sam_t", "sam_b" or "sam_h" (the paper's)
    sam_backend: str = "auto"  # where SAM runs: torch | onnx | openvino | auto (the fastest on a CPU; torch
    # in reference mode, whose SAM is the reference's own modules)
    top_k: int = 32
    clusters: int = 4
    kmeans_iters: int = 20
    seed: int = 0  # k-means initialisation (and the SD noise unless sd_noise_seed is set)
    kshot: str = "mean"  # several prompt images: "mean" of prototypes or per-cell "max" of similarities
    presence_threshold: float | None = None  # below it a concept is "absent" (no mask); None: always a mask
    max_instances: int = 1  # masks per concept per target
    instance_ratio: float = 0.8  # extra instances (no threshold): score >= ratio x first instance's score
    min_side: int = 14  # images with a shorter side are refused (one DINOv2 patch)
    max_points: int = 128  # GF-SAM: at most this many point prompts (one SAM mask each); the reference's 128

    def __post_init__(self) -> None:
        if self.features == "dino+sd" and self.sd_weight == 0:  # the old spelling of the fast mode
            object.__setattr__(self, "features", "dino")

    @classmethod
    def for_method(cls, method: str, preset: str | None = None, **changes: Any) -> IPSegConfig:
        """``preset`` (default: the method's own, :data:`METHOD_PRESETS`) with ``method`` and ``changes``."""
        if method not in METHODS:
            raise IPSegError(f"method={method!r} must be one of {', '.join(METHODS)}")
        return cls.from_preset(preset or METHOD_PRESETS[method], **{**changes, "method": method})

    @property
    def use_sd(self) -> bool:
        return self.features == "dino+sd"

    @property
    def use_dino(self) -> bool:
        return self.features != "sam"

    @property
    def primary_feature(self) -> str:
        """The feature the automatic prompt region is found in (and the grid comes from)."""
        return "sam" if self.features == "sam" else "dino"

    @property
    def feature_source(self) -> str:
        """The feature source as a label: ``dinov2+sd15``, ``dinov2-only`` or ``sam-embedding``."""
        return FEATURE_LABELS[self.features]

    @property
    def noise_seed(self) -> int:
        return self.seed if self.sd_noise_seed is None else self.sd_noise_seed

    def problems(self) -> list[str]:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method={self.method!r} must be one of {', '.join(METHODS)}")
        if self.method == "gfsam":
            problems += self._gfsam_problems()
        if self.features not in FEATURES:
            problems.append(f"features={self.features!r} must be one of {', '.join(FEATURES)}")
        if self.dino_size <= 0 or self.dino_size % 14:
            problems.append(f"dino_size={self.dino_size} must be a positive multiple of 14 (the patch size)")
        if self.use_sd and (self.sd_size <= 0 or self.sd_size % 64):
            problems.append(f"sd_size={self.sd_size} must be a positive multiple of 64 (latent divisible by 8)")
        if self.use_sd and self.reference and (self.sd_crop <= 0 or self.sd_crop % 64):
            problems.append(f"sd_crop={self.sd_crop} must be a positive multiple of 64")
        if self.kshot not in ("mean", "max"):
            problems.append(f"kshot={self.kshot!r} must be 'mean' or 'max'")
        if self.sam_model not in SAM_MODELS:
            problems.append(f"sam_model={self.sam_model!r} must be one of {', '.join(SAM_MODELS)}")
        problems += self._backend_problems()
        if self.top_k < 1 or self.clusters < 1 or self.kmeans_iters < 1 or self.max_instances < 1:
            problems.append("top_k, clusters, kmeans_iters and max_instances must be >= 1")
        if not 0 <= self.sd_timestep < 1000:
            problems.append(f"sd_timestep={self.sd_timestep} must be in 0..999")
        return problems

    def _backend_problems(self) -> list[str]:
        from vision.sam.backends import BACKENDS, missing_package  # here: the config itself stays torch-free

        if self.sam_backend not in BACKENDS:
            return [f"sam_backend={self.sam_backend!r} must be one of {', '.join(BACKENDS)}"]
        missing = missing_package(self.sam_backend)
        return [f"sam_backend: {missing}"] if missing else []

    def _gfsam_problems(self) -> list[str]:
        problems = []
        if self.features not in GFSAM_FEATURES:
            problems.append(f"features={self.features!r}: GF-SAM compares one feature map, "
                            f"{' or '.join(GFSAM_FEATURES)} (dino+sd is IPSeg's)")
        if self.max_points < 1:
            problems.append(f"max_points={self.max_points} must be >= 1")
        return problems

    def feature_key(self) -> tuple:
        """The settings that change prompt prototypes (part of the prompt-cache key)."""
        dino = (self.dino_model, self.dino_size) if self.use_dino else None
        sd = (self.sd_size, self.sd_timestep, self.latent_scale, self.noise_seed, self.sd_crop) if self.use_sd else None
        sam = (self.sam_model, self.sam_backend) if self.features == "sam" else None
        return (self.method, self.features, self.reference, dino, sd, sam)

    def models(self) -> dict[str, str]:
        """Role -> hub name of every model a run with these settings uses."""
        models = {"sam": self.sam_model}
        if self.use_dino:
            models["dino"] = self.dino_model
        if self.use_sd:
            models.update(unet="sd15_unet", vae="sd15_vae", text_encoder="sd15_text_encoder")
        return models

    def describe(self) -> dict[str, Any]:
        """What ran beyond :func:`~vision.engines.contract.engine_record`'s fields: the feature source
        and the frame SAM saw the target in."""
        from vision.engines.ipseg.modes import mode_for

        return {"features": self.features, "feature_source": self.feature_source, "sam_model": self.sam_model,
                "sam_backend": self.sam_backend, "sam_frame": mode_for(self).sam_frame}
