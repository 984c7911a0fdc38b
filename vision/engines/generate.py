"""Stable Diffusion text-to-image and image-to-image on the hub's shared models, with DeepCache.

Python API (stable; the Story-Adapter engine builds on the first three)::

    from vision.engines.generate import build_pipeline, make_generator, generate, GenerateConfig

    pipe = build_pipeline(hub, family="sd15", scheduler="ddim", img2img=False)
    # a diffusers StableDiffusion(XL)(Img2Img)Pipeline over the hub's UNet, VAE, text encoder(s) and
    # tokenizer(s) (no copies), safety_checker=None, feature_extractor=None, and a fresh scheduler
    # instance made from the hub's scheduler config. Use it like any diffusers pipeline, e.g. with
    # ``ip_adapter_image_embeds=`` after loading an IP-Adapter into the UNet, and with
    # ``with vision.deepcache.DeepCache(pipe, interval=3): ...``.

    result = generate(["a red fox in snow"], steps=30, deepcache=3, branch=1, seed=7, compare=True,
                      on_progress=lambda p: print(f"{p.fraction:.0%} {p.message}"))
    result.images        # list of RGB uint8 [H, W, 3]
    result.timings       # {"seconds": ..., "baseline_seconds": ..., "speedup": ...}
    result.to_record()   # JSON-able settings, seeds, timings, DeepCache decisions
    result.to_files()    # {"png": image} (one prompt) / {"0.png": ..., "1.png": ...}, plus baselines

Options (:class:`GenerateConfig`): family ``sd15`` | ``sdxl`` | ``realvisxl`` (RealVisXL V4.0, an SDXL
fine-tune: SDXL's architecture with its own UNet, VAE and text encoders); scheduler ``ddim``, ``pndm``/``plms``
(PNDM with SD's ``skip_prk_steps``), ``euler``, ``dpm++`` (DPMSolverMultistep, dpmsolver++), ``heun``;
``steps``, ``guidance`` (CFG scale; <= 1 disables CFG), ``negative_prompt``, ``width``/``height``
(multiples of 8; default 512 for SD1.5, 1024 for SDXL, 64 in tiny mode, the input's size for img2img),
``seed`` (image i of a call uses ``seed + i``, on a CPU generator, so results do not depend on the
device's RNG or on the batch), ``strength`` (img2img); DeepCache ``deepcache`` = interval N (0 = off,
1 = on with every step full), ``branch``, ``schedule`` (``uniform`` | ``nonuniform``), ``center``,
``power``, ``reference``. ``compare=True`` also runs the plain pipeline with the same seeds (after a
short warm-up) and reports both times and the speed-up.

Presets (:data:`PRESETS`, ``GenerateConfig.from_preset(name, **overrides)``): ``default`` (the fields'
defaults) and ``paper``, the DeepCache paper's Stable Diffusion setting: SD1.5, 512^2, PLMS (PNDM) 50
steps, CFG 7.5, DeepCache N = 5 on branch 1, uniform schedule, ``reference=True``. The record of every
generation holds the config (``preset``, ``reference``) and the step numbering DeepCache used.

Reference mode (``reference=True``) changes one behaviour: DeepCache numbers the steps as the paper's
pipeline loop does (PNDM's duplicated timestep is a step of its own; see :mod:`vision.deepcache.steps`),
because the paper's SD numbers were measured so. Kept in every mode, with the reason: the initial noise
of image i comes from a CPU generator seeded ``seed + i`` (the paper's script seeds the global CUDA RNG
once per batch of 16 prompts; noise is not part of the method and ours does not depend on the batch or the
device), and images are rounded to uint8 (the paper's evaluation script truncates; at most 1/255).

Progress: ``on_progress`` receives a :class:`GenerateProgress` after every denoising step of every
timed run (compare mode: the plain run, then the DeepCache run; not the warm-up).

In tiny mode (random-weight models) the outputs are noise; results say so (``tiny``, ``note``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from vision.deepcache import DeepCache, DeepCacheError, check_schedule
from vision.hub import model_lock

# family -> hub names of its modules, its architecture ("sd15" | "sdxl") and native size
FAMILIES = {
    "sd15": {"unet": "sd15_unet", "vae": "sd15_vae", "text_encoder": "sd15_text_encoder",
             "tokenizer": "sd15_tokenizer", "scheduler": "sd15_scheduler", "arch": "sd15", "size": 512},
    "sdxl": {"unet": "sdxl_unet", "vae": "sdxl_vae", "text_encoder": "sdxl_text_encoder",
             "text_encoder_2": "sdxl_text_encoder_2", "tokenizer": "sdxl_tokenizer",
             "tokenizer_2": "sdxl_tokenizer_2", "scheduler": "sdxl_scheduler", "arch": "sdxl", "size": 1024},
    "realvisxl": {"unet": "realvisxl_unet", "vae": "realvisxl_vae", "text_encoder": "realvisxl_text_encoder",
                  "text_encoder_2": "realvisxl_text_encoder_2", "tokenizer": "sdxl_tokenizer",
                  "tokenizer_2": "sdxl_tokenizer_2", "scheduler": "sdxl_scheduler", "arch": "sdxl", "size": 1024},
}
TINY_SIZE = 64  # tiny VAE: 64x64 images -> 8x8 latents

# name -> (diffusers scheduler class, config overrides)
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "heun": ("HeunDiscreteScheduler", {}),
}
SCHEDULER_ALIASES = {"plms": "pndm", "dpm": "dpm++", "dpmsolver++": "dpm++", "dpm-solver++": "dpm++",
                     "dpmpp": "dpm++"}


class GenerateError(ValueError):
    """Unusable generation settings or inputs (the message says why)."""


def scheduler_name(name: str) -> str:
    key = str(name).lower()
    key = SCHEDULER_ALIASES.get(key, key)
    if key not in SCHEDULERS:
        choices = ", ".join(sorted([*SCHEDULERS, *SCHEDULER_ALIASES]))
        raise GenerateError(f"unknown scheduler {name!r}; choose one of {choices}")
    return key


def make_scheduler(name: str, config: Any) -> Any:
    """A fresh scheduler ``name`` from a diffusers scheduler config (SD's training noise schedule)."""
    import diffusers

    cls_name, overrides = SCHEDULERS[scheduler_name(name)]
    return getattr(diffusers, cls_name).from_config(config, **overrides)


def _family(family: str) -> dict:
    if family not in FAMILIES:
        raise GenerateError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


def build_pipeline(hub: Any = None, family: str = "sd15", scheduler: str = "ddim", img2img: bool = False) -> Any:
    """A diffusers SD1.5 / SDXL (img2img) pipeline sharing the hub's modules; a fresh scheduler.

    Cheap (no weights are copied or moved): build one per call or per thread. The safety checker and
    the feature extractor are None; the SDXL watermarker is off.
    """
    import diffusers

    from vision.hub import get_hub

    hub = hub or get_hub()
    names = _family(family)
    parts = {key: hub.get(names[key]) for key in ("unet", "vae", "text_encoder", "tokenizer")}
    parts["scheduler"] = make_scheduler(scheduler, hub.get(names["scheduler"]).config)
    if names["arch"] == "sd15":
        cls = diffusers.StableDiffusionImg2ImgPipeline if img2img else diffusers.StableDiffusionPipeline
        return cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    parts["text_encoder_2"] = hub.get(names["text_encoder_2"])
    parts["tokenizer_2"] = hub.get(names["tokenizer_2"])
    cls = diffusers.StableDiffusionXLImg2ImgPipeline if img2img else diffusers.StableDiffusionXLPipeline
    return cls(**parts, add_watermarker=False)


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (the initial noise is then device-independent)."""
    return torch.Generator("cpu").manual_seed(int(seed))


def default_size(hub: Any, family: str) -> int:
    return TINY_SIZE if getattr(hub, "tiny", False) else _family(family)["size"]


@dataclasses.dataclass
class GenerateConfig:
    """Settings of one generation call (see the module docstring); :meth:`from_preset` gives a named one."""

    preset: str = "default"
    family: str = "sd15"
    scheduler: str = "ddim"
    steps: int = 50
    guidance: float = 7.5
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int = 0
    strength: float = 0.75
    deepcache: int = 3
    branch: int = 1
    schedule: str = "uniform"
    center: int = 15
    power: float = 1.4
    reference: bool = False
    compare: bool = False

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "GenerateConfig":
        if name not in PRESETS:
            raise GenerateError(f"unknown generation preset {name!r}; choose one of {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def validate(self) -> "GenerateConfig":
        _family(self.family)
        self.scheduler = scheduler_name(self.scheduler)
        _int("steps", self.steps, 1)
        _int("seed", self.seed, 0)
        _int("deepcache interval", self.deepcache, 0, "(0 = off, 1 = every step full)")
        _int("branch", self.branch, 0)
        if not isinstance(self.guidance, (int, float)) or not math.isfinite(self.guidance) or self.guidance < 0:
            raise GenerateError(f"guidance must be a number >= 0, got {self.guidance!r}")
        if not isinstance(self.strength, (int, float)) or not 0 < self.strength <= 1:
            raise GenerateError(f"strength must be in (0, 1], got {self.strength!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None:
                _check_size(name, value)
        if self.deepcache:
            try:
                self.schedule = check_schedule(self.schedule, self.center, self.power)
            except DeepCacheError as err:
                raise GenerateError(str(err)) from None
        return self


PRESETS: dict[str, GenerateConfig] = {
    "default": GenerateConfig(),
    "paper": GenerateConfig(preset="paper", family="sd15", scheduler="pndm", steps=50, guidance=7.5, width=512,
                            height=512, deepcache=5, branch=1, schedule="uniform", reference=True),
}


def _int(name: str, value: Any, minimum: int, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise GenerateError(f"{name} must be an integer >= {minimum}{' ' + note if note else ''}, got {value!r}")


def _check_size(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 8 or value % 8:
        raise GenerateError(f"{name} must be a positive multiple of 8 (the VAE works on 8x8-pixel latents), "
                            f"got {value!r}")


def _prompts(prompts: str | Sequence[str]) -> list[str]:
    items = [prompts] if isinstance(prompts, str) else list(prompts) if prompts is not None else []
    if not items:
        raise GenerateError("no prompts given (the prompt list is empty)")
    bad = [p for p in items if not isinstance(p, str)]
    if bad:
        raise GenerateError(f"prompts must be strings, got {type(bad[0]).__name__}")
    return items


def _to_uint8(images: np.ndarray) -> list[np.ndarray]:
    return [(np.clip(im, 0, 1) * 255).round().astype(np.uint8) for im in images]


@dataclasses.dataclass
class GenerationResult:
    """Images of one call, with settings, seeds, timings and (compare mode) the plain pipeline's images."""

    images: list[np.ndarray]
    prompts: list[str]
    seeds: list[int]
    config: dict
    width: int
    height: int
    seconds: float
    deepcache: dict | None = None  # decisions of the cached run (full/partial UNet calls, full steps)
    baseline_images: list[np.ndarray] | None = None
    baseline_seconds: float | None = None
    img2img: bool = False
    tiny: bool = False

    @property
    def speedup(self) -> float | None:
        if self.baseline_seconds is None or not self.seconds:
            return None
        return self.baseline_seconds / self.seconds

    @property
    def timings(self) -> dict:
        out = {"seconds": round(self.seconds, 4), "seconds_per_image": round(self.seconds / len(self.images), 4)}
        if self.baseline_seconds is not None:
            out["baseline_seconds"] = round(self.baseline_seconds, 4)
            out["speedup"] = round(self.speedup, 3)
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

    def to_record(self) -> dict:
        from vision.tiny import TINY_NOTICE

        record = {"prompts": self.prompts, "seeds": self.seeds, "width": self.width, "height": self.height,
                  "img2img": self.img2img, "config": self.config, "timings": self.timings,
                  "deepcache_calls": self.deepcache, "tiny": self.tiny}
        if self.baseline_images is not None:
            record["difference_vs_plain"] = self.difference()
        if self.tiny:
            record["note"] = TINY_NOTICE
        return record

    def to_files(self) -> dict:
        """``{suffix: image}`` for :mod:`vision.batch`: ``png`` (one image) or ``{i}.png``; compare mode
        adds ``plain.png`` / ``{i}.plain.png`` (the same seed without DeepCache)."""
        one = len(self.images) == 1
        files = {("png" if one else f"{i}.png"): im for i, im in enumerate(self.images)}
        for i, im in enumerate(self.baseline_images or []):
            files["plain.png" if one else f"{i}.plain.png"] = im
        return files


@dataclasses.dataclass(frozen=True)
class GenerateProgress:
    """One denoising step done: step ``step`` of ``steps`` of run ``run`` (0-based) of ``runs``.

    ``steps`` counts the pipeline's loop iterations (``len(scheduler.timesteps)`` run: PNDM has one more
    than its distinct steps, img2img only its last ``steps x strength``). ``label`` names the run
    ("denoising"; compare mode: "without DeepCache", then "with DeepCache"). ``fraction`` (0..1) is the
    share of all runs done; the app passes it to ``gr.Progress``.
    """

    step: int
    steps: int
    run: int
    runs: int
    label: str

    @property
    def fraction(self) -> float:
        return min(1.0, (self.run + self.step / max(1, self.steps)) / self.runs)

    @property
    def message(self) -> str:
        return f"{self.label}: step {self.step}/{self.steps}"


def step_callback(report: Callable[[int, int], Any]) -> Callable[..., dict]:
    """A diffusers ``callback_on_step_end`` that calls ``report(steps done, loop length)`` after each step
    (it returns the pipeline's tensors unchanged, so outputs stay bit-identical)."""

    def on_step_end(pipe: Any, i: int, t: Any, tensors: dict) -> dict:
        report(i + 1, pipe.num_timesteps)
        return tensors

    return on_step_end


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate(prompts: str | Sequence[str], config: GenerateConfig | None = None, *, image: Any = None,
             hub: Any = None, on_progress: Callable[[GenerateProgress], Any] | None = None,
             **options: Any) -> GenerationResult:
    """Generate one image per prompt (text-to-image, or image-to-image from ``image``).

    ``config`` and/or keyword ``options`` (fields of :class:`GenerateConfig`) give the settings;
    ``image`` (path, PIL, array) switches to img2img with ``strength``; ``on_progress`` receives a
    :class:`GenerateProgress` after every denoising step. Raises :class:`GenerateError` (a
    ``ValueError``) for unusable settings before any model runs.
    """
    from PIL import Image

    from vision.hub import get_hub
    from vision.imaging import load_image

    unknown = set(options) - {f.name for f in dataclasses.fields(GenerateConfig)}
    if unknown:
        raise GenerateError(f"unknown option(s): {', '.join(sorted(unknown))}")
    config = dataclasses.replace(config or GenerateConfig(), **options).validate()
    prompt_list = _prompts(prompts)
    hub = hub or get_hub()
    size = default_size(hub, config.family)
    init = None
    if image is not None:
        init = load_image(image)
        h0, w0 = init.shape[:2]
        width = config.width or max(8, w0 // 8 * 8)
        height = config.height or max(8, h0 // 8 * 8)
        if int(config.steps * config.strength) < 1:
            raise GenerateError(f"steps x strength = {config.steps} x {config.strength} leaves no denoising step; "
                                "raise steps or strength")
    else:
        width, height = config.width or size, config.height or size
    _check_size("width", width)
    _check_size("height", height)

    pipe = build_pipeline(hub, config.family, config.scheduler, img2img=init is not None)
    pipe.set_progress_bar_config(disable=True)
    cache = None
    if config.deepcache:
        try:
            cache = DeepCache(pipe, interval=config.deepcache, branch=config.branch, schedule=config.schedule,
                              center=config.center, power=config.power, reference=config.reference)
        except DeepCacheError as err:
            raise GenerateError(str(err)) from None

    seeds = [config.seed + i for i in range(len(prompt_list))]
    kwargs: dict[str, Any] = {"prompt": prompt_list, "num_inference_steps": config.steps,
                              "guidance_scale": float(config.guidance), "output_type": "np"}
    if config.negative_prompt:
        kwargs["negative_prompt"] = [config.negative_prompt] * len(prompt_list)
    if init is not None:
        pil = Image.fromarray(init)
        if pil.size != (width, height):
            pil = pil.resize((width, height), Image.Resampling.LANCZOS)
        kwargs.update(image=[pil] * len(prompt_list), strength=float(config.strength))
    else:
        kwargs.update(width=width, height=height)
    device = pipe.unet.device

    runs = 2 if config.compare else 1

    def step_reports(run_index: int, label: str) -> dict:
        """Pipeline arguments that report each step of one timed run to ``on_progress``."""
        if on_progress is None:
            return {}
        return {"callback_on_step_end": step_callback(
            lambda step, steps: on_progress(GenerateProgress(step, steps, run_index, runs, label)))}

    def run(with_cache: bool, **extra: Any) -> tuple[Any, float]:
        generators = [make_generator(s) for s in seeds]
        context = cache if with_cache and cache is not None else contextlib.nullcontext()
        with model_lock(pipe.unet), context:  # no other engine changes the shared UNet meanwhile
            _sync(device)
            start = time.perf_counter()
            out = pipe(**{**kwargs, **extra}, generator=generators)
            _sync(device)
            return out, time.perf_counter() - start

    baseline, baseline_seconds = None, None
    if config.compare:
        run(False, num_inference_steps=2, output_type="latent",
            **({"strength": 1.0} if init is not None else {}))  # warm-up: first-call costs off the clock
        out, baseline_seconds = run(False, **step_reports(0, "without DeepCache"))
        baseline = _to_uint8(out.images)
    out, seconds = run(True, **step_reports(runs - 1, "with DeepCache" if cache is not None else "denoising"))
    return GenerationResult(
        images=_to_uint8(out.images), prompts=prompt_list, seeds=seeds, config=dataclasses.asdict(config),
        width=width, height=height, seconds=seconds,
        deepcache=_calls_summary(cache) if cache is not None else None, baseline_images=baseline,
        baseline_seconds=baseline_seconds, img2img=init is not None, tiny=bool(getattr(hub, "tiny", False)))


def _calls_summary(cache: DeepCache) -> dict:
    gen = cache.last_generation()
    return {key: gen[key] for key in ("numbering", "steps", "full_steps", "full_calls", "partial_calls",
                                      "plain_calls")}
