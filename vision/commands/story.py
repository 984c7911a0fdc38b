"""``python -m vision story --story FILE --output DIR [--preset sd15|sdxl|reference] [--rounds R] [--tiny]``

Illustrates a story (a text file, one frame prompt per line; blank lines are skipped) with
Story-Adapter: round 0 from text, then R rounds of global reference cross-attention. ``--preset`` picks
the named settings (``sd15``, the default; ``sdxl``: RealVisXL V4.0; ``reference``: the reference run);
every other option overrides one setting of the preset. Writes every round's frames, the final frames,
``storyboard.png`` and ``manifest.json`` (which names the preset and the mode) into DIR; rerunning the
same command continues an interrupted run from its last finished round. ``--rounds 0`` makes round 0
only (plain text-to-image per frame).
"""

from __future__ import annotations

import argparse
import sys

NAME = "story"
HELP = "illustrate a story (one prompt per line) with consistent characters: Story-Adapter"

# option -> StoryConfig field; an option left out keeps the preset's value
OVERRIDES = {"rounds": "rounds", "style": "style", "deepcache": "deepcache", "seed": "seed", "steps": "steps",
             "guidance": "guidance", "size": "size", "family": "family", "checkpoint": "checkpoint",
             "lambda_start": "lambda_start", "lambda_end": "lambda_end", "negative": "negative_prompt"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vision.engines.story import FAMILIES, PRESETS, STYLES

    d = PRESETS["sd15"]
    checkpoints = sorted({c for family in FAMILIES.values() for c in family.checkpoints})
    parser.add_argument("--story", required=True, metavar="FILE", help="text file, one frame prompt per line")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (resumable)")
    parser.add_argument("--preset", choices=list(PRESETS), default="sd15",
                        help="named settings: sd15 (default, fits 16 GB), sdxl (RealVisXL V4.0), reference (the "
                             "reference run: SDXL + RealVisXL, DDIM 50, 1024^2, CFG 5, 10 rounds, no DeepCache)")
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
    return StoryConfig.from_preset(args.preset, **changes)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from vision.engines.story import StoryEngine, StoryError, load_story
    from vision.limits import check_side, check_steps
    from vision.wording import plural

    try:
        config = config_from_args(args)
        check_steps(config.steps, "--steps")
        if config.size is not None:
            check_side(config.size, "--size")
        config = config.validate()
        prompts = load_story(args.story)
    except ValueError as err:  # StoryError and LimitError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"story: {config.describe()}, {config.family} ({config.base_model()}), {config.steps} steps, "
          f"CFG {config.guidance_scale():g}, DeepCache {'N=' + str(config.deepcache) if config.deepcache else 'off'}")
    total = (config.rounds + 1) * len(prompts)
    bar = tqdm(total=total, unit="frame", desc="story")

    def progress(p) -> None:
        step = f" step {p['step']}/{p['steps']}" if p["steps"] else ""
        bar.set_description(f"round {min(p['round'], config.rounds)}/{config.rounds}{step}")
        bar.n = min(total, p["round"] * p["frames"] + p["frame"])
        bar.refresh()

    try:
        result = StoryEngine(config)(prompts, args.output, progress=progress, overwrite=args.overwrite)
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
    if result.resumed_from is not None:
        print(f"resumed after round {result.resumed_from}")
    for r, t in sorted(result.timings.items()):
        print(f"round {r}: {t['seconds']:.1f} s ({t['seconds_per_frame']:.2f} s/frame)")
    print(f"{plural(len(prompts), 'frame')} x {plural(config.rounds + 1, 'pass', 'passes')} ({config.describe()}) "
          f"-> {result.output_dir}")
    print(f"storyboard: {result.output_dir / result.files['storyboard']}")
    if result.tiny:
        from vision.tiny import TINY_NOTICE

        print(TINY_NOTICE)
    return 0
