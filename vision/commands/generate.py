"""``python -m vision generate --prompt TEXT | --prompts FILE --output DIR [--deepcache N] [--branch B] [--tiny]``

Stable Diffusion (SD1.5, ``--family sdxl``) text-to-image, or image-to-image with ``--init-image``,
with DeepCache (``--deepcache 0`` turns it off). Runs through :mod:`vision.batch`: one PNG per prompt
(``<OUT>/<line>-<slug>.png``), ``results.jsonl`` with settings, seeds and timings, resumable. A JSON
line in the prompts file may override ``seed``, ``steps``, ``guidance``, ``negative_prompt``,
``width``, ``height``, ``strength``, ``deepcache``, ``branch``, ``schedule``, ``scheduler``. Prompt
i (its place in the file) uses seed ``--seed + i`` unless its line gives one. ``--compare`` also runs
the plain pipeline with the same seed and records both times, the speed-up and the difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys

from vision import batch
from vision.engines.generate import SCHEDULER_ALIASES, SCHEDULERS, GenerateConfig, GenerateError

NAME = "generate"
HELP = "Stable Diffusion text-to-image / image-to-image with DeepCache (prompt or prompts file)"

PER_PROMPT = ("seed", "steps", "guidance", "negative_prompt", "width", "height", "strength", "deepcache",
              "branch", "schedule", "scheduler")


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--scheduler", default=d.scheduler, choices=sorted([*SCHEDULERS, *SCHEDULER_ALIASES]))
    parser.add_argument("--family", default=d.family, choices=("sd15", "sdxl"))
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--guidance", type=float, default=d.guidance, help="CFG scale (<= 1: no CFG)")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--size", type=int, help="square image side (multiple of 8)")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--init-image", help="image-to-image from this image")
    parser.add_argument("--strength", type=float, default=d.strength, help="img2img strength (0, 1]")
    parser.add_argument("--compare", action="store_true", help="also run without DeepCache; report the speed-up")
    batch.add_batch_arguments(parser, inputs="prompts", input_flag=False)


def config_from_args(args: argparse.Namespace) -> GenerateConfig:
    return GenerateConfig(
        family=args.family, scheduler=args.scheduler, steps=args.steps, guidance=args.guidance,
        negative_prompt=args.negative_prompt, width=args.width or args.size, height=args.height or args.size,
        seed=args.seed, strength=args.strength, deepcache=args.deepcache, branch=args.branch,
        schedule=args.schedule, center=args.center, power=args.power, compare=args.compare).validate()


def make_processor(config: dict, init_image: str | None):
    """One engine per worker (top level so that Ray can pickle it)."""
    from vision.engines.generate import generate
    from vision.imaging import load_image

    base = GenerateConfig(**config)
    image = load_image(init_image) if init_image else None

    def process(item: batch.Item):
        overrides = {k: v for k, v in (item.params or {}).items() if k in PER_PROMPT}
        overrides.setdefault("seed", base.seed + item.index)
        return generate([item.text], dataclasses.replace(base, **overrides), image=image)

    return process


def run(args: argparse.Namespace) -> int:
    try:
        if args.prompt is not None and not args.prompt.strip():
            raise GenerateError("the prompt is empty")
        config = config_from_args(args)
        if args.init_image:
            from vision.imaging import load_image

            load_image(args.init_image)  # fail now, not once per prompt
    except (GenerateError, ValueError) as err:
        print(f"generate: {err}", file=sys.stderr)
        return 2
    settings = {**dataclasses.asdict(config), "init_image": args.init_image}
    items = batch.prompt_items([args.prompt]) if args.prompt is not None else None
    return batch.run_from_args(args, functools.partial(make_processor, dataclasses.asdict(config), args.init_image),
                               inputs="prompts", settings=settings, input_path=args.prompts, items=items)
