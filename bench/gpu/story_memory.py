"""Parts 5 and 6 of ``python -m vision bench gpu``: Story-Adapter (one round with DeepCache vs off, peak
memory with 20 reference frames) and every engine's default models resident at once."""

from __future__ import annotations

import gc

import numpy as np
import torch

from bench.common import timed_call
from bench.gpu.harness import PROMPT_BOX, PROMPT_IMAGE, Run, memory_text, photo, table, voc_images


def part_story(run: Run) -> None:
    from bench import story as sb
    from vision.engines.story import StoryConfig, StoryEngine, ip_adapter_on

    s = run.scale
    run.resident(["sd15_unet", "sd15_vae", "sd15_text_encoder", "ip_image_encoder_h", "ip_adapter_sd15"])
    rng = np.random.default_rng(0)
    references = [rng.integers(0, 256, (s.story_size, s.story_size, 3), dtype=np.uint8)
                  for _ in range(max(s.story_frames, s.story_references))]
    prompts = [sb.PROMPTS[i % len(sb.PROMPTS)] + f", panel {i + 1}" for i in range(len(references))]
    base = dict(rounds=1, steps=s.story_steps, size=s.story_size, seed=0, guidance=s.guidance)
    pipe = StoryEngine(StoryConfig(**base), run.hub).pipeline()
    rows, results = [], {}
    with ip_adapter_on(pipe, run.hub.get("ip_adapter_sd15")):
        warm = StoryEngine(StoryConfig(**{**base, "steps": 2}), run.hub)
        warm.generate_round(pipe, 1, prompts[:1], references[:s.story_frames], s.story_size)
        for label, interval in (("off", 0), ("N=3", 3)):
            if run.out_of_time():
                break
            engine = StoryEngine(StoryConfig(**base, deepcache=interval), run.hub)
            frames = s.story_frames
            r = results[label] = sb.time_round(engine, pipe, prompts[:frames], references[:frames], s.story_size,
                                               run.device)
            rows.append([f"DeepCache {label}", frames, frames, f"{r['seconds']:.2f}", f"{r['seconds'] / frames:.2f}",
                         f"{r['unet_seconds']:.2f}", f"{r['encode_seconds']:.2f}",
                         "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"])
        if not run.out_of_time():
            config = StoryConfig(**base)  # the engine's default DeepCache
            r = sb.time_round(StoryEngine(config, run.hub), pipe, prompts[:s.story_generated],
                              references[:s.story_references], s.story_size, run.device)
            rows.append([f"DeepCache N={config.deepcache} (default)", s.story_references, s.story_generated,
                         f"{r['seconds']:.2f}", f"{r['seconds'] / s.story_generated:.2f}", f"{r['unet_seconds']:.2f}",
                         f"{r['encode_seconds']:.2f}", "-" if r["peak_gib"] is None else f"**{r['peak_gib']:.2f}**"])
    speedup = (f"**DeepCache N=3 vs off, one round: {results['off']['seconds'] / results['N=3']['seconds']:.2f}x "
               f"wall clock, {results['off']['unet_seconds'] / results['N=3']['unet_seconds']:.2f}x inside the UNet** "
               "(goal >= 1.8x). " if len(results) == 2 else "")
    run.report.write(
        f"Settings: SD1.5 + IP-Adapter (ViT-H/14 image encoder), {s.story_size}^2, {s.story_steps} DDIM steps, CFG "
        f"{s.guidance}, round 1 (random previous-round frames as references), `StoryEngine.generate_round` timed by "
        "bench/story.py's `time_round` (UNet time from hooks; peak = `max_memory_allocated` of the round).\n\n"
        + speedup + "\n\n" + table(["mode", "reference frames", "frames made", "round s", "s / frame", "in UNet s",
                                    "image encoder s", "peak allocated GiB"], rows))


def default_models() -> dict[str, list[str]]:
    """Each engine's hub models at its default settings."""
    from vision.engines import generate, story
    from vision.engines.ipseg import IPSegConfig
    from vision.engines.trident import PRESETS

    def sd(family: str) -> list[str]:
        names = generate.FAMILIES[family]
        return [names[k] for k in ("unet", "vae", "text_encoder", "text_encoder_2") if k in names]

    trident, ipseg = PRESETS["open"], IPSegConfig()  # TridentEngine's and IPSeg's default configs
    story_config = story.StoryConfig()
    story_family = story.FAMILIES[story_config.family]
    return {"trident": [trident.clip, trident.vfm, trident.sam],
            "ipseg": [ipseg.dino_model, ipseg.sam_model] + (sd("sd15") if ipseg.use_sd else []),
            "generate": sd(generate.GenerateConfig().family),
            "story": sd(story_config.base_model()) + [story_family.ip_adapter, story_family.image_encoder]}


def part_memory(run: Run) -> None:
    from vision.engines.generate import GenerateConfig, GenerateEngine
    from vision.engines.ipseg import IPSegConfig, IPSegEngine, Prompt
    from vision.engines.story import FAMILIES, StoryConfig, StoryEngine, ip_adapter_on
    from vision.engines.trident import TridentEngine

    s = run.scale
    per_engine = default_models()
    wanted = list(dict.fromkeys(n for names in per_engine.values() for n in names))
    run.resident(wanted)
    for name in wanted:
        run.hub.get(name)
    gc.collect()
    if run.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        resident = (torch.cuda.memory_allocated() / 2**30, torch.cuda.memory_reserved() / 2**30)
    status = {row["name"]: row for row in run.hub.status() if row["name"] in wanted}
    total = sum(row["memory_mb"] for row in status.values())
    rows = [[name, row["dtype"], f"{row['memory_mb']:.0f}", f"{100 * row['memory_mb'] / total:.1f}%",
             ", ".join(e for e, names in per_engine.items() if name in names)] for name, row in status.items()]
    rows.append(["**all**", "", f"**{total:.0f}**", "100%", ""])
    image = voc_images(1, s.image_size)[0]

    def story_round():
        config = StoryConfig(steps=s.memory_steps, size=s.story_size)
        engine = StoryEngine(config, run.hub)
        pipe = engine.pipeline()
        references = [image] * s.story_frames
        with ip_adapter_on(pipe, run.hub.get(FAMILIES[config.family].ip_adapter)):
            engine.generate_round(pipe, 1, ["a knight"], references, s.story_size)

    calls = {
        "trident": lambda: TridentEngine(hub=run.hub)(image, ["cat", "dog", "person", "background"]),
        "ipseg": lambda: IPSegEngine(IPSegConfig(dino_size=s.dino_size, sd_size=s.ipseg_sd_size), hub=run.hub)(
            Prompt(photo(PROMPT_IMAGE), box=PROMPT_BOX), image),
        "generate": lambda: GenerateEngine(GenerateConfig(steps=s.memory_steps, width=s.story_size,
                                                          height=s.story_size), run.hub)("a red fox in the snow"),
        "story": story_round,
    }
    peaks = []
    for engine, call in calls.items():
        if run.out_of_time():
            peaks.append([engine, "not run (budget spent)", "-"])
            continue
        if run.cuda:
            torch.cuda.reset_peak_memory_stats()
        _, seconds = timed_call(call, run.device)
        peaks.append([engine, f"{seconds:.2f}", memory_text(run)])
    at_rest = (f"allocated {resident[0]:.2f} GiB, reserved {resident[1]:.2f} GiB with all of them resident"
               if run.cuda else "GPU memory: n/a (no CUDA)")
    run.report.write(
        f"Every engine's default models in one hub (fp16, SAM fp32): {at_rest}. Shares from `hub.status()` "
        "(parameters and buffers, the Models tab's numbers):\n\n"
        + table(["model", "dtype", "MiB", "share", "used by"], rows)
        + f"\n\nOne call of each engine with all of them resident (default settings; {s.memory_steps} steps for the "
        f"diffusion engines, {s.story_size}^2, Story round 1 with {s.story_frames} reference frames):\n\n"
        + table(["engine", "seconds (first call)", "GPU memory during the call"], peaks))
