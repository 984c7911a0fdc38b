"""``python -m vision ipseg --prompt IMG [--prompt-mask MASK | --prompt-box X0,Y0,X1,Y1] --input IMG_OR_DIR
--output DIR [--method ipseg|gfsam] [--preset default|paper|fast|gfsam|gfsam_fast] [--features dino+sd|dino|sam]
[--sam sam_t|sam_b|sam_h] [--tiny]``: segment the prompt's concept in every input image (IPSeg, or GF-SAM
with ``--method gfsam``).

Writes ``<stem>.mask.png`` and ``<stem>.overlay.png`` per input (plus ``<stem>.<concept>_<k>.inst.png``
when several instances are found, and ``<stem>.heatmap.png`` with ``--heatmap``, and for GF-SAM
``<stem>.graph.png``, its point graph) and one ``results.jsonl`` line per input (what ran: method, preset,
feature source and reference mode; presence score, points, timings); see :mod:`vision.batch` for
resuming, sharding and errors.jsonl. The engine is :mod:`vision.engines.ipseg`; this module only maps
options onto it. ``--method`` without ``--preset`` takes the method's own preset (``default`` for IPSeg,
``gfsam_fast`` for GF-SAM); ``--preset gfsam`` is GF-SAM's paper setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import sys
from pathlib import Path

from vision.engines.ipseg.config import FEATURES, METHODS, PRESETS, SAM_MODELS  # no torch: --help stays quick

NAME = "ipseg"
HELP = "segment the concept shown in a prompt image in every input image (IPSeg or GF-SAM)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vision import batch

    parser.add_argument("--prompt", action="append", required=True, metavar="IMG",
                        help="prompt image showing the concept; repeat for several images of it (k-shot)")
    parser.add_argument("--prompt-mask", action="append", metavar="MASK",
                        help="mask of the concept on the prompt (one per --prompt, in order); without a mask "
                             "or box the foreground is found automatically")
    parser.add_argument("--prompt-box", action="append", metavar="X0,Y0,X1,Y1",
                        help="box of the concept on the prompt in pixels (instead of a mask)")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="ipseg (IPSeg, the default) or gfsam (GF-SAM's graph-based point fusion: DINOv2 or SAM "
                             "features + SAM, no Stable Diffusion); default: the preset's")
    parser.add_argument("--preset", choices=tuple(PRESETS), default=None,
                        help="default (IPSeg with our corrections of the reference, SAM-B); paper (reproduce IPSeg's "
                             "reference code: reference mode, SAM-H, DINOv2 + SD); fast (IPSeg, DINOv2 only); gfsam "
                             "(GF-SAM's reference: DINOv2-L, SAM-H); gfsam_fast (GF-SAM on sam_t's features); "
                             "default: the method's own (default / gfsam_fast)")
    parser.add_argument("--features", choices=FEATURES, default=None,
                        help="feature source: dino+sd (the paper's), dino (DINOv2 only), sam (SAM's image "
                             "embedding: needs SAM alone); default: the preset's")
    parser.add_argument("--fast", action="store_true", help="the same as --features dino")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=None,
                        help="reproduce the reference code, quirks included (default: the preset's)")
    parser.add_argument("--sam", choices=SAM_MODELS, default=None,
                        help="SAM model (default: the preset's, sam_b; the paper uses sam_h)")
    parser.add_argument("--heatmap", action="store_true",
                        help="also write <stem>.heatmap.png: the similarity map with the chosen points "
                             "(and, for GF-SAM, <stem>.graph.png: its point graph, clusters coloured)")
    parser.add_argument("--kshot", choices=("mean", "max"), default="mean",
                        help="several prompts: average their prototypes (mean) or take the best match (max)")
    parser.add_argument("--max-instances", type=int, default=1, help="masks per image (default 1)")
    parser.add_argument("--presence-threshold", type=float, default=None,
                        help="below this presence score an image gets no mask (absent); default: always a mask. "
                             "With --features sam and sam_t the score is calibrated (0..1, 0.5 = even odds); "
                             "otherwise it is the raw cosine (results.jsonl: presence_kind)")
    parser.add_argument("--max-points", type=int, default=None, metavar="N",
                        help="GF-SAM: at most N point prompts, one SAM mask each (default: the preset's, 128, the "
                             "reference's); fewer is faster on a CPU")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of k-means (and of the SD noise outside the paper preset); default: the preset's")
    batch.add_batch_arguments(parser)


def make_processor(prompts: list, config, heatmap: bool = False) -> object:
    """One engine per worker; the prompt features are computed here, once (top level for Ray)."""
    from vision import batch
    from vision.engines.ipseg import IPSegEngine

    engine = IPSegEngine(config)
    concepts = engine.prepare(prompts)

    def process(item):
        result = engine(concepts, item.image(), name=item.id)
        return batch.BatchResult(result.to_files(heatmaps=True), result.to_record()) if heatmap else result

    return process


def make_config(args: argparse.Namespace):
    """The preset's config with the options given on the command line."""
    from vision.engines.ipseg import IPSegConfig

    if args.fast and args.features not in (None, "dino"):
        raise ValueError(f"--fast means --features dino; it contradicts --features {args.features}")
    changes = {"kshot": args.kshot, "max_instances": args.max_instances, "presence_threshold": args.presence_threshold}
    given = {"features": "dino" if args.fast else args.features, "reference": args.reference,
             "sam_model": args.sam, "seed": args.seed, "max_points": args.max_points}
    changes.update({k: v for k, v in given.items() if v is not None})
    if args.method is not None:
        return IPSegConfig.for_method(args.method, args.preset, **changes).validate()
    return IPSegConfig.from_preset(args.preset or "default", **changes).validate()


def per_prompt(values: list | None, n: int, flag: str) -> list:
    """``flag``'s values, one per ``--prompt`` (``n``), or ``n`` Nones when the flag is not given."""
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
    from vision.engines.ipseg import Prompt
    from vision.hub import get_hub

    try:
        n = len(args.prompt)
        masks, boxes = per_prompt(args.prompt_mask, n, "--prompt-mask"), per_prompt(args.prompt_box, n, "--prompt-box")
        for path in [*args.prompt, *(m for m in masks if m)]:
            if not Path(path).is_file():
                raise ValueError(f"{path}: no such file")
        prompts = [Prompt(image, mask=mask, box=_box(box)) for image, mask, box in zip(args.prompt, masks, boxes)]
        config = make_config(args)
        settings = {"config": dataclasses.asdict(config), "tiny": get_hub().tiny, "heatmap": args.heatmap,
                    "prompts": [[p, _digest(p), m, _digest(m), b] for p, m, b in zip(args.prompt, masks, boxes)]}
    except (ValueError, OSError) as err:  # bad options (IPSegError for settings is a ValueError)
        print(f"ipseg: {err}", file=sys.stderr)
        return 2
    described = config.describe()
    print(f"ipseg: method {config.method}, preset {config.preset}, features {config.features} "
          f"({config.feature_source}), reference mode {'on' if config.reference else 'off'}, SAM {config.sam_model} "
          f"({described['sam_frame']} frame)")
    # Prompt problems (empty mask, no salient region) and missing weights surface when the engine starts;
    # the batch runner reports them as a message and exit code 2.
    return batch.run_from_args(args, functools.partial(make_processor, prompts, config, args.heatmap),
                               settings=settings)
