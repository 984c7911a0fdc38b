"""Settings of the generation engine: :class:`GenerateConfig`, its presets, model families, samplers and
cache methods (see the package docstring for what each field does)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vision.engines.contract import EngineConfig
from vision.engines.generate.models import Lora, lora_problems

# family -> hub names of its modules, its architecture ("sd15" | "sdxl" | "sd3") and native size
FAMILIES: dict[str, dict[str, Any]] = {
    "sd15": {"unet": "sd15_unet", "vae": "sd15_vae", "text_encoder": "sd15_text_encoder",
             "tokenizer": "sd15_tokenizer", "scheduler": "sd15_scheduler", "arch": "sd15", "size": 512},
    "sdxl": {"unet": "sdxl_unet", "vae": "sdxl_vae", "text_encoder": "sdxl_text_encoder",
             "text_encoder_2": "sdxl_text_encoder_2", "tokenizer": "sdxl_tokenizer",
             "tokenizer_2": "sdxl_tokenizer_2", "scheduler": "sdxl_scheduler", "arch": "sdxl", "size": 1024},
    "realvisxl": {"unet": "realvisxl_unet", "vae": "realvisxl_vae", "text_encoder": "realvisxl_text_encoder",
                  "text_encoder_2": "realvisxl_text_encoder_2", "tokenizer": "sdxl_tokenizer",
                  "tokenizer_2": "sdxl_tokenizer_2", "scheduler": "sdxl_scheduler", "arch": "sdxl", "size": 1024},
    "sd35_medium": {"transformer": "sd35_medium_transformer", "vae": "sd35_vae", "text_encoder": "sd35_text_encoder",
                    "text_encoder_2": "sd35_text_encoder_2", "text_encoder_3": "sd35_text_encoder_3",
                    "tokenizer": "sdxl_tokenizer", "tokenizer_2": "sdxl_tokenizer_2", "tokenizer_3": "sd35_tokenizer_3",
                    "scheduler": "sd35_scheduler", "arch": "sd3", "size": 1024},
    "sd35_large": {"transformer": "sd35_large_transformer", "vae": "sd35_vae", "text_encoder": "sd35_text_encoder",
                   "text_encoder_2": "sd35_text_encoder_2", "text_encoder_3": "sd35_text_encoder_3",
                   "tokenizer": "sdxl_tokenizer", "tokenizer_2": "sdxl_tokenizer_2", "tokenizer_3": "sd35_tokenizer_3",
                   "scheduler": "sd35_scheduler", "arch": "sd3", "size": 1024},
}
UNET_ARCHS = ("sd15", "sdxl")
TINY_SIZE = 64  # tiny VAE: 64x64 images -> 8x8 latents

# name -> (diffusers scheduler class, config overrides); "flow" is SD3's flow-matching Euler sampler
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "heun": ("HeunDiscreteScheduler", {}),
    "flow": ("FlowMatchEulerDiscreteScheduler", {}),
    "lcm": ("LCMScheduler", {}),  # for LCM-distilled weights (the LCM-LoRA of Story's fast preset)
}
SCHEDULER_ALIASES = {"plms": "pndm", "dpm": "dpm++", "dpmsolver++": "dpm++", "dpm-solver++": "dpm++",
                     "dpmpp": "dpm++", "flow-euler": "flow", "flowmatch": "flow"}

# cache methods: DeepCache for UNets; diffusers' own DiT caches for SD3.5 (vision.engines.generate.dit says
# why first-block cache and FasterCache are not offered)
UNET_CACHES = ("deepcache",)
DIT_CACHES = ("taylorseer", "pab")
CACHES = ("auto", "none", *UNET_CACHES, *DIT_CACHES)
CONTROLS = ("canny", "depth", "image")


class GenerateError(ValueError):
    """Unusable generation settings or inputs (the message names the field or file)."""


def scheduler_name(name: str) -> str:
    """The canonical sampler name of ``name`` (aliases such as ``plms`` resolved); GenerateError if unknown."""
    key = str(name).lower()
    key = SCHEDULER_ALIASES.get(key, key)
    if key not in SCHEDULERS:
        choices = ", ".join(sorted([*SCHEDULERS, *SCHEDULER_ALIASES]))
        raise GenerateError(f"unknown scheduler {name!r}; choose one of {choices}")
    return key


def family_spec(family: str) -> dict[str, Any]:
    if family not in FAMILIES:
        raise GenerateError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


@dataclass(frozen=True)
class GenerateConfig(EngineConfig):
    """Settings of one generation call (fields: the package docstring); ``from_preset`` gives a named one."""

    ENGINE: ClassVar[str] = "generate"
    ERROR: ClassVar[type[ValueError]] = GenerateError
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        # the DeepCache paper's Stable Diffusion setting: SD1.5, 512^2, PLMS 50 steps, CFG 7.5, N=5 on branch 1
        "paper": {"family": "sd15", "scheduler": "pndm", "steps": 50, "guidance": 7.5, "width": 512, "height": 512,
                  "deepcache": 5, "branch": 1, "schedule": "uniform", "reference": True},
    }

    preset: str = "default"
    family: str = "sd15"
    model: str | None = None
    loras: tuple[Lora, ...] = ()
    scheduler: str = "ddim"
    steps: int = 50
    guidance: float = 7.5
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int = 0
    strength: float = 0.75
    cache: str = "auto"
    deepcache: int = 3
    branch: int = 1
    schedule: str = "uniform"
    center: int = 15
    power: float = 1.4
    dit_interval: int = 2
    control: str | None = None
    controlnet: str | None = None
    control_scale: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0
    canny_low: int = 100
    canny_high: int = 200
    reference: bool = False
    compare: bool = False

    @property
    def arch(self) -> str:
        """``sd15`` | ``sdxl`` | ``sd3`` of the family (a ``model`` checkpoint's own is detected on load)."""
        return family_spec(self.family)["arch"]

    @property
    def cache_method(self) -> str:
        """The cache that runs: ``deepcache`` / a DiT cache / ``none`` (``auto`` and ``deepcache=0`` resolved)."""
        if self.cache == "none" or (self.cache in ("auto", "deepcache") and self.arch in UNET_ARCHS
                                    and not self.deepcache):
            return "none"
        if self.cache == "auto":
            return "deepcache" if self.arch in UNET_ARCHS else "taylorseer"
        return self.cache

    def problems(self) -> list[str]:
        return [*self._model_problems(), *self._sampling_problems(), *self._cache_problems(),
                *self._control_problems()]

    def normalised(self) -> GenerateConfig:
        scheduler = scheduler_name(self.scheduler)
        if self.arch == "sd3" and scheduler == "ddim":  # the default sampler means the family's own
            scheduler = "flow"
        loras = tuple(lora if isinstance(lora, Lora) else Lora.parse(lora) for lora in self.loras)
        schedule = "nonuniform" if self.schedule.replace("-", "").replace("_", "") == "nonuniform" else self.schedule
        return self.replace(scheduler=scheduler, loras=loras, schedule=schedule,
                            control=self.control.lower() if self.control else None)

    # -- field checks (one message per bad field, naming it) ----------------------------------------

    def _model_problems(self) -> list[str]:
        out = []
        if self.family not in FAMILIES:
            return [f"family: unknown model family {self.family!r}; choose one of {', '.join(FAMILIES)}"]
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            out.append(f"model: a checkpoint file, a diffusers folder or a Hub repo id, got {self.model!r}")
        if self.model and self.arch == "sd3":
            out.append("model: custom checkpoints are SD1.5 / SDXL ones; SD3.5 runs the family's own weights")
        out += lora_problems(self.loras)
        if self.loras and self.arch == "sd3":
            out.append("loras: LoRAs are for SD1.5 / SDXL models here")
        return out

    def _sampling_problems(self) -> list[str]:
        out = []
        try:
            scheduler = scheduler_name(self.scheduler)
            dit = self.family in FAMILIES and self.arch == "sd3"
            if (dit and scheduler not in ("flow", "ddim")) or (not dit and scheduler == "flow"):
                out.append(f"scheduler: {scheduler!r} does not fit {self.family}: SD3.5 samples with 'flow' "
                           "(flow matching), UNet models with any other")
        except GenerateError as err:
            out.append(f"scheduler: {err}")
        out += _int_problem("steps", self.steps, 1) + _int_problem("seed", self.seed, 0)
        if not _number(self.guidance) or self.guidance < 0:
            out.append(f"guidance must be a number >= 0, got {self.guidance!r}")
        if not _number(self.strength) or not 0 < self.strength <= 1:
            out.append(f"strength must be in (0, 1], got {self.strength!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None:
                out += size_problem(name, value)
        return out

    def _cache_problems(self) -> list[str]:
        from vision.deepcache import DeepCacheError, check_schedule

        if self.cache not in CACHES:
            return [f"cache: unknown cache method {self.cache!r}; choose one of {', '.join(CACHES)}"]
        out = _int_problem("deepcache interval", self.deepcache, 0, "(0 = off, 1 = every step full)")
        out += _int_problem("branch", self.branch, 0) + _int_problem("dit_interval", self.dit_interval, 1)
        if self.family in FAMILIES:
            if self.cache in DIT_CACHES and self.arch in UNET_ARCHS:
                out.append(f"cache: {self.cache} is a DiT cache (SD3.5); UNet models use deepcache")
            if self.cache in UNET_CACHES and self.arch == "sd3":
                out.append(f"cache: DeepCache needs a UNet; SD3.5 uses {', '.join(DIT_CACHES)}")
        if self.cache_method == "deepcache":
            try:
                check_schedule(self.schedule, self.center, self.power)
            except DeepCacheError as err:
                out.append(str(err))
        return out

    def _control_problems(self) -> list[str]:
        out = []
        if self.control is not None and str(self.control).lower() not in CONTROLS:
            out.append(f"control: unknown ControlNet type {self.control!r}; choose one of {', '.join(CONTROLS)}")
        if self.control and self.family in FAMILIES and self.arch == "sd3":
            out.append("control: ControlNet is for SD1.5 / SDXL models here")
        if self.controlnet and not self.control:
            out.append("control: a ControlNet is given (controlnet) but no control type (canny, depth or image)")
        if not _number(self.control_scale) or not 0 <= self.control_scale <= 2:
            out.append(f"control_scale must be in 0..2, got {self.control_scale!r}")
        if not (_number(self.control_start) and _number(self.control_end)
                and 0 <= self.control_start < self.control_end <= 1):
            out.append(f"control_start / control_end must satisfy 0 <= start < end <= 1, "
                       f"got {self.control_start!r} / {self.control_end!r}")
        for name in ("canny_low", "canny_high"):
            out += _int_problem(name, getattr(self, name), 0)
        if _is_int(self.canny_low) and _is_int(self.canny_high) and not self.canny_low < self.canny_high <= 1000:
            out.append(f"canny_low < canny_high <= 1000 needed, got {self.canny_low} / {self.canny_high}")
        return out


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)


def _int_problem(name: str, value: Any, minimum: int, note: str = "") -> list[str]:
    if _is_int(value) and value >= minimum:
        return []
    return [f"{name} must be an integer >= {minimum}{' ' + note if note else ''}, got {value!r}"]


def size_problem(name: str, value: Any) -> list[str]:
    if _is_int(value) and value >= 8 and value % 8 == 0:
        return []
    return [f"{name} must be a positive multiple of 8 (the VAE works on 8x8-pixel latents), got {value!r}"]


PRESETS = GenerateConfig.PRESETS
