"""Part 7 of ``python -m vision bench gpu``: Story on SDXL at 1024x1024 with the memory options on (#27: the goal
is under 16 GB): the peak GPU memory of one round-1 frame (the round's image-encoder call over the reference
frames, then one frame attending to them, VAE decode included) for the ``sdxl`` preset (VAE tiling on, image
encoder on the CPU between rounds), the ``reference`` preset (untiled decode, encoder offloaded) and, for
comparison, the ``sdxl`` preset with every option off; with two declared characters in the sdxl run (two
IP-Adapters). Full-size SDXL base 1.0 architectures with random weights (RealVisXL V4.0, the presets' checkpoint,
is the same architecture: ``checkpoint="sdxl"`` runs the hub's ``sdxl_*`` names), fp16, IP-Adapter SDXL sized for
them and the ViT-bigG/14 image encoder (1.84 B parameters)."""

from __future__ import annotations

import gc

import numpy as np
import torch

from bench.gpu.harness import Run, table

MODELS = ["sdxl_unet", "sdxl_vae", "sdxl_text_encoder", "sdxl_text_encoder_2", "ip_adapter_sdxl",
          "ip_image_encoder_bigg"]


def _configs(run: Run) -> dict:
    """Label -> (StoryConfig, with characters?) of the measured runs."""
    from vision.engines.story import StoryConfig

    s = run.scale
    base = {"checkpoint": "sdxl", "rounds": 1, "steps": s.story_sdxl_steps, "size": s.story_sdxl_size, "seed": 0}
    sdxl = StoryConfig.from_preset("sdxl", **base)
    reference = StoryConfig.from_preset("reference", **base)
    # explicit True: what the presets' auto values are at 1024^2 on CUDA (and the smoke run goes through them too)
    return {"sdxl preset, memory options on, 2 characters": (sdxl.replace(vae_tiling=True, offload_image_encoder=True),
                                                            True),
            "reference preset (untiled decode), encoder offloaded": (reference.replace(offload_image_encoder=True),
                                                                     False),
            "sdxl preset, every memory option off": (sdxl.replace(vae_tiling=False, offload_image_encoder=False),
                                                     False)}


def _round(run: Run, config, characters: bool) -> tuple[float | None, float | None, str]:
    """One round-1 frame of ``config`` through the engine's code path; (peak allocated, peak reserved GiB,
    the memory options that applied)."""
    from vision.engines.story import (
        Cast,
        Character,
        StoryEngine,
        describe_memory,
        ip_adapter_on,
        load_characters,
        memory_options,
    )
    from vision.engines.story.run_models import run_context

    s = run.scale
    rng = np.random.default_rng(0)
    references = [rng.integers(0, 256, (s.story_sdxl_size,) * 2 + (3,), dtype=np.uint8)
                  for _ in range(s.story_sdxl_references)]
    engine = StoryEngine(config, run.hub)
    built = engine.models()
    cast = None
    if characters:
        people = load_characters([Character("Ann", (references[0],)), Character("Bob", (references[-1],))])
        cast = Cast([("Ann", "Bob")], engine.encode_characters(people), config.character_scale)
    options = memory_options(config, s.story_sdxl_size, run.device)
    gc.collect()
    if run.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with run_context(run.hub, config, built, s.story_sdxl_size), \
            ip_adapter_on(built.pipe, run.hub.get("ip_adapter_sdxl"), copies=2 if cast else 1):
        engine.generate_round(built.pipe, 1, ["Ann and Bob on a bridge at dawn"], references, s.story_sdxl_size,
                              cast=cast)
    if not run.cuda:
        return None, None, describe_memory(options)
    return (torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30,
            describe_memory(options))


def part_story_sdxl(run: Run) -> None:
    s = run.scale
    run.resident(MODELS)
    rows = []
    for label, (config, characters) in _configs(run).items():
        if run.out_of_time():
            rows.append([label, "not run (budget spent)", "-", "-", "-"])
            continue
        allocated, reserved, options = _round(run, config, characters)
        goal = "-" if allocated is None else ("yes" if reserved < 16 else "**no**")
        rows.append([label, options.replace("Memory options: ", ""),
                     "n/a (no CUDA)" if allocated is None else f"**{allocated:.2f}**",
                     "n/a" if reserved is None else f"{reserved:.2f}", goal])
    run.report.write(
        f"Settings: SDXL base architecture (RealVisXL V4.0's), {s.story_sdxl_size}^2, {s.story_sdxl_steps} steps, "
        f"round 1 with {s.story_sdxl_references} reference frames, one frame made (peak memory is per frame), "
        "fp16, the models resident (the image encoder moved off the GPU after its call when offloaded). Peak = "
        "`torch.cuda.max_memory_allocated` / `max_memory_reserved` over the round.\n\n"
        + table(["run", "memory options", "peak allocated GiB", "peak reserved GiB", "under 16 GB"], rows))
