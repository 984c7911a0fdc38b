"""Story-Adapter settings (:class:`StoryConfig`, its named presets and the reference's style templates)
and story input (:func:`load_story`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from vision.engines.contract import EngineConfig
from vision.engines.generate.models import Lora, lora_problems
from vision.limits import MAX_STORY_FRAMES, LimitError, check_story

DEFAULT_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"  # the reference's, all styles

# (prefix, suffix) wrapped around every frame prompt: the reference's templates (story-iter
# ``ip_adapter.py``; story-adapter always uses "comic"), plus "none" (the prompt as written).
STYLES: dict[str, tuple[str, str]] = {
    "comic": ("best quality, high quality, comic ",
              " . graphic illustration, comic art, graphic novel art, vibrant, highly detailed"),
    "film": ("best quality, high quality, cinematic film still, ",
             " . shallow depth of field, vignette, highly detailed, high budget, bokeh, cinemascope, moody, epic, "
             "gorgeous, film grain, grainy"),
    "realistic": ("best quality, high quality, ", ""),
    "none": ("", ""),
}


@dataclass(frozen=True)
class StoryFamily:
    """An architecture's IP-Adapter (hub names), native frame size, default CFG scale and checkpoints
    (generation-engine families of that architecture; the first is the default)."""

    ip_adapter: str
    image_encoder: str
    size: int
    guidance: float
    checkpoints: tuple[str, ...]


FAMILIES: dict[str, StoryFamily] = {
    # IP-Adapter's own generate() defaults to CFG 7.5
    "sd15": StoryFamily("ip_adapter_sd15", "ip_image_encoder_h", 512, 7.5, ("sd15",)),
    # the reference never passes guidance_scale: the SDXL pipeline's default, 5.0; its checkpoint RealVisXL V4.0
    "sdxl": StoryFamily("ip_adapter_sdxl", "ip_image_encoder_bigg", 1024, 5.0, ("realvisxl", "sdxl")),
}

TINY_SIZE = 64  # default frame size in tiny mode (the tiny UNet's native 8x8 latent)
LCM_MAX_STEPS = 8  # LCM-LoRA is distilled for 2-8 steps
MAX_FRAMES = MAX_STORY_FRAMES


class StoryError(ValueError):
    """A story, configuration or output folder that cannot be used; the message says why."""


@dataclass(frozen=True)
class StoryConfig(EngineConfig):
    """Settings of one story run; :meth:`from_preset` gives a named one (:data:`PRESETS`).

    ``deepcache`` is the DeepCache interval N (0 = off; 1 = on with every step full, which equals off) on
    UNet skip branch ``deepcache_branch``. ``family`` is the architecture (its IP-Adapter and image
    encoder), ``checkpoint`` the base model's weights (None: the family's default, RealVisXL V4.0 for
    SDXL), ``guidance`` the CFG scale (None: the family's default, 7.5 SD1.5 / 5.0 SDXL). ``reference``
    turns on reference mode (see :mod:`vision.engines.story`); ``preset`` names the preset it came from.

    ``character_scale`` is w_c, the weight of the declared characters' reference tokens in every round
    (the package docstring says how they combine with the round's tokens). ``model`` is the user's own
    SD1.5 / SDXL checkpoint (file, diffusers folder or Hub repo id) and ``loras`` their LoRAs
    (``PATH[:SCALE]``), both through :mod:`vision.engines.generate.models`. ``lcm`` applies the family's
    LCM-LoRA from the weights registry (the ``fast`` preset; needs ``scheduler="lcm"`` and at most
    ``LCM_MAX_STEPS`` steps). Memory (:mod:`vision.engines.story.memory`): ``vae_tiling`` (None: on for
    frames over 768 px in product mode), ``offload_image_encoder`` (None: on with CUDA), ``model_offload``
    (diffusers' model CPU offload, CUDA only).
    """

    ENGINE: ClassVar[str] = "story"
    TITLE: ClassVar[str] = "story"
    ERROR: ClassVar[type[ValueError]] = StoryError

    preset: str = "sd15"
    reference: bool = False
    rounds: int = 10
    lambda_start: float = 0.3
    lambda_end: float = 0.5
    steps: int = 50
    guidance: float | None = None
    size: int | None = None  # square frames; None = the family's native size (64 in tiny mode)
    seed: int = 0
    style: str = "comic"
    negative_prompt: str = DEFAULT_NEGATIVE
    deepcache: int = 3
    deepcache_branch: int = 1
    family: str = "sd15"
    checkpoint: str | None = None
    scheduler: str = "ddim"
    reference_size: int = 256
    character_scale: float = 0.6
    model: str | None = None
    loras: tuple[Lora, ...] = ()
    lcm: bool = False
    vae_tiling: bool | None = None
    offload_image_encoder: bool | None = None
    model_offload: bool = False

    def problems(self) -> list[str]:
        problems = []
        if self.preset not in PRESETS:
            problems.append(f"unknown story preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.family not in FAMILIES:
            return problems + [f"unknown model family {self.family!r}; choose one of {', '.join(FAMILIES)}"]
        if self.checkpoint is not None and self.checkpoint not in FAMILIES[self.family].checkpoints:
            problems.append(f"checkpoint {self.checkpoint!r} is not a {self.family} model; choose one of "
                            f"{', '.join(FAMILIES[self.family].checkpoints)}")
        if self.style not in STYLES:
            problems.append(f"unknown style {self.style!r}; choose one of {', '.join(STYLES)}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 0:
            problems.append(f"rounds must be an integer >= 0 (0 = round 0 only), got {self.rounds!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if self.size is not None and (self.size < 8 or self.size % 8):
            problems.append(f"size must be a positive multiple of 8, got {self.size}")
        for name, minimum in (("deepcache", 0), ("deepcache_branch", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                problems.append(f"{name} must be an integer >= {minimum}, got {value!r}"
                                + (" (0 = DeepCache off)" if name == "deepcache" else ""))
        problems += self._scheduler_problems() + self._model_problems()
        if self.reference_size < 1:
            problems.append(f"reference_size must be >= 1, got {self.reference_size}")
        problems += self._number_problems()
        return problems

    def _scheduler_problems(self) -> list[str]:
        from vision.engines.generate import GenerateError, scheduler_name

        try:
            scheduler_name(self.scheduler)
        except GenerateError as err:
            return [str(err)]
        return []

    def _model_problems(self) -> list[str]:
        """The user's checkpoint and LoRAs, the LCM-LoRA with its sampler and steps, the memory switches."""
        out = lora_problems(self.loras)
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            out.append(f"model: a checkpoint file, a diffusers folder or a Hub repo id, got {self.model!r}")
        if self.model and self.checkpoint:
            out.append(f"model and checkpoint both given ({self.model!r}, {self.checkpoint!r}): the model replaces "
                       "the family's checkpoint, give one")
        lcm_sampler = str(self.scheduler).lower() == "lcm"
        if self.lcm and not lcm_sampler:
            out.append(f"lcm: the LCM-LoRA samples with scheduler 'lcm', got {self.scheduler!r}")
        if lcm_sampler and not self.lcm:
            out.append("scheduler: 'lcm' needs LCM-distilled weights: set lcm=True (the fast preset's LCM-LoRA)")
        if self.lcm and isinstance(self.steps, int) and self.steps > LCM_MAX_STEPS:
            out.append(f"steps: the LCM-LoRA is distilled for 2-{LCM_MAX_STEPS} steps, got {self.steps} (more steps do "
                       "not improve its frames; the default preset runs 50)")
        for name in ("lcm", "model_offload", "vae_tiling", "offload_image_encoder"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (value is None and name in ("vae_tiling", "offload_image_encoder")):
                out.append(f"{name} must be True or False, got {value!r}")
        return out

    def _number_problems(self) -> list[str]:
        for name in ("lambda_start", "lambda_end", "guidance", "character_scale"):
            value = getattr(self, name)
            if name == "guidance" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return [f"{name} must be a finite number, got {value!r}"]
        if self.guidance_scale() < 0:
            return [f"guidance must be >= 0 (<= 1 disables classifier-free guidance), got {self.guidance}"]
        return []

    def normalised(self) -> StoryConfig:
        """The config with the scheduler's alias resolved (``plms`` -> ``pndm``)."""
        from vision.engines.generate import scheduler_name

        loras = tuple(lora if isinstance(lora, Lora) else Lora.parse(lora) for lora in self.loras)
        return replace(self, scheduler=scheduler_name(self.scheduler), loras=loras,
                       model=self.model.strip() if self.model else None)

    def describe(self) -> str:
        """Which preset and mode this is, for messages: "<preset> preset, <reference|product> mode"."""
        return f"{self.preset} preset, {self.mode} mode"

    def guidance_scale(self) -> float:
        """The CFG scale: ``guidance``, or the family's default (7.5 SD1.5, 5.0 SDXL) when it is None."""
        return float(FAMILIES[self.family].guidance if self.guidance is None else self.guidance)

    def base_model(self) -> str:
        """The generation-engine family of the base model's weights (``checkpoint`` or the default)."""
        return self.checkpoint or FAMILIES[self.family].checkpoints[0]

    def lambdas(self) -> list[float]:
        """The reference weight of rounds 1..R: ``linspace(lambda_start, lambda_end, R)``."""
        return [float(x) for x in np.linspace(self.lambda_start, self.lambda_end, self.rounds)]

    def lcm_lora(self) -> str | None:
        """The weights-registry name of the family's LCM-LoRA when ``lcm`` is on."""
        return f"lcm_lora_{self.family}" if self.lcm else None

    def lambda_of(self, round_index: int) -> float:
        return 0.0 if round_index == 0 else self.lambdas()[round_index - 1]

    def resolved_size(self, tiny: bool) -> int:
        if self.size is not None:
            return self.size
        return TINY_SIZE if tiny else FAMILIES[self.family].size

    def styled(self, prompt: str) -> str:
        prefix, suffix = STYLES[self.style]
        return f"{prefix}{prompt}{suffix}"


PRESETS: dict[str, StoryConfig] = {  # the first is the default
    # the product default: fits a 16 GB GPU (SD1.5 + IP-Adapter, 512^2), DeepCache N = 3
    "sd15": StoryConfig(),
    # SDXL + RealVisXL V4.0, 1024^2, CFG 5.0, DeepCache N = 3
    "sdxl": StoryConfig(preset="sdxl", family="sdxl"),
    # the reference run (jwmao1/story-adapter run.py): SDXL + RealVisXL V4.0 with ip-adapter_sdxl and the
    # bigG encoder, DDIM 50 steps, 1024^2 (size None: 1024 with real weights, 64 in tiny mode), CFG 5.0,
    # 10 rounds, lambda 0.3 -> 0.5, comic style, round frames resized to 256^2 before encoding, no DeepCache
    "reference": StoryConfig(preset="reference", reference=True, family="sdxl", checkpoint="realvisxl",
                             scheduler="ddim", steps=50, guidance=5.0, rounds=10, lambda_start=0.3, lambda_end=0.5,
                             style="comic", negative_prompt=DEFAULT_NEGATIVE, deepcache=0, reference_size=256,
                             vae_tiling=False),
    # LCM-LoRA (the family's, from the weights registry) with the LCM sampler: 4 steps per round, no CFG
    # (guidance 1, as LCM-LoRA samples), DeepCache off (bench/results/story_fast.md: it does not pay at 4 steps)
    "fast": StoryConfig(preset="fast", lcm=True, scheduler="lcm", steps=4, guidance=1.0, deepcache=0),
}


StoryConfig.PRESETS = PRESETS


def load_story(story: str | os.PathLike | Sequence[str]) -> list[str]:
    """Frame prompts from a text file (one frame per line) or a list of strings.

    Whitespace around a prompt is stripped; blank lines / blank strings are skipped (documented: they
    never make an empty frame). An empty story is a :class:`StoryError`.
    """
    if isinstance(story, (str, os.PathLike)):
        path = Path(story)
        if not path.is_file():
            raise StoryError(f"{path}: no such story file (one frame prompt per line)")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise StoryError(f"{path}: not a UTF-8 text file ({err})") from None
        source = str(path)
    else:
        lines = list(story)
        if not all(isinstance(line, str) for line in lines):
            raise StoryError("a story is a list of strings (one prompt per frame)")
        source = "the story"
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise StoryError(f"{source} has no frames: give at least one non-empty prompt (one frame per line)")
    try:
        return check_story(prompts, MAX_FRAMES, source)
    except LimitError as err:
        raise StoryError(str(err)) from None
