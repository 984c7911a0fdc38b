"""Story-Adapter benchmark: one GRCA round on SD1.5's FULL-SIZE architectures, DeepCache N vs off.

The models are built from their real configurations (below, in code) with random weights — the
speed of a network does not depend on its weight values — and injected into a hub with
``hub.put``: the SD1.5 UNet (860 M parameters), VAE and CLIP-L text encoder, the ViT-H/14 CLIP image
encoder (projection 1024) and an IP-Adapter state dict in ``h94/IP-Adapter``'s layout sized for them.
Round r >= 1 is timed (the reference frames of "round 0" are random images), in the engine's own code
path: :meth:`vision.engines.story.StoryEngine.generate_round` with the IP-Adapter loaded by
:func:`vision.engines.story.ip_adapter_on`: one batched image-encoder call, then every frame
(text encoding, ``steps`` DDIM steps with CFG, VAE decode) attending to all 4B reference tokens.

    python -m vision bench story                         # CPU defaults: 256^2, 10 steps, 2 frames
    python -m vision bench story --device cuda --size 512 --steps 50 --frames 20 --generate 2

On CUDA it also reports peak allocated memory per mode (``torch.cuda.max_memory_allocated``);
``--frames`` sets the number of reference frames (B) and ``--generate`` how many of them are
regenerated in the timed round (default all). ``--out FILE`` also writes the table as Markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/story.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench.common import SD15_TEXT, SD15_UNET, SD15_VAE, VIT_H_IMAGE, machine
from vision.wording import vision_command

PROMPTS = ["a young knight with a red scarf walks through a misty forest",
           "the knight meets a small silver dragon on a mossy rock",
           "the knight and the dragon share bread by a campfire at night",
           "the dragon carries the knight over snowy mountains at dawn"]


def full_size_hub(device: str):
    """A hub whose SD1.5 + IP-Adapter models are full-size, random-weight instances (seeded)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    from vision import tiny
    from vision.hub import ModelHub

    hub = ModelHub(tiny=True, device=device)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET)
    models = {
        "sd15_unet": unet,
        "sd15_vae": AutoencoderKL(**SD15_VAE),
        "sd15_text_encoder": CLIPTextModel(CLIPTextConfig(**SD15_TEXT)),
        "ip_image_encoder_h": CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H_IMAGE)),
    }
    adapter = tiny.ip_adapter_state_dict(unet, image_embed_dim=VIT_H_IMAGE["projection_dim"])
    for name, model in models.items():
        model = model.eval().to(device)
        hub.put(name, model.to(dtype) if dtype != torch.float32 else model)
    hub.put("ip_adapter_sd15", {group: {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
                                for group, sd in adapter.items()})
    return hub


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_round(engine, pipe, prompts, previous, size, device) -> dict:
    """One round, timed: wall-clock, process CPU time, and the part spent inside UNet calls (hooks
    around ``pipe.unet``; they synchronise CUDA, which the per-step loop does anyway)."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    unet_time, began = [0.0], [0.0]

    def pre(module, args, kwargs):
        _sync(device)
        began[0] = time.perf_counter()

    def post(module, args, kwargs, output):
        _sync(device)
        unet_time[0] += time.perf_counter() - began[0]

    hooks = [pipe.unet.register_forward_pre_hook(pre, with_kwargs=True),
             pipe.unet.register_forward_hook(post, with_kwargs=True)]
    try:
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        frames, encode_s = engine.generate_round(pipe, 1, prompts, previous, size)
        _sync(device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    finally:
        for hook in hooks:
            hook.remove()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "unet_seconds": unet_time[0],
            "encode_seconds": encode_s, "peak_gib": peak, "frames": frames}


def main(argv: list[str] | None = None) -> int:
    from vision.engines.story import StoryConfig, StoryEngine, ip_adapter_on
    from vision.hub import best_device

    parser = argparse.ArgumentParser(prog=vision_command("bench", "story"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--size", type=int, default=None, help="frame size (default 256 on CPU, 512 on GPU)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default 10 on CPU, 50 on GPU)")
    parser.add_argument("--frames", type=int, default=None, help="reference frames B (default 2 CPU, 20 GPU)")
    parser.add_argument("--generate", type=int, default=None, help="frames regenerated in the round (default all)")
    parser.add_argument("--interval", type=int, default=3, help="DeepCache interval N (default 3)")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats per mode, interleaved (the best is kept)")
    parser.add_argument("--out", default=None, help="also write the results as Markdown to this file")
    parser.add_argument("--json", default=None, help="also write the raw numbers as JSON to this file")
    args = parser.parse_args(argv)

    device = args.device or best_device()
    gpu = device.startswith("cuda")
    size = args.size or (512 if gpu else 256)
    steps = args.steps or (50 if gpu else 10)
    n_ref = args.frames or (20 if gpu else 2)
    n_gen = min(args.generate or n_ref, n_ref)
    prompts = [PROMPTS[i % len(PROMPTS)] + f", panel {i + 1}" for i in range(n_ref)]

    t0 = time.perf_counter()
    hub = full_size_hub(device)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    previous = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n_ref)]
    base = dict(rounds=1, steps=steps, size=size, seed=0, guidance=7.5)
    pipe = StoryEngine(StoryConfig(**base), hub).pipeline()
    results = {}
    with ip_adapter_on(pipe, hub.get("ip_adapter_sd15")):
        warm = StoryEngine(StoryConfig(**{**base, "steps": 2}), hub)
        warm.generate_round(pipe, 1, prompts[:1], previous, size)  # warm-up
        modes = (("off", 0), (f"N={args.interval}", args.interval))
        times: dict[str, list[float]] = {label: [] for label, _ in modes}
        cpu_times: dict[str, list[float]] = {label: [] for label, _ in modes}
        for repeat in range(args.repeats):  # interleaved, so that a load change hits both modes alike
            for label, interval in modes:
                engine = StoryEngine(StoryConfig(**base, deepcache=interval), hub)
                run = time_round(engine, pipe, prompts[:n_gen], previous, size, device)
                print(f"[{repeat + 1}/{args.repeats}] {label}: {run['seconds']:.2f} s per round "
                      f"(process CPU time {run['cpu_seconds']:.1f} s)"
                      + (f", peak {run['peak_gib']:.2f} GiB" if gpu else ""), flush=True)
                times[label].append(round(run["seconds"], 3))
                cpu_times[label].append(round(run["cpu_seconds"], 3))
                if label not in results or run["seconds"] < results[label]["seconds"]:
                    results[label] = run  # the best of the repeats
        for label in times:
            results[label]["all_seconds"] = times[label]
            results[label]["all_cpu_seconds"] = cpu_times[label]
    off, on = results["off"], results[f"N={args.interval}"]
    ratio = off["seconds"] / on["seconds"]
    cpu_ratio = min(cpu_times["off"]) / min(cpu_times[f"N={args.interval}"])
    unet_ratio = off["unet_seconds"] / on["unet_seconds"]
    diff = float(np.mean([np.abs(a.astype(float) - b.astype(float)).mean()
                          for a, b in zip(off["frames"], on["frames"])]))
    info = machine()
    settings = {"device": device, "dtype": "fp16" if gpu else "fp32", "size": size, "steps": steps,
                "scheduler": "DDIM", "guidance": 7.5, "reference_frames": n_ref, "generated_frames": n_gen,
                "deepcache_interval": args.interval, "repeats": args.repeats, "model_build_seconds": round(build_s, 1)}
    print(f"DeepCache N={args.interval} speed-up over off, one round: {ratio:.2f}x wall-clock, "
          f"{cpu_ratio:.2f}x process CPU time, {unet_ratio:.2f}x inside the UNet (goal >= 1.8x on GPU); "
          f"mean |frame difference| {diff:.1f}/255 (random weights)")
    summary = {"machine": info, "settings": settings, "ratio": ratio, "cpu_time_ratio": cpu_ratio,
               "unet_ratio": unet_ratio,
               "mean_abs_frame_difference": diff,
               "modes": {k: {kk: vv for kk, vv in v.items() if kk != "frames"} for k, v in results.items()}}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(markdown(summary))
    return 0


def markdown(summary: dict) -> str:
    s, m = summary["settings"], summary["machine"]
    gpu = s["device"] != "cpu"
    lines = ["| mode | seconds per round (best) | s / frame | in UNet calls s | image-encoder s | process CPU s |"
             + (" peak GiB |" if gpu else ""), "|---|---|---|---|---|---|" + ("---|" if gpu else "")]
    for label, r in summary["modes"].items():
        row = (f"| DeepCache {label} | {r['seconds']:.2f} | {r['seconds'] / s['generated_frames']:.2f} | "
               f"{r.get('unet_seconds', float('nan')):.2f} | {r['encode_seconds']:.2f} | "
               f"{r.get('cpu_seconds', float('nan')):.1f} |")
        if gpu:
            row += f" {r['peak_gib']:.2f} |"
        lines.append(row)
    lines.append(f"\n**Speed-up DeepCache N={s['deepcache_interval']} vs off: {summary['ratio']:.2f}x wall-clock"
                 + (f", {summary['cpu_time_ratio']:.2f}x process CPU time" if "cpu_time_ratio" in summary else "")
                 + (f", {summary['unet_ratio']:.2f}x inside the UNet" if "unet_ratio" in summary else "")
                 + "**")
    lines.append("\nSettings: " + ", ".join(f"{k}={v}" for k, v in s.items()))
    lines.append("\nMachine: " + "; ".join(f"{k}: {v}" for k, v in m.items()))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
