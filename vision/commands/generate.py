"""``python -m vision generate --prompt TEXT | --prompts FILE --output DIR [options] [--tiny]``

Stable Diffusion text-to-image, or image-to-image with ``--init-image``: SD1.5 (``--family sdxl``,
``realvisxl``, ``sd35_medium``, ``sd35_large``), or the user's own checkpoint (``--model`` a single
``.safetensors`` file, a diffusers folder or a Hub repo id) with LoRAs (``--lora PATH[:SCALE]``,
repeatable) and a ControlNet (``--control canny|depth|image --control-image IMG``). One caching switch for
every model (``--cache``: ``auto`` = DeepCache for UNets, TaylorSeer for SD3.5; ``none``; ``deepcache``;
``taylorseer``; ``pab``); ``--deepcache N`` keeps setting DeepCache's interval (0 turns it off).

Runs through :mod:`vision.batch`: one PNG per prompt (``<OUT>/<line>-<slug>.png``; ``.control.png`` the
control map), ``results.jsonl`` with the engine's record (settings, seeds, timings, model file's sha256
prefix, LoRAs with scales, control type and scale, cache method), resumable. A JSON line in the prompts
file may override ``seed``, ``steps``, ``guidance``, ``negative_prompt``, ``width``, ``height``,
``strength``, ``deepcache``, ``branch``, ``schedule``, ``scheduler``, ``cache``, ``control_scale`` and
give its own ``control_image`` (a path, relative to the prompts file). Prompt i (its place in the file)
uses seed ``--seed + i`` unless its line gives one. ``--compare`` also runs the plain pipeline with the
same seed, records both times, the speed-up and the difference, and prints the speed-up of every prompt.
Steps, sizes, the model, LoRA and control files are checked before any model loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

NAME = "generate"
HELP = ("Stable Diffusion text-to-image / image-to-image with a cache: your checkpoint, LoRAs, ControlNet, "
        "SD3.5 (prompt or prompts file)")

PER_PROMPT = ("seed", "steps", "guidance", "negative_prompt", "width", "height", "strength", "deepcache",
              "branch", "schedule", "scheduler", "cache", "control_scale")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vision import batch
    from vision.engines.generate import CACHES, CONTROLS, FAMILIES, SCHEDULER_ALIASES, SCHEDULERS, GenerateConfig
    from vision.limits import MAX_SIDE, MAX_STEPS

    d = GenerateConfig()
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt")
    source.add_argument("--prompts", metavar="FILE", help="a text file, one prompt per line (or JSON lines)")
    parser.add_argument("--output", "-o", required=True, help="output folder")
    models = parser.add_argument_group("model")
    models.add_argument("--family", default=d.family, choices=list(FAMILIES), help=f"(default {d.family})")
    models.add_argument("--model", metavar="CHECKPOINT", help="your SD1.5 / SDXL checkpoint: a single .safetensors "
                        "file (architecture detected), a diffusers folder or a Hub repo id")
    models.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                        help="a LoRA .safetensors file and its scale (default 1; -2..2); repeatable")
    cache = parser.add_argument_group("cache")
    cache.add_argument("--cache", default=d.cache, choices=CACHES,
                       help="auto: DeepCache for UNets, TaylorSeer for SD3.5 (default auto)")
    cache.add_argument("--deepcache", type=int, default=d.deepcache, metavar="N",
                       help=f"DeepCache interval N (default {d.deepcache}; 0 = off, 1 = every step full)")
    cache.add_argument("--branch", type=int, default=d.branch, metavar="B",
                       help=f"DeepCache branch (default {d.branch}; SD1.5 0-11, SDXL 0-8; 0 = fastest)")
    cache.add_argument("--schedule", default=d.schedule, choices=("uniform", "nonuniform"))
    cache.add_argument("--center", type=int, default=d.center, help="non-uniform schedule centre step c")
    cache.add_argument("--power", type=float, default=d.power, help="non-uniform schedule power p (> 1)")
    cache.add_argument("--dit-interval", type=int, default=d.dit_interval, metavar="N",
                       help=f"SD3.5 caches: steps between full computations (default {d.dit_interval})")
    control = parser.add_argument_group("ControlNet")
    control.add_argument("--control", choices=CONTROLS, help="canny (edges by OpenCV), depth (Depth Anything V2) "
                         "or image (your own map: pose, scribble, ...; needs --controlnet)")
    control.add_argument("--control-image", metavar="IMG", help="the image the control map is made from (or is)")
    control.add_argument("--controlnet", metavar="NAME|FOLDER|REPO", help="the ControlNet (default: the registry's "
                         "for the control type and model)")
    control.add_argument("--control-scale", type=float, default=d.control_scale, help="conditioning scale 0..2")
    control.add_argument("--control-start", type=float, default=d.control_start, help="fraction of steps, 0..1")
    control.add_argument("--control-end", type=float, default=d.control_end, help="fraction of steps, 0..1")
    control.add_argument("--canny-low", type=int, default=d.canny_low, help="Canny's lower threshold")
    control.add_argument("--canny-high", type=int, default=d.canny_high, help="Canny's upper threshold")
    parser.add_argument("--scheduler", default=d.scheduler, choices=sorted([*SCHEDULERS, *SCHEDULER_ALIASES]),
                        help=f"sampler (default {d.scheduler}, as in the app; SD3.5: flow)")
    parser.add_argument("--steps", type=int, default=d.steps,
                        help=f"denoising steps, 1-{MAX_STEPS} (default {d.steps})")
    parser.add_argument("--guidance", type=float, default=d.guidance, help="CFG scale (<= 1: no CFG)")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--size", type=int, help=f"square image side, a multiple of 8 up to {MAX_SIDE} "
                        "(default: the model's native size)")
    parser.add_argument("--width", type=int, help=f"image width (multiple of 8, up to {MAX_SIDE})")
    parser.add_argument("--height", type=int, help=f"image height (multiple of 8, up to {MAX_SIDE})")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--init-image", help="image-to-image from this image")
    parser.add_argument("--strength", type=float, default=d.strength, help="img2img strength (0, 1]")
    parser.add_argument("--compare", action="store_true", help="also run without the cache; report the speed-up")
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
    from vision.engines.generate import GenerateConfig, Lora

    check_limits({"steps": args.steps, "size": args.size, "width": args.width, "height": args.height})
    return GenerateConfig(
        family=args.family, model=args.model, loras=tuple(Lora.parse(s) for s in args.lora),
        scheduler=args.scheduler, steps=args.steps, guidance=args.guidance, negative_prompt=args.negative_prompt,
        width=args.width or args.size, height=args.height or args.size, seed=args.seed, strength=args.strength,
        cache=args.cache, deepcache=args.deepcache, branch=args.branch, schedule=args.schedule, center=args.center,
        power=args.power, dit_interval=args.dit_interval, control=args.control, controlnet=args.controlnet,
        control_scale=args.control_scale, control_start=args.control_start, control_end=args.control_end,
        canny_low=args.canny_low, canny_high=args.canny_high, compare=args.compare).validate()


def item_config(base: Any, item: Any) -> Any:
    """The settings of one prompt: ``base`` with its JSON line's overrides and its seed."""
    overrides = {k: v for k, v in (item.params or {}).items() if k in PER_PROMPT}
    overrides.setdefault("seed", base.seed + item.index)
    return base.replace(**overrides)


def item_control_image(item: Any, default: str | None, prompts_file: str | None) -> str | None:
    """The control image of one prompt: its JSON line's ``control_image`` (relative to the prompts file),
    else ``--control-image``."""
    path = (item.params or {}).get("control_image")
    if path is None:
        return default
    if prompts_file and not Path(path).is_absolute():
        path = str(Path(prompts_file).parent / path)
    return path


def make_processor(config: Any, init_image: str | None, control_image: str | None, prompts_file: str | None):
    """One processor per worker (top level so that Ray can pickle it): an engine per prompt's settings."""
    from vision.engines.generate import GenerateEngine
    from vision.hub import get_hub
    from vision.imaging import load_image

    hub = get_hub()
    image = load_image(init_image) if init_image else None

    def process(item: Any) -> Any:
        control = item_control_image(item, control_image, prompts_file)
        return GenerateEngine(item_config(config, item), hub)([item.text], image=image, control_image=control)

    return process


def print_speedups(output: str, items: list) -> None:
    """The measured speed-up of each prompt of ``items`` (their latest results line) and overall."""
    from vision.batch import read_jsonl
    from vision.wording import speed_change, speedup_words

    rows, _ = read_jsonl(Path(output) / "results.jsonl")
    latest = {row["id"]: row for row in rows}
    timed = [latest[item.id] for item in items if "speedup" in ((latest.get(item.id) or {}).get("timings") or {})]
    if not timed:
        return
    tiny = ", tiny random-weight models" if timed[0].get("tiny") else ""
    from vision.engines.generate.engine import CACHE_NAMES

    method = timed[0].get("method", "none")
    print(f"{CACHE_NAMES.get(method, method)} vs the plain pipeline (same seed){tiny}:")
    for row in timed:
        t = row["timings"]
        # the record's own speed-up (from unrounded times), so the line and results.jsonl agree
        print(f"  {row['id']}: {speedup_words(t['speedup'])} ({t['baseline_seconds']:.2f} s -> {t['seconds']:.2f} s)")
    if len(timed) > 1:
        plain = sum(r["timings"]["baseline_seconds"] for r in timed)
        cached = sum(r["timings"]["seconds"] for r in timed)
        print(f"  all {len(timed)} prompts: {speed_change(plain, cached)} ({plain:.2f} s -> {cached:.2f} s)")


def check_inputs(args: argparse.Namespace, config: Any, items: list) -> None:
    """Every prompt's settings, the model, LoRA and image files, before any model loads (ValueError)."""
    from vision.engines.generate import GenerateError
    from vision.engines.generate.models import checkpoint_kind, read_lora
    from vision.imaging import load_image

    for item in items:  # a JSON line's steps or size out of range: say so now, not after start-up
        check_limits(item.params, f"prompt {item.id}: ")
        item_config(config, item).validate()
        control = item_control_image(item, args.control_image, args.prompts)
        if control is not None:
            if not config.control:
                raise GenerateError(f"prompt {item.id}: a control image but no --control type (canny, depth, image)")
            load_image(control)
    if config.model:
        checkpoint_kind(config.model)
    for lora in config.loras:
        read_lora(lora.path)
    if args.init_image:
        load_image(args.init_image)  # fail now, not once per prompt


def run(args: argparse.Namespace) -> int:
    from vision import batch
    from vision.engines.generate import GenerateError

    try:
        if args.prompt is not None and not args.prompt.strip():
            raise GenerateError("the prompt is empty")
        config = config_from_args(args)
        items = batch.prompt_items([args.prompt] if args.prompt is not None else args.prompts)
        check_inputs(args, config, items)
    except (GenerateError, ValueError) as err:  # BatchError, LimitError and ModelFileError are ValueErrors
        print(f"generate: {err}", file=sys.stderr)
        return 2
    settings = {**dataclasses.asdict(config), "init_image": args.init_image, "control_image": args.control_image}
    make = functools.partial(make_processor, config, args.init_image, args.control_image, args.prompts)
    code = batch.run_from_args(args, make, inputs="prompts", settings=settings, input_path=args.prompts, items=items)
    if config.compare and code in (0, 1):
        print_speedups(args.output, batch.select_shard(items, args.shard))
    return code
