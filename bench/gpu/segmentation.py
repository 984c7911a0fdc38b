"""Parts 3 and 4 of ``python -m vision bench gpu``: Trident (batch mode, overhead ratio, H/14 + SAM-H) and
IPSeg (per-target time, overhead ratio, prompt cache; GF-SAM beside it on the same targets)."""

from __future__ import annotations

import argparse
import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import timed_call
from bench.gpu.harness import PROMPT_BOX, PROMPT_IMAGE, Run, median, photo, table, voc_images


def trident_worker(engine: Any, config: Any, classes: Any) -> Callable[[Any], Any]:
    """The batch runner's ``make_processor`` (the engine holds the class list's text embeddings)."""
    return lambda item: engine(item.image(), classes)


def set_random_text(engine: Any, classes: Any, clip_name: str) -> None:
    """Random unit text embeddings for the class list, as bench/trident.py does: the text encoder runs
    once per class list, not per image, so it stays out of per-image times."""
    width = engine.hub.get(clip_name).text_projection.shape[1]
    embeddings = torch.randn(len(classes.queries), width, generator=torch.Generator().manual_seed(0))
    engine.set_text_embeddings(classes.queries, embeddings.to(engine.hub.device))


def trident_timing(run: Run, engine: Any, config: Any, classes: Any, image: np.ndarray,
                   repeats: int) -> dict[str, Any]:
    """Median per-image pipeline time vs the same model calls timed alone (bench/trident.py's measure)."""
    from bench import trident as tb

    batches: list[int] = []
    hook = run.hub.get(config.sam).mask_decoder.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append(int(kwargs["sparse_prompt_embeddings"].shape[0])), with_kwargs=True)
    pipeline, alone, prompts = [], [], []
    try:
        for i in range(1 + repeats):  # the first run warms up
            batches.clear()
            result, seconds = timed_call(lambda: engine(image, classes, return_probs=False), run.device)
            calls = list(batches)
            forwards = tb.forwards_alone(run.hub, image, config, calls, run.device)
            if i:
                pipeline.append(seconds)
                alone.append(forwards)
                prompts.append(result.info["prompts"])
            if run.out_of_time():
                break
    finally:
        hook.remove()
    if not pipeline:
        pipeline, alone, prompts = [seconds], [forwards], [result.info["prompts"]]
    forwards = {k: median([a[k] for a in alone]) for k in alone[0]}
    return {"pipeline": median(pipeline), "forwards": forwards, "ratio": median(pipeline) / sum(forwards.values()),
            "prompts": prompts[-1], "runs": len(pipeline)}


def part_trident(run: Run) -> None:
    from PIL import Image

    from bench import batch as bb
    from vision.classnames import CLASS_LISTS
    from vision.engines.trident import TridentConfig, TridentEngine, parse_classes

    s = run.scale
    base = TridentConfig.from_preset("voc21")
    run.resident([base.clip, base.vfm, base.sam])
    classes = parse_classes(CLASS_LISTS["voc21"])
    engine = TridentEngine(base, run.hub)
    set_random_text(engine, classes, base.clip)
    images = voc_images(s.images, s.image_size)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_trident_") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:03d}.jpg", quality=92)
        options = argparse.Namespace(batch_size=1, ray=False, device=run.device, full=not run.smoke)
        worker = functools.partial(trident_worker, engine, base, classes)
        row = bb.bench_engine("trident", worker, folder, Path(tmp), options)
    del worker, engine
    rows = []
    for label, config in (("CLIP B/16 + DINO B/16 + SAM-B", base),
                          ("CLIP H/14 + DINO B/16 + SAM-H", base.replace(clip="clip_h14", sam="sam_h"))):
        if run.out_of_time():
            rows.append([label, "not run (budget spent)"] + ["-"] * 8)
            continue
        run.resident([config.clip, config.vfm, config.sam])
        engine = TridentEngine(config, run.hub)
        set_random_text(engine, classes, config.clip)
        t = trident_timing(run, engine, config, classes, images[0], s.trident_repeats)
        f = t["forwards"]
        rows.append([label, f"{t['pipeline']:.3f}", f"{sum(f.values()):.3f}", f"**{t['ratio']:.3f}**",
                     f"{f['dino']:.3f}", f"{f['clip']:.3f}", f"{f['sam_encoder']:.3f}", f"{f['sam_decoder']:.3f}",
                     t["prompts"], t["runs"]])
    run.report.write(
        f"Settings: preset voc21 (21 classes), {s.image_size[0]}x{s.image_size[1]} images, refinement on.\n\n"
        "Text embeddings of the class list: random unit vectors set once (as bench/trident.py; the text encoder "
        "runs once per class list).\n\n"
        f"Batch mode (`vision.batch.run_batch`, {row['images']} images, batch size 1, label PNG + overlay "
        f"written): **{row['warm_ips']:.2f} images/s warm** (engine {row['engine_s_per_image']:.3f} s/image "
        f"median), {row['cold_ips']:.2f} images/s in the first run (first-call costs included), resume check "
        f"{row['resume_ips']:.0f} images/s.\n\nPer image (median of the timed runs after one "
        "warm-up): `TridentEngine.segment` vs its model calls timed alone on the same inputs (goal: ratio <= 1.15).\n\n"
        + table(["models", "pipeline s", "sum of forwards s", "ratio", "DINO s", "CLIP s", "SAM encoder s",
                 "SAM decoder s", "SAM prompts", "runs"], rows))


def part_ipseg(run: Run) -> None:
    from bench import ipseg as ib
    from vision.engines.ipseg import IPSegConfig, IPSegEngine, Prompt
    s = run.scale
    config = IPSegConfig(sam_model="sam_h", dino_size=s.dino_size, sd_size=s.ipseg_sd_size)
    run.resident([config.dino_model, "sd15_unet", "sd15_vae", "sd15_text_encoder", config.sam_model])
    engine = IPSegEngine(config, hub=run.hub)
    prompt = Prompt(photo(PROMPT_IMAGE), box=PROMPT_BOX)
    targets = [photo(i) for i in range(s.ipseg_targets)]
    warm = engine(prompt, targets[0])  # warm-up, and the prompt pass that the cache keeps
    instances = warm.concepts[0].instances
    n_points = len(instances[0].positive) + len(instances[0].negative) if instances else 2
    per_target, alone = [], []
    for _ in range(s.ipseg_repeats):
        result, seconds = timed_call(lambda: engine(prompt, targets[0]), run.device)
        per_target.append(seconds)
        alone.append(ib.models_alone(engine, run.hub, run.device, config.sam_model, n_points, full_unet=True))
        if run.out_of_time():
            break
    forwards = {k: median([a[k][0] for a in alone]) for k in alone[0]}  # wall seconds, synchronised
    total = sum(v for k, v in forwards.items() if not k.startswith("("))

    def all_targets(clear_each: bool) -> None:  # one prompt pass for all, or one per target
        engine.prompt_cache.clear()
        for target in targets:
            if clear_each:
                engine.prompt_cache.clear()
            engine(prompt, target)

    cached_s = timed_call(lambda: all_targets(False), run.device)[1]
    uncached_s = timed_call(lambda: all_targets(True), run.device)[1]
    rows = [[k, f"{v:.3f}"] for k, v in forwards.items()]
    engine_s = median(per_target)
    rows += [["**sum of model passes**", f"**{total:.3f}**"], ["**engine per target (prompt cached)**",
             f"**{engine_s:.3f}**"], ["**overhead ratio** (goal <= 1.15)", f"**{engine_s / total:.3f}**"]]
    run.report.write(
        f"Settings: {config.feature_source}, {config.sam_model}, DINOv2 at {config.dino_size} px, "
        f"SD at {config.sd_size} px, SAM 1024; median of {len(per_target)} timed target(s) after a warm-up; "
        "`(unet_full)` (the whole UNet, "
        "not needed: the engine stops after its last hooked layer) is not in the sum. Stages of the last target "
        "(s): " + ", ".join(f"{k} {v:.3f}" for k, v in result.timings.items()) + ".\n\n"
        + table(["part", "seconds"], rows)
        + f"\n\nPrompt cache: {len(targets)} targets in {cached_s:.2f} s with one prompt pass vs {uncached_s:.2f} s "
        f"with the cache cleared before each ({uncached_s / cached_s:.2f}x); "
        f"{cached_s / len(targets):.3f} s per target.")
    if not run.out_of_time():
        gfsam_beside_ipseg(run, engine, prompt, targets)


def gfsam_beside_ipseg(run: Run, ipseg: Any, prompt: Any, targets: list) -> None:
    """GF-SAM (DINOv2-B at the reference's 518 px, IPSeg's SAM, up to 128 points) and IPSeg on the same
    targets, one after the other per target, prompts cached: seconds per target and their ratio."""
    from vision.engines.ipseg import IPSegConfig, IPSegEngine

    s = run.scale
    config = IPSegConfig.for_method("gfsam", "gfsam", reference=False, dino_model=ipseg.config.dino_model,
                                    dino_size=s.gfsam_dino_size, sam_model=ipseg.config.sam_model,
                                    max_points=s.gfsam_points)
    gfsam = IPSegEngine(config, hub=run.hub)
    gfsam(prompt, targets[0])  # warm-up, and the prompt pass that the cache keeps
    rows = []
    for k, target in enumerate(targets):
        ipseg_s = timed_call(lambda t=target: ipseg(prompt, t), run.device)[1]
        result, gfsam_s = timed_call(lambda t=target: gfsam(prompt, t), run.device)
        rows.append([k + 1, f"{ipseg_s:.3f}", f"{gfsam_s:.3f}", f"{gfsam_s / ipseg_s:.3f}",
                     len(result.concepts[0].graph.points)])
        if run.out_of_time():
            break
    run.report.write(
        f"\n\nGF-SAM beside IPSeg on the same targets (issue 22's goal: GF-SAM <= 0.5x IPSeg per target): GF-SAM "
        f"with {config.dino_model} at {config.dino_size} px, {config.sam_model}, product mode, at most "
        f"{config.max_points} points; IPSeg as above; each target through both, prompts cached.\n\n"
        + table(["target", "IPSeg s", "GF-SAM s", "GF-SAM / IPSeg", "GF-SAM points"], rows))
