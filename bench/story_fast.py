"""Story's fast preset vs its default preset: one round each, side by side in one run (issue 27).

The full-size SD1.5 + IP-Adapter models of ``bench/story.py`` (random weights: speed does not depend on
them) and a full-size random LoRA in kohya's layout, rank 64 (LCM-LoRA SD1.5's rank) on every Linear layer
of the UNet's transformer blocks (attention q/k/v/out and feed-forward; the published LCM-LoRA also has
conv layers, so its overhead is a little higher), installed as the hub's ``lcm_lora_sd15``. Each mode runs
round 1 (B previous frames as references: one image-encoder call, then every frame) through the engine's
own code path: :meth:`StoryEngine.models`, :func:`run_context` (the LoRA through
``vision.engines.generate.models.loras_applied``), :func:`ip_adapter_on`, :meth:`StoryEngine.generate_round`.

Modes: ``default`` (the sd15 preset: DDIM 50 steps, CFG 7.5, DeepCache N = 3), ``fast`` (the fast preset:
LCM-LoRA, LCM sampler, 4 steps, guidance 1 = no CFG, DeepCache off), and the fast preset with DeepCache
N = 2 at 4 and 8 steps (is DeepCache worth having at so few steps?). The goal: fast <= 0.2 x default.

    python -m vision bench story_fast                  # CPU: 256^2, 2 frames
    python -m vision bench story_fast --save           # also bench/results/story_fast.{md,json}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/story_fast.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import add_save_option, machine, report_path
from vision.wording import vision_command

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
LCM_RANK = 64


def install_lcm_lora(hub, folder: Path) -> Path:
    """A full-size random LoRA for the hub's SD1.5 UNet (kohya layout, rank 64), as ``lcm_lora_sd15``."""
    from safetensors.torch import save_file

    from vision.tiny_files import lora_state

    path = folder / "pytorch_lora_weights.safetensors"
    state = lora_state(hub.get("sd15_unet"), rank=LCM_RANK, seed=0, targets=LORA_TARGETS)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    hub.put("lcm_lora_sd15", path)
    return path


def modes(base: dict) -> dict:
    """Mode label -> StoryConfig of the run (size, seed and rounds shared)."""
    from vision.engines.story import StoryConfig

    fast = StoryConfig.from_preset("fast", **base)
    return {"default (sd15 preset: DDIM 50, CFG 7.5, DeepCache N=3)": StoryConfig.from_preset("sd15", **base),
            "fast (LCM-LoRA, LCM 4 steps, no CFG, DeepCache off)": fast,
            "fast + DeepCache N=2, 4 steps": fast.replace(deepcache=2),
            "fast, 8 steps, DeepCache off": fast.replace(steps=8),
            "fast + DeepCache N=2, 8 steps": fast.replace(steps=8, deepcache=2)}


def run_mode(hub, config, prompts, previous, size, device, warm: bool = True) -> dict:
    """One round of ``config`` through the engine's code path, timed (after a 1-step warm-up round)."""
    from bench.story import time_round
    from vision.engines.story import StoryEngine, ip_adapter_on
    from vision.engines.story.run_models import run_context

    engine = StoryEngine(config, hub)
    built = engine.models()
    with run_context(hub, config, built, size), ip_adapter_on(built.pipe, hub.get("ip_adapter_sd15")):
        if warm:
            StoryEngine(config.replace(steps=1, deepcache=0), hub).generate_round(built.pipe, 1, prompts[:1],
                                                                                 previous, size)
        return time_round(engine, built.pipe, prompts, previous, size, device)


def main(argv: list[str] | None = None) -> int:
    from bench.story import PROMPTS, full_size_hub
    from vision.hub import best_device

    parser = argparse.ArgumentParser(prog=vision_command("bench", "story_fast"),
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--size", type=int, default=256, help="frame size (default 256)")
    parser.add_argument("--frames", type=int, default=2, help="frames of the round = reference frames B (default 2)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds per mode, the modes interleaved; the fastest round of each is kept (default 1)")
    parser.add_argument("--out", default=None, help="write the Markdown here (default: only print)")
    add_save_option(parser, "story_fast.md and story_fast.json")
    args = parser.parse_args(argv)
    device = args.device or best_device()
    load_before = machine().get("load_average")
    started = time.perf_counter()
    hub = full_size_hub(device)
    rng = np.random.default_rng(0)
    previous = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.frames)]
    prompts = [PROMPTS[i % len(PROMPTS)] + f", panel {i + 1}" for i in range(args.frames)]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        install_lcm_lora(hub, Path(folder))
        for repeat in range(1, args.repeats + 1):  # interleaved: a burst of load slows one repeat, not one mode
            for label, config in modes({"rounds": 1, "size": args.size, "seed": 0}).items():
                run = run_mode(hub, config, prompts, previous, args.size, device)
                print(f"{label}, repeat {repeat}: {run['seconds']:.2f} s per round ({run['unet_seconds']:.2f} s in "
                      f"the UNet, {run['encode_seconds']:.2f} s image encoder)", flush=True)
                run["all_seconds"] = [*results.get(label, {}).get("all_seconds", []), run["seconds"]]
                if label not in results or run["seconds"] < results[label]["seconds"]:
                    results[label] = run
                else:
                    results[label]["all_seconds"] = run["all_seconds"]
    summary = summarise(results, args, device, load_before, time.perf_counter() - started)
    print(markdown(summary))
    path = report_path(args, "story_fast.md", args.out)
    if path is not None:
        path.write_text(markdown(summary), encoding="utf-8")
        path.with_suffix(".json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0


def summarise(results: dict, args, device: str, load_before, seconds: float) -> dict:
    labels = list(results)
    default, fast = results[labels[0]], results[labels[1]]

    def diff(a: dict, b: dict) -> float:
        pairs = zip(a["frames"], b["frames"], strict=True)
        return float(np.mean([np.abs(x.astype(float) - y.astype(float)).mean() for x, y in pairs]))

    info = machine()
    info["load_average_before"] = load_before
    timings = ("seconds", "unet_seconds", "encode_seconds", "cpu_seconds")
    return {"machine": info, "device": device, "size": args.size, "frames": args.frames,
            "total_seconds": round(seconds),
            "repeats": args.repeats,
            "modes": {k: {**{kk: round(v[kk], 3) for kk in timings},
                          "all_seconds": [round(x, 2) for x in v["all_seconds"]]} for k, v in results.items()},
            "fast_over_default": fast["seconds"] / default["seconds"],
            "deepcache_4_steps_speedup": fast["seconds"] / results[labels[2]]["seconds"],
            "deepcache_8_steps_speedup": results[labels[3]]["seconds"] / results[labels[4]]["seconds"],
            "deepcache_4_steps_frame_difference": diff(fast, results[labels[2]]),
            "deepcache_8_steps_frame_difference": diff(results[labels[3]], results[labels[4]])}


def markdown(summary: dict) -> str:
    lines = ["| mode | round s (fastest) | every repeat s | s / frame | in UNet s | image encoder s | process CPU s |",
             "|---|---|---|---|---|---|---|"]
    for label, r in summary["modes"].items():
        repeats = ", ".join(f"{x:.2f}" for x in r["all_seconds"])
        lines.append(f"| {label} | {r['seconds']:.2f} | {repeats} | {r['seconds'] / summary['frames']:.2f} | "
                     f"{r['unet_seconds']:.2f} | {r['encode_seconds']:.2f} | {r['cpu_seconds']:.1f} |")
    lines += ["", f"**fast round / default round: {summary['fast_over_default']:.3f}** (goal <= 0.2)",
              f"DeepCache N=2 in the fast preset: {summary['deepcache_4_steps_speedup']:.2f}x at 4 steps, "
              f"{summary['deepcache_8_steps_speedup']:.2f}x at 8 steps (whole round); mean |frame difference| vs off "
              f"{summary['deepcache_4_steps_frame_difference']:.1f} / "
              f"{summary['deepcache_8_steps_frame_difference']:.1f} of 255 (random weights)",
              "", f"Settings: {summary['device']}, {summary['size']}x{summary['size']}, {summary['frames']} frames "
              f"(= reference frames), round 1, {summary['repeats']} repeat(s) per mode; "
              f"whole run {summary['total_seconds']} s",
              "", "Machine: " + "; ".join(f"{k}: {v}" for k, v in summary["machine"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
