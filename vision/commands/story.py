"""``python -m vision story --story FILE --output DIR [--rounds R] [--style comic] [--deepcache N] [--tiny]``

Illustrates a story (a text file, one frame prompt per line; blank lines are skipped) with
Story-Adapter: round 0 from text, then R rounds of global reference cross-attention. Writes every
round's frames, the final frames, ``storyboard.png`` and ``manifest.json`` into DIR; rerunning the
same command continues an interrupted run from its last finished round. ``--rounds 0`` makes round 0
only (plain text-to-image per frame).
"""

from __future__ import annotations

import argparse
import sys

NAME = "story"
HELP = "illustrate a story (one prompt per line) with consistent characters: Story-Adapter"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vision.engines.story import DEFAULT_NEGATIVE, FAMILIES, STYLES, StoryConfig

    d = StoryConfig()
    parser.add_argument("--story", required=True, metavar="FILE", help="text file, one frame prompt per line")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (resumable)")
    parser.add_argument("--rounds", type=int, default=d.rounds, help=f"refinement rounds after round 0 (default {d.rounds}; 0 = round 0 only)")
    parser.add_argument("--style", choices=list(STYLES), default=d.style, help="style preset wrapped around every prompt")
    parser.add_argument("--deepcache", type=int, default=d.deepcache, metavar="N",
                        help=f"DeepCache interval (default {d.deepcache}; 0 = off)")
    parser.add_argument("--seed", type=int, default=d.seed, help="one seed for every frame and round")
    parser.add_argument("--steps", type=int, default=d.steps, help=f"denoising steps (default {d.steps})")
    parser.add_argument("--guidance", type=float, default=d.guidance, help=f"CFG scale (default {d.guidance})")
    parser.add_argument("--size", type=int, default=None, help="square frame size (default 512 SD1.5, 1024 SDXL, 64 tiny)")
    parser.add_argument("--family", choices=list(FAMILIES), default=d.family, help="sd15 (default, fits 16 GB) or sdxl")
    parser.add_argument("--lambda-start", type=float, default=d.lambda_start, help="reference weight of round 1")
    parser.add_argument("--lambda-end", type=float, default=d.lambda_end, help="reference weight of round R")
    parser.add_argument("--negative", default=DEFAULT_NEGATIVE, help="negative prompt")
    parser.add_argument("--overwrite", action="store_true", help="replace a run with other arguments in DIR")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from vision.engines.story import StoryConfig, StoryEngine, StoryError, load_story
    from vision.limits import check_side, check_steps
    from vision.wording import plural

    config = StoryConfig(rounds=args.rounds, style=args.style, deepcache=args.deepcache, seed=args.seed,
                         steps=args.steps, guidance=args.guidance, size=args.size, family=args.family,
                         lambda_start=args.lambda_start, lambda_end=args.lambda_end,
                         negative_prompt=args.negative)
    try:
        check_steps(args.steps, "--steps")
        if args.size is not None:
            check_side(args.size, "--size")
        config.validate()
        prompts = load_story(args.story)
    except ValueError as err:  # StoryError and LimitError
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = (config.rounds + 1) * len(prompts)
    bar = tqdm(total=total, unit="frame", desc="story")

    def progress(p) -> None:
        bar.set_description(f"round {min(p.round, config.rounds)}/{config.rounds}")
        bar.n = min(total, p.round * p.frames + p.frame)
        bar.refresh()

    try:
        result = StoryEngine().run(prompts, config, args.output, on_progress=progress, overwrite=args.overwrite)
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
    print(f"{plural(len(prompts), 'frame')} x {plural(config.rounds + 1, 'pass', 'passes')} -> {result.output_dir}")
    print(f"storyboard: {result.output_dir / result.files['storyboard']}")
    if result.tiny:
        from vision.tiny import TINY_NOTICE

        print(TINY_NOTICE)
    return 0
