"""``python -m vision ipseg --prompt IMG [--prompt-mask MASK | --prompt-box X0,Y0,X1,Y1] --input IMG_OR_DIR
--output DIR [--tiny]``: segment the prompt's concept in every input image (IPSeg).

Writes ``<stem>.mask.png`` and ``<stem>.overlay.png`` per input (plus ``<stem>.<concept>_<k>.inst.png``
when several instances are found) and one ``results.jsonl`` line per input (presence score, points,
timings); see :mod:`vision.batch` for resuming, sharding and errors.jsonl. The engine is
:mod:`vision.engines.ipseg`; this module only maps options onto it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import sys
from pathlib import Path

NAME = "ipseg"
HELP = "segment the concept shown in a prompt image in every input image (IPSeg)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vision import batch

    parser.add_argument("--prompt", action="append", required=True, metavar="IMG",
                        help="prompt image showing the concept; repeat for several images of it (k-shot)")
    parser.add_argument("--prompt-mask", action="append", metavar="MASK",
                        help="mask of the concept on the prompt (one per --prompt, in order); without a mask "
                             "or box the foreground is found automatically")
    parser.add_argument("--prompt-box", action="append", metavar="X0,Y0,X1,Y1",
                        help="box of the concept on the prompt in pixels (instead of a mask)")
    parser.add_argument("--fast", action="store_true",
                        help="DINOv2 features only (no Stable Diffusion: faster, no SD weights needed)")
    parser.add_argument("--sam", choices=("sam_b", "sam_h"), default="sam_b",
                        help="SAM model (default sam_b; the paper uses sam_h)")
    parser.add_argument("--kshot", choices=("mean", "max"), default="mean",
                        help="several prompts: average their prototypes (mean) or take the best match (max)")
    parser.add_argument("--max-instances", type=int, default=1, help="masks per image (default 1)")
    parser.add_argument("--presence-threshold", type=float, default=None,
                        help="below this presence score an image gets no mask (absent); default: always a mask")
    parser.add_argument("--seed", type=int, default=0, help="seed of k-means and the SD noise")
    batch.add_batch_arguments(parser)


def make_processor(prompts: list, config) -> object:
    """One engine per worker; the prompt features are computed here, once (top level for Ray)."""
    from vision.engines.ipseg import IPSeg

    engine = IPSeg(config)
    concepts = engine.prepare(prompts)
    return lambda item: engine.segment(concepts, item.image(), name=item.id)


def _pair(values: list | None, n: int, flag: str) -> list:
    if not values:
        return [None] * n
    if len(values) != n:
        raise ValueError(f"give one {flag} per --prompt ({len(values)} for {n} prompts)")
    return values


def _box(text: str | None):
    if text is None:
        return None
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4:
        raise ValueError(f"--prompt-box wants X0,Y0,X1,Y1 in pixels, got {text!r}")
    return box


def _digest(path: str | None) -> str | None:
    return None if path is None else hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


def run(args: argparse.Namespace) -> int:
    from vision import batch
    from vision.engines.ipseg import IPSegConfig, Prompt
    from vision.hub import get_hub

    try:
        n = len(args.prompt)
        masks, boxes = _pair(args.prompt_mask, n, "--prompt-mask"), _pair(args.prompt_box, n, "--prompt-box")
        for path in [*args.prompt, *(m for m in masks if m)]:
            if not Path(path).is_file():
                raise ValueError(f"{path}: no such file")
        prompts = [Prompt(image, mask=mask, box=_box(box)) for image, mask, box in zip(args.prompt, masks, boxes)]
        config = IPSegConfig(sam_model=args.sam, kshot=args.kshot, max_instances=args.max_instances,
                             presence_threshold=args.presence_threshold, seed=args.seed)
        if args.fast:
            config = dataclasses.replace(config, sd_weight=0.0)
        config.validate()
        settings = {"config": dataclasses.asdict(config), "tiny": get_hub().tiny,
                    "prompts": [[p, _digest(p), m, _digest(m), b] for p, m, b in zip(args.prompt, masks, boxes)]}
    except (ValueError, OSError) as err:  # bad options (IPSegError for settings is a ValueError)
        print(f"ipseg: {err}", file=sys.stderr)
        return 2
    # Prompt problems (empty mask, no salient region) and missing weights surface when the engine starts;
    # the batch runner reports them as a message and exit code 2.
    return batch.run_from_args(args, functools.partial(make_processor, prompts, config), settings=settings)
