"""``python -m vision generate --prompt TEXT | --prompts FILE --output DIR [--deepcache N] [--branch B] [--tiny]``

Stable Diffusion (SD1.5, ``--family sdxl``) text-to-image, or image-to-image with ``--init-image``,
with DeepCache (``--deepcache 0`` turns it off). Runs through :mod:`vision.batch`: one PNG per prompt
(``<OUT>/<line>-<slug>.png``), ``results.jsonl`` with settings, seeds and timings, resumable. A JSON
line in the prompts file may override ``seed``, ``steps``, ``guidance``, ``negative_prompt``,
``width``, ``height``, ``strength``, ``deepcache``, ``branch``, ``schedule``, ``scheduler``. Prompt
i (its place in the file) uses seed ``--seed + i`` unless its line gives one. ``--compare`` also runs
the plain pipeline with the same seed, records both times, the speed-up and the difference, and prints
the speed-up of every prompt. Steps and sizes (options and JSON lines) are checked against
:mod:`vision.limits` before any model loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

NAME = "generate"
HELP = "Stable Diffusion text-to-image / image-to-image with DeepCache (prompt or prompts file)"

PER_PROMPT = ("seed", "steps", "guidance", "negative_prompt", "width", "height", "strength", "deepcache",
              "branch", "schedule", "scheduler")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vision import batch
    from vision.engines.generate import SCHEDULER_ALIASES, SCHEDULERS, GenerateConfig
    from vision.limits import MAX_SIDE, MAX_STEPS

    d = GenerateConfig()
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt")
    source.add_argument("--prompts", metavar="FILE", help="a text file, one prompt per line (or JSON lines)")
    parser.add_argument("--output", "-o", required=True, help="output folder")
    parser.add_argument("--deepcache", type=int, default=d.deepcache, metavar="N",
                        help=f"DeepCache interval N (default {d.deepcache}; 0 = off, 1 = every step full)")
    parser.add_argument("--branch", type=int, default=d.branch, metavar="B",
                        help=f"DeepCache branch (default {d.branch}; SD1.5 0-11, SDXL 0-8; 0 = fastest)")
    parser.add_argument("--schedule", default=d.schedule, choices=("uniform", "nonuniform"))
    parser.add_argument("--center", type=int, default=d.center, help="non-uniform schedule centre step c")
    parser.add_argument("--power", type=float, default=d.power, help="non-uniform schedule power p (> 1)")
    parser.add_argument("--scheduler", default=d.scheduler, choices=sorted([*SCHEDULERS, *SCHEDULER_ALIASES]),
                        help=f"sampler (default {d.scheduler}, as in the app)")
    parser.add_argument("--family", default=d.family, choices=("sd15", "sdxl"))
    parser.add_argument("--steps", type=int, default=d.steps, help=f"denoising steps, 1-{MAX_STEPS} (default {d.steps})")
    parser.add_argument("--guidance", type=float, default=d.guidance, help="CFG scale (<= 1: no CFG)")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--size", type=int, help=f"square image side, a multiple of 8 up to {MAX_SIDE} "
                        "(default: the model's native size)")
    parser.add_argument("--width", type=int, help=f"image width (multiple of 8, up to {MAX_SIDE})")
    parser.add_argument("--height", type=int, help=f"image height (multiple of 8, up to {MAX_SIDE})")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--init-image", help="image-to-image from this image")
    parser.add_argument("--strength", type=float, default=d.strength, help="img2img strength (0, 1]")
    parser.add_argument("--compare", action="store_true", help="also run without DeepCache; report the speed-up")
    batch.add_batch_arguments(parser, inputs="prompts", input_flag=False)


def check_limits(values: dict, where: str = "--") -> None:
    """Steps and sizes in ``values`` (option or JSON-line names) against :mod:`vision.limits`."""
    from vision.limits import check_side, check_steps

    if values.get("steps") is not None:
        check_steps(values["steps"], f"{where}steps")
    for name in ("size", "width", "height"):
        if values.get(name) is not None:
            check_side(values[name], f"{where}{name}")


def config_from_args(args: argparse.Namespace) -> Any:
    from vision.engines.generate import GenerateConfig

    check_limits({"steps": args.steps, "size": args.size, "width": args.width, "height": args.height})
    return GenerateConfig(
        family=args.family, scheduler=args.scheduler, steps=args.steps, guidance=args.guidance,
        negative_prompt=args.negative_prompt, width=args.width or args.size, height=args.height or args.size,
        seed=args.seed, strength=args.strength, deepcache=args.deepcache, branch=args.branch,
        schedule=args.schedule, center=args.center, power=args.power, compare=args.compare).validate()


def item_config(base: Any, item: Any) -> Any:
    """The settings of one prompt: ``base`` with its JSON line's overrides and its seed."""
    overrides = {k: v for k, v in (item.params or {}).items() if k in PER_PROMPT}
    overrides.setdefault("seed", base.seed + item.index)
    return base.replace(**overrides)


def make_processor(config: Any, init_image: str | None):
    """One processor per worker (top level so that Ray can pickle it): an engine per prompt's settings."""
    from vision.engines.generate import GenerateEngine
    from vision.hub import get_hub
    from vision.imaging import load_image

    hub = get_hub()
    image = load_image(init_image) if init_image else None
    return lambda item: GenerateEngine(item_config(config, item), hub)([item.text], image=image)


def print_speedups(output: str, items: list) -> None:
    """The measured DeepCache speed-up of each prompt of ``items`` (their latest results line) and overall."""
    from vision.batch import read_jsonl
    from vision.wording import speed_change

    rows, _ = read_jsonl(Path(output) / "results.jsonl")
    latest = {row["id"]: row for row in rows}
    timed = [latest[item.id] for item in items
             if "speedup" in ((latest.get(item.id) or {}).get("timings") or {})]
    if not timed:
        return
    print("DeepCache vs the plain pipeline (same seed)" + (", tiny random-weight models" if timed[0].get("tiny") else "")
          + ":")
    for row in timed:
        t = row["timings"]
        print(f"  {row['id']}: {speed_change(t['baseline_seconds'], t['seconds'])} ({t['baseline_seconds']:.2f} s -> "
              f"{t['seconds']:.2f} s)")
    if len(timed) > 1:
        plain, cached = sum(r["timings"]["baseline_seconds"] for r in timed), sum(r["timings"]["seconds"] for r in timed)
        print(f"  all {len(timed)} prompts: {speed_change(plain, cached)} ({plain:.2f} s -> {cached:.2f} s)")


def run(args: argparse.Namespace) -> int:
    from vision import batch
    from vision.engines.generate import GenerateError

    try:
        if args.prompt is not None and not args.prompt.strip():
            raise GenerateError("the prompt is empty")
        config = config_from_args(args)
        items = batch.prompt_items([args.prompt] if args.prompt is not None else args.prompts)
        for item in items:  # a JSON line's steps or size out of range: say so now, not after start-up
            check_limits(item.params, f"prompt {item.id}: ")
            item_config(config, item).validate()
        if args.init_image:
            from vision.imaging import load_image

            load_image(args.init_image)  # fail now, not once per prompt
    except (GenerateError, ValueError) as err:  # BatchError and LimitError are ValueErrors
        print(f"generate: {err}", file=sys.stderr)
        return 2
    settings = {**dataclasses.asdict(config), "init_image": args.init_image}
    code = batch.run_from_args(args, functools.partial(make_processor, config, args.init_image),
                               inputs="prompts", settings=settings, input_path=args.prompts, items=items)
    if config.compare and code in (0, 1):
        print_speedups(args.output, batch.select_shard(items, args.shard))
    return code
