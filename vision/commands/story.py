"""``python -m vision story --story FILE --output DIR [--preset sd15|sdxl|reference|fast] [--character NAME=IMG[,IMG]]``

Illustrates a story (a text file, one frame prompt per line; blank lines are skipped) with
Story-Adapter: round 0 from text, then R rounds of global reference cross-attention. ``--preset`` picks
the named settings (``sd15``, the default; ``sdxl``: RealVisXL V4.0; ``reference``: the reference run;
``fast``: LCM-LoRA, 4 steps per round); every other option overrides one setting of the preset.
``--character NAME=IMG[,IMG]`` (repeatable) declares a character with its reference images: a frame uses
the characters it names (whole words, any case) or those of a leading ``[Name1, Name2]``. ``--model`` and
``--lora PATH[:SCALE]`` (repeatable) bring the user's own checkpoint and LoRAs. Writes every round's
frames, the final frames, ``storyboard.png`` and ``manifest.json`` (which names the preset, the mode and
each frame's characters) into DIR; rerunning the same command continues an interrupted run from its last
finished round. ``--rounds 0`` makes round 0 only (plain text-to-image per frame, or with the characters).
"""

from __future__ import annotations

import argparse
import sys

NAME = "story"
HELP = "illustrate a story (one prompt per line) with consistent characters: Story-Adapter"

# option -> StoryConfig field; an option left out keeps the preset's value
OVERRIDES = {"rounds": "rounds", "style": "style", "deepcache": "deepcache", "seed": "seed", "steps": "steps",
             "guidance": "guidance", "size": "size", "family": "family", "checkpoint": "checkpoint",
             "lambda_start": "lambda_start", "lambda_end": "lambda_end", "negative": "negative_prompt",
             "character_scale": "character_scale", "model": "model", "vae_tiling": "vae_tiling",
             "offload_encoder": "offload_image_encoder", "model_offload": "model_offload"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vision.engines.story import FAMILIES, PRESETS, STYLES

    d = PRESETS["sd15"]
    checkpoints = sorted({c for family in FAMILIES.values() for c in family.checkpoints})
    parser.add_argument("--story", required=True, metavar="FILE", help="text file, one frame prompt per line")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (resumable)")
    parser.add_argument("--preset", choices=list(PRESETS), default="sd15",
                        help="named settings: sd15 (default, fits 16 GB), sdxl (RealVisXL V4.0), reference (the "
                             "reference run: SDXL + RealVisXL, DDIM 50, 1024^2, CFG 5, 10 rounds, no DeepCache), "
                             "fast (LCM-LoRA + LCM sampler, 4 steps per round)")
    parser.add_argument("--character", action="append", metavar="NAME=IMG[,IMG]",
                        help="a character and its reference images (repeatable); frames use the characters they "
                             "name, or those of a leading [Name1, Name2]")
    parser.add_argument("--character-scale", type=float,
                        help=f"weight of the characters' reference tokens (default {d.character_scale})")
    parser.add_argument("--model", metavar="CHECKPOINT",
                        help="your own SD1.5 / SDXL checkpoint: a .safetensors file, a diffusers folder or a Hub "
                             "repo id")
    parser.add_argument("--lora", action="append", metavar="PATH[:SCALE]", help="a LoRA and its scale (repeatable)")
    parser.add_argument("--vae-tiling", action=argparse.BooleanOptionalAction,
                        help="decode frames in tiles (default: on above 768 px in product mode)")
    parser.add_argument("--offload-encoder", action=argparse.BooleanOptionalAction,
                        help="keep the IP-Adapter image encoder on the CPU between rounds (default: on with CUDA)")
    parser.add_argument("--model-offload", action=argparse.BooleanOptionalAction,
                        help="diffusers' model CPU offload, for GPUs under 16 GB (CUDA; slower)")
    parser.add_argument("--rounds", type=int,
                        help=f"refinement rounds after round 0 (sd15: {d.rounds}; 0 = round 0 only)")
    parser.add_argument("--style", choices=list(STYLES), help=f"style template around every prompt (default {d.style})")
    parser.add_argument("--deepcache", type=int, metavar="N", help=f"DeepCache interval (sd15: {d.deepcache}; 0 = off)")
    parser.add_argument("--seed", type=int, help=f"one seed for every frame and round (default {d.seed})")
    parser.add_argument("--steps", type=int, help=f"denoising steps (default {d.steps})")
    parser.add_argument("--guidance", type=float, help="CFG scale (default 7.5 SD1.5, 5.0 SDXL)")
    parser.add_argument("--size", type=int, help="square frame size (default 512 SD1.5, 1024 SDXL, 64 tiny)")
    parser.add_argument("--family", choices=list(FAMILIES), help="sd15 or sdxl (the preset's by default)")
    parser.add_argument("--checkpoint", choices=checkpoints,
                        help="base model weights of the family (SDXL: realvisxl, the default, or sdxl base)")
    parser.add_argument("--lambda-start", type=float, help=f"reference weight of round 1 (default {d.lambda_start})")
    parser.add_argument("--lambda-end", type=float, help=f"reference weight of round R (default {d.lambda_end})")
    parser.add_argument("--negative", help="negative prompt (default the reference's)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run with other arguments in DIR")


def config_from_args(args: argparse.Namespace):
    """The preset's :class:`~vision.engines.story.StoryConfig` with every option given on the command line."""
    from vision.engines.story import StoryConfig

    changes = {field: getattr(args, option) for option, field in OVERRIDES.items() if getattr(args, option) is not None}
    if args.lora:
        changes["loras"] = tuple(args.lora)
    return StoryConfig.from_preset(args.preset, **changes)


def prepare(args: argparse.Namespace):
    """(config, prompts, loaded characters) from the command line, every check done before a model loads;
    prints the settings, the memory options, each frame's characters and the warnings."""
    from vision.engines.story import cast_frames, describe_memory, load_characters, load_story, memory_options
    from vision.hub import get_hub
    from vision.limits import check_side, check_steps

    config = config_from_args(args)
    check_steps(config.steps, "--steps")
    if config.size is not None:
        check_side(config.size, "--size")
    config = config.validate()
    lines = load_story(args.story)
    characters = load_characters(args.character)
    _, casts, warnings = cast_frames(lines, [c.name for c in characters])
    hub = get_hub()  # the models load only when the engine runs
    size = config.resolved_size(hub.tiny)
    deepcache = f"N={config.deepcache}" if config.deepcache else "off"
    print(f"story: {config.describe()}, {config.family} ({config.model or config.base_model()}), {config.steps} "
          f"steps, CFG {config.guidance_scale():g}, DeepCache {deepcache}"
          + (f", LoRAs: {', '.join(map(str, config.loras))}" if config.loras else ""))
    print(describe_memory(memory_options(config, size, hub.device)))
    if characters:
        print("characters per frame: " + "; ".join(f"{i + 1}: {', '.join(c) or '-'}" for i, c in enumerate(casts)))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return config, lines, characters


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from vision.engines.story import StoryEngine, StoryError

    try:
        config, prompts, characters = prepare(args)
    except ValueError as err:  # StoryError and LimitError
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = (config.rounds + 1) * len(prompts)
    bar = tqdm(total=total, unit="frame", desc="story")

    def progress(p) -> None:
        step = f" step {p['step']}/{p['steps']}" if p["steps"] else ""
        bar.set_description(f"round {min(p['round'], config.rounds)}/{config.rounds}{step}")
        bar.n = min(total, p["round"] * p["frames"] + p["frame"])
        bar.refresh()

    try:
        result = StoryEngine(config)(prompts, args.output, progress=progress, overwrite=args.overwrite,
                                     characters=characters)
    except StoryError as err:
        bar.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: rerun the same command to continue from the last finished round in {args.output}",
              file=sys.stderr)
        return 130
    bar.close()
    summary(result, config)
    return 0


def summary(result, config) -> None:
    """What a finished run prints: resumed round, timings, output folder, storyboard, tiny notice."""
    from vision.wording import plural

    if result.resumed_from is not None:
        print(f"resumed after round {result.resumed_from}")
    for r, t in sorted(result.timings.items()):
        print(f"round {r}: {t['seconds']:.1f} s ({t['seconds_per_frame']:.2f} s/frame)")
    print(f"{plural(len(result.prompts), 'frame')} x {plural(config.rounds + 1, 'pass', 'passes')} "
          f"({config.describe()}) -> {result.output_dir}")
    print(f"storyboard: {result.output_dir / result.files['storyboard']}")
    if result.tiny:
        from vision.tiny import TINY_NOTICE

        print(TINY_NOTICE)
