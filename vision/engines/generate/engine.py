"""The generation engine: :class:`GenerateEngine` (see the package docstring)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vision.common import synchronize
from vision.engines.contract import Engine, ProgressCallback, ProgressReporter
from vision.engines.generate.config import GenerateConfig, GenerateError, size_problem
from vision.engines.generate.control import DEPTH_MODEL, control_image, load_controlnet
from vision.engines.generate.models import loras_applied, pipeline_parts
from vision.engines.generate.pipelines import assemble_pipeline, default_size, make_generator, step_callback
from vision.engines.generate.results import GenerationResult
from vision.hub import model_lock
from vision.weights import ensure_present, models_for

CACHE_NAMES = {"deepcache": "DeepCache", "taylorseer": "TaylorSeer", "pab": "PAB", "none": "a cache"}


@dataclasses.dataclass
class _Job:
    """One call's checked inputs: what the pipeline is called with, and notes for the user."""

    prompts: list[str]
    seeds: list[int]
    width: int
    height: int
    init: Any = None  # PIL start image (img2img), at width x height
    control: Any = None  # PIL control map (ControlNet), at width x height
    notes: list[str] = dataclasses.field(default_factory=list)

    def arguments(self, config: GenerateConfig) -> dict[str, Any]:
        """The pipeline's keyword arguments (without generators and callbacks)."""
        kwargs: dict[str, Any] = {"prompt": self.prompts, "num_inference_steps": config.steps,
                                  "guidance_scale": float(config.guidance), "output_type": "pil"}
        if config.negative_prompt:
            kwargs["negative_prompt"] = [config.negative_prompt] * len(self.prompts)
        if self.init is not None:
            kwargs.update(image=[self.init] * len(self.prompts), strength=float(config.strength))
        else:
            kwargs.update(width=self.width, height=self.height)
        if self.control is not None:  # the ControlNet pipelines' names: img2img takes it as control_image
            kwargs["control_image" if self.init is not None else "image"] = [self.control] * len(self.prompts)
            kwargs.update(controlnet_conditioning_scale=float(config.control_scale),
                          control_guidance_start=float(config.control_start),
                          control_guidance_end=float(config.control_end))
        return kwargs


@dataclasses.dataclass
class _Pipeline:
    """The pipeline of one call and what it is made of (for the record)."""

    pipe: Any
    arch: str
    parts: dict[str, Any]
    checkpoint: Any = None  # CheckpointInfo of a user checkpoint
    controlnet: str | None = None  # the ControlNet's registry name or source


class GenerateEngine(Engine):
    """Stable Diffusion text-to-image / image-to-image with a cache, on the hub's shared models (or the
    user's checkpoint, with LoRAs and a ControlNet).

    ``GenerateEngine(config=None, hub=None)(prompts, image=None, progress=None, control_image=None)`` ->
    :class:`GenerationResult`. ``prompts``: one string or a list (image i uses ``seed + i``); ``image``: a
    start image (path, PIL or RGB array) for image-to-image; ``control_image``: what ``config.control``'s
    map is made from (default: the start image).
    ``progress`` receives a :class:`~vision.engines.contract.Progress` after every denoising step of every
    timed run, position ``{"run", "runs", "step", "steps"}`` (run: 1-based number of the current run,
    compare mode's plain run first; step: loop iterations done of ``steps``, the pipeline's loop length).
    A ``progress`` that raises :class:`~vision.engines.contract.Cancelled` stops the run at that step;
    the cache and the model lock are released on the way out.
    """

    CONFIG = GenerateConfig

    def __call__(self, prompts: str | Sequence[str], image: Any = None, progress: ProgressCallback | None = None,
                 control_image: Any = None) -> GenerationResult:
        config = self.config
        # 1. the inputs: prompts, seeds, size, the start image, the control map
        job = self._job(prompts, image, control_image)
        if not config.model:  # every missing model of the family named at once (a checkpoint brings its own)
            ensure_present(self.hub, models_for("generate", config), "generate")
        # 2. the pipeline over the hub's shared modules (or a checkpoint's), a ControlNet, a fresh scheduler
        built = self._pipeline(job)
        # 3. the LoRAs and the timed runs, holding the shared modules they change (no other engine
        #    changes them meanwhile); LoRAs and cache are released on the way out, also on Cancelled
        with self._locks(built.pipe), _memory_advice(job), loras_applied(built.pipe, config.loras) as loras:
            images, seconds, baseline, baseline_seconds, cache = self._runs(built.pipe, job,
                                                                            ProgressReporter(progress))
        return GenerationResult(
            config=config, images=images, prompts=job.prompts, seeds=job.seeds, width=job.width, height=job.height,
            seconds=seconds, cache=self._cache_summary(cache), baseline_images=baseline,
            baseline_seconds=baseline_seconds, img2img=job.init is not None, tiny=self.tiny,
            models=self._models(built), checkpoint=built.checkpoint.record() if built.checkpoint else None,
            loras=loras, control=self._control_record(built), notes=job.notes,
            control_image=np.asarray(job.control) if job.control is not None else None)

    def _pipeline(self, job: _Job) -> _Pipeline:
        """The family's or the checkpoint's modules, the ControlNet, assembled with a fresh scheduler."""
        config = self.config
        parts, arch, checkpoint = pipeline_parts(self.hub, config.family, config.model)
        controlnet = name = None
        if config.control:
            controlnet, name = load_controlnet(self.hub, config, arch, parts["unet"])
        pipe = assemble_pipeline(arch, parts, config.scheduler, img2img=job.init is not None, controlnet=controlnet)
        pipe.set_progress_bar_config(disable=True)
        return _Pipeline(pipe, arch, parts, checkpoint, name)

    def _runs(self, pipe: Any, job: _Job, reporter: ProgressReporter) -> tuple:
        """Compare mode: a warm-up off the clock and the plain run; then the run with the cache.
        Returns (images, seconds, plain images or None, plain seconds or None, the cache or None)."""
        config = self.config
        runs = 2 if config.compare else 1
        name = CACHE_NAMES.get(config.cache_method, config.cache_method)
        baseline = baseline_seconds = None
        if config.compare:
            self._run(pipe, job, None, num_inference_steps=2, output_type="latent",
                      **({"strength": 1.0} if job.init is not None else {}))
            baseline, baseline_seconds = self._run(pipe, job, None, **self._reports(
                reporter, 0, runs, f"without {name}"))
        cache = self._cache(pipe)
        label = f"with {name}" if cache is not None else "denoising"
        images, seconds = self._run(pipe, job, cache, **self._reports(reporter, runs - 1, runs, label))
        return images, seconds, baseline, baseline_seconds, cache

    def _locks(self, pipe: Any) -> contextlib.ExitStack:
        """The model locks of the denoiser and, with LoRAs, the text encoders (LoRAs change them)."""
        stack = contextlib.ExitStack()
        names = ["unet", "transformer", "controlnet"]
        names += ["text_encoder", "text_encoder_2"] if self.config.loras else []
        for name in names:
            module = getattr(pipe, name, None)
            if module is not None:
                stack.enter_context(model_lock(module))
        return stack

    # -- steps --------------------------------------------------------------------------------------

    def _job(self, prompts: str | Sequence[str], image: Any, control: Any = None) -> _Job:
        """Checked prompts, seeds (``seed + i``), the output size, the start image and the control map,
        before any generation model runs."""
        config = self.config
        items = check_prompts(prompts)
        seeds = [config.seed + i for i in range(len(items))]
        if control is not None and not config.control:
            raise GenerateError("control_image: a control image was given but no control type (control: "
                                "canny, depth or image)")
        if config.control and control is None and image is None:
            raise GenerateError(f"control: '{config.control}' needs a control image (control_image), or a start "
                                "image to make it from")
        if image is None:
            side = default_size(self.hub, config.family)
            job = _Job(items, seeds, *_checked_size(config.width or side, config.height or side))
        else:
            job = self._img2img_job(items, seeds, image)
        if config.control:
            if control is None:
                job.notes.append("control map made from the start image")
            job.control, notes = control_image(self.hub, config, control if control is not None else image,
                                               job.width, job.height)
            job.notes += notes
        return job

    def _img2img_job(self, items: list[str], seeds: list[int], image: Any) -> _Job:
        from PIL import Image

        from vision.imaging import load_image

        config = self.config
        init = load_image(image)
        h0, w0 = init.shape[:2]
        width, height = _checked_size(config.width or max(8, w0 // 8 * 8), config.height or max(8, h0 // 8 * 8))
        if int(config.steps * config.strength) < 1:
            raise GenerateError(f"steps x strength = {config.steps} x {config.strength} leaves no denoising step; "
                                "raise steps or strength")
        pil = Image.fromarray(init)
        notes = []
        if pil.size != (width, height):
            pil = pil.resize((width, height), Image.Resampling.LANCZOS)
            notes.append(f"start image resized from {w0}x{h0} to {width}x{height}")
        return _Job(items, seeds, width, height, init=pil, notes=notes)

    def _cache(self, pipe: Any) -> Any:
        """The cache of the run (a context manager: DeepCache for UNets, a diffusers DiT cache) or None."""
        from vision.deepcache import cache_for
        from vision.engines.generate.dit import DiTCache

        c = self.config
        if c.cache_method == "none":
            return None
        if c.cache_method != "deepcache":
            return DiTCache(pipe.transformer, c.cache_method, c.dit_interval)
        return cache_for(pipe, GenerateError, c.deepcache, branch=c.branch, schedule=c.schedule, center=c.center,
                         power=c.power, reference=c.reference)

    def _run(self, pipe: Any, job: _Job, cache: Any, **extra: Any) -> tuple[Any, float]:
        """One pipeline call with the job's seeds (under ``cache`` when given): (uint8 images, seconds)."""
        generators = [make_generator(s) for s in job.seeds]
        device = pipe.device
        with cache if cache is not None else contextlib.nullcontext():
            synchronize(device)
            start = time.perf_counter()
            out = pipe(**{**job.arguments(self.config), **extra}, generator=generators)
            synchronize(device)
            seconds = time.perf_counter() - start
        if extra.get("output_type") == "latent":
            return None, seconds
        return [np.asarray(im.convert("RGB")) for im in out.images], seconds

    @staticmethod
    def _reports(reporter: ProgressReporter, run: int, runs: int, label: str) -> dict[str, Any]:
        """Pipeline arguments that report each denoising step of run ``run`` (0-based) of ``runs``."""
        if reporter.callback is None:
            return {}

        def report(step: int, steps: int) -> None:
            reporter((run + step / max(1, steps)) / runs, f"{label}: step {step}/{steps}",
                     run=run + 1, runs=runs, step=step, steps=steps)

        return {"callback_on_step_end": step_callback(report)}

    def _cache_summary(self, cache: Any) -> dict | None:
        """What the record states about the cache: its method and settings; DeepCache's decisions."""
        c = self.config
        if cache is None:
            return None
        if c.cache_method != "deepcache":
            return cache.settings()
        gen = cache.last_generation()
        calls = {key: gen[key] for key in ("numbering", "steps", "full_steps", "full_calls", "partial_calls",
                                           "plain_calls", "controlnet_partial_calls", "controlnet_full_calls")}
        return {"method": "deepcache", "interval": c.deepcache, "branch": c.branch, "schedule": c.schedule,
                "calls": calls}

    def _models(self, built: _Pipeline) -> dict[str, str]:
        """Role -> hub name of each model the pipeline ran (``checkpoint <source>`` for a checkpoint's)."""
        from vision.engines.generate.arch import BASE_FAMILY
        from vision.engines.generate.config import family_spec

        family, checkpoint = self.config.family, built.checkpoint
        if checkpoint is not None and family_spec(family)["arch"] != checkpoint.arch:
            family = BASE_FAMILY[checkpoint.arch]
        spec = family_spec(family)
        own = checkpoint.parts if checkpoint is not None else ()
        models = {role: f"checkpoint {checkpoint.source}" if role in own else spec[role]
                  for role in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
                  if role in spec and built.parts.get(role) is not None}
        if built.controlnet:
            models["controlnet"] = built.controlnet
        if self.config.control == "depth":
            models["depth"] = DEPTH_MODEL
        return models

    def _control_record(self, built: _Pipeline) -> dict | None:
        c = self.config
        if not c.control:
            return None
        record = {"type": c.control, "controlnet": built.controlnet, "scale": c.control_scale,
                  "start": c.control_start, "end": c.control_end}
        if c.control == "canny":
            record["canny"] = {"low": c.canny_low, "high": c.canny_high}
        return record


def check_prompts(prompts: str | Sequence[str]) -> list[str]:
    """The prompts as a non-empty list of strings (GenerateError naming what is wrong)."""
    items = [prompts] if isinstance(prompts, str) else list(prompts) if prompts is not None else []
    if not items:
        raise GenerateError("no prompts given (the prompt list is empty)")
    bad = [p for p in items if not isinstance(p, str)]
    if bad:
        raise GenerateError(f"prompts must be strings, got {type(bad[0]).__name__}")
    return items


def _checked_size(width: int, height: int) -> tuple[int, int]:
    problems = size_problem("width", width) + size_problem("height", height)
    if problems:
        raise GenerateError("; ".join(problems))
    return width, height


@contextlib.contextmanager
def _memory_advice(job: _Job) -> Any:
    """Re-raise a CUDA out-of-memory error (same type) with what to change; the caches and LoRAs are
    released by the contexts it leaves, and the allocator's cached blocks here."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        torch.cuda.empty_cache()
        raise torch.OutOfMemoryError(
            f"out of GPU memory generating {len(job.prompts)} image(s) of {job.width}x{job.height}: generate fewer "
            f"prompts at once or a smaller size, or set VISION_MEMORY_BUDGET_GB so that the hub moves unused "
            f"models to the CPU ({err})") from err
