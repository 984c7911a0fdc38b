"""diffusers pipelines over the hub's shared modules (no weights copied), seeded generators and step reports.

The Story-Adapter engine builds on :func:`build_pipeline`, :func:`make_generator` and :func:`step_callback`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vision.engines.generate.config import SCHEDULERS, TINY_SIZE, family_spec, scheduler_name


def make_scheduler(name: str, config: Any) -> Any:
    """A fresh scheduler ``name`` from a diffusers scheduler config (the model's training noise schedule)."""
    import diffusers

    cls_name, overrides = SCHEDULERS[scheduler_name(name)]
    return getattr(diffusers, cls_name).from_config(config, **overrides)


def pipeline_class(arch: str, img2img: bool = False, control: bool = False) -> type:
    """The diffusers pipeline class for an architecture (``sd15`` | ``sdxl`` | ``sd3``) and task."""
    import diffusers

    names = {("sd15", False, False): "StableDiffusionPipeline",
             ("sd15", True, False): "StableDiffusionImg2ImgPipeline",
             ("sd15", False, True): "StableDiffusionControlNetPipeline",
             ("sd15", True, True): "StableDiffusionControlNetImg2ImgPipeline",
             ("sdxl", False, False): "StableDiffusionXLPipeline",
             ("sdxl", True, False): "StableDiffusionXLImg2ImgPipeline",
             ("sdxl", False, True): "StableDiffusionXLControlNetPipeline",
             ("sdxl", True, True): "StableDiffusionXLControlNetImg2ImgPipeline",
             ("sd3", False, False): "StableDiffusion3Pipeline",
             ("sd3", True, False): "StableDiffusion3Img2ImgPipeline"}
    return getattr(diffusers, names[(arch, bool(img2img), bool(control))])


def family_parts(hub: Any, family: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The hub's shared modules of a family, by pipeline argument name (scheduler: the hub's config),
    without those in ``skip`` (a checkpoint provides them)."""
    spec = family_spec(family)
    keys = [k for k in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3",
                        "tokenizer", "tokenizer_2", "tokenizer_3") if k in spec and k not in skip]
    parts = {key: hub.get(spec[key]) for key in keys}
    parts["scheduler"] = hub.get(spec["scheduler"])
    return parts


def assemble_pipeline(arch: str, parts: dict[str, Any], scheduler: str, img2img: bool = False,
                      controlnet: Any = None) -> Any:
    """A diffusers pipeline of ``arch`` over ``parts`` (modules by argument name, ``scheduler`` a scheduler
    whose config the fresh ``scheduler``-named sampler is made from); a ControlNet when given."""
    parts = dict(parts)
    parts["scheduler"] = make_scheduler(scheduler, parts["scheduler"].config)
    cls = pipeline_class(arch, img2img, controlnet is not None)
    if controlnet is not None:
        parts["controlnet"] = controlnet
    if arch == "sd15":
        return cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if arch == "sdxl":
        return cls(**parts, add_watermarker=False)
    return cls(**parts)


def build_pipeline(hub: Any = None, family: str = "sd15", scheduler: str = "ddim", img2img: bool = False) -> Any:
    """A diffusers SD1.5 / SDXL / SD3 (img2img) pipeline sharing the hub's modules; a fresh scheduler.

    Cheap (no weights are copied or moved): build one per call or per thread. The safety checker and
    the feature extractor are None; the SDXL watermarker is off.
    """
    from vision.hub import get_hub

    hub = hub or get_hub()
    return assemble_pipeline(family_spec(family)["arch"], family_parts(hub, family), scheduler, img2img)


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (the initial noise is then device-independent)."""
    return torch.Generator("cpu").manual_seed(int(seed))


def default_size(hub: Any, family: str) -> int:
    """The family's native side (pixels); 64 for the tiny models."""
    return TINY_SIZE if getattr(hub, "tiny", False) else family_spec(family)["size"]


def step_callback(report: Callable[[int, int], Any]) -> Callable[..., dict]:
    """A diffusers ``callback_on_step_end`` that calls ``report(steps done, loop length)`` after each step
    (it returns the pipeline's tensors unchanged, so outputs stay bit-identical). ``report`` may raise
    (e.g. :class:`vision.engines.contract.Cancelled`): the pipeline stops there."""

    def on_step_end(pipe: Any, i: int, t: Any, tensors: dict) -> dict:
        report(i + 1, pipe.num_timesteps)
        return tensors

    return on_step_end
