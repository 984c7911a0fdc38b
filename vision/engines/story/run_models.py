"""The models of a story run: the base model (the family's checkpoint, or the user's own), LoRAs (the user's
and the fast preset's LCM-LoRA) and the memory options, all through the generation engine's public model
API (:mod:`vision.engines.generate.models`: one loader for every engine) and undone when the run ends."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vision.engines.story.config import FAMILIES, StoryConfig, StoryError
from vision.engines.story.memory import memory_options, model_offload, vae_tiling
from vision.hub import model_lock


@dataclass
class StoryModels:
    """A run's text-to-image pipeline over shared modules, and what it is made of (for the record)."""

    pipe: Any
    arch: str
    checkpoint: Any = None  # vision.engines.generate.models.CheckpointInfo of the user's model

    @classmethod
    def build(cls, hub: Any, config: StoryConfig) -> StoryModels:
        """The pipeline of ``config.model`` (the user's checkpoint) or of the family's ``checkpoint``, with a
        fresh ``config.scheduler``. StoryError when the user's checkpoint is of another architecture than
        the family (whose IP-Adapter and image encoder the run uses), or cannot be loaded."""
        from vision.engines.generate.models import ModelFileError, pipeline_parts
        from vision.engines.generate.pipelines import assemble_pipeline

        try:
            parts, arch, info = pipeline_parts(hub, config.base_model(), config.model)
        except ModelFileError as err:
            raise StoryError(f"model: {err}") from None
        if arch != config.family:
            raise StoryError(f"model: {config.model} is an {arch.upper()} checkpoint but the story's family is "
                             f"{config.family} (its IP-Adapter is {FAMILIES[config.family].ip_adapter}): set family "
                             f"{arch} (--family {arch}, or the {arch} preset)")
        pipe = assemble_pipeline(arch, parts, config.scheduler)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, arch, info)

    def record(self, loras: list[dict]) -> dict:
        """What the record says of the models: the user's checkpoint (source, kind, sha256 prefix, ...) and
        the LoRAs applied (path, scale, sha256 prefix, adapter, modules)."""
        return {"checkpoint": self.checkpoint.record() if self.checkpoint else None, "loras": loras}


def run_loras(hub: Any, config: StoryConfig) -> list:
    """The user's LoRAs, then the family's LCM-LoRA (registry file, scale 1) when ``config.lcm``."""
    from vision.engines.generate.models import Lora

    loras = list(config.loras)
    if config.lcm:
        loras.append(Lora(str(hub.get(config.lcm_lora())), 1.0))
    return loras


@contextlib.contextmanager
def run_context(hub: Any, config: StoryConfig, built: StoryModels, size: int) -> Iterator[list[dict]]:
    """For the rounds: the model locks of the modules LoRAs change, the LoRAs (diffusers' LoRA loading via
    ``loras_applied``; yields their records), VAE tiling and diffusers' model offload when they apply;
    everything undone on the way out, also after an error or a cancel."""
    from vision.engines.generate.models import ModelFileError, loras_applied

    pipe = built.pipe
    loras = run_loras(hub, config)
    options = memory_options(config, size, hub.device)
    with contextlib.ExitStack() as stack:
        for name in ("unet", "text_encoder", "text_encoder_2") if loras else ():
            module = getattr(pipe, name, None)
            if module is not None:
                stack.enter_context(model_lock(module))
        try:
            applied = stack.enter_context(loras_applied(pipe, loras))
        except ModelFileError as err:
            raise StoryError(f"loras: {err}") from None
        stack.enter_context(vae_tiling(pipe.vae, options["vae_tiling"]))
        stack.enter_context(model_offload(pipe, options["model_offload"], hub.device))
        yield applied
