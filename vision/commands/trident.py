"""``python -m vision trident --labels "cat; dog; background" --input IMG_OR_DIR --output DIR [--preset open]``

Open-vocabulary semantic segmentation of an image or a folder of images with Trident. For every image
``<stem>.labels.png`` (indexed palette, pixel value = class index), ``<stem>.coarse.png`` (before SAM
refinement) and ``<stem>.overlay.png`` are written, plus one line per image in ``results.jsonl``
(classes, pixel share per class, timings); failures go to ``errors.jsonl`` and a rerun resumes.

Classes: ``--labels`` separates classes with ";" and a class's synonyms with "|"
(``"cat; dog|puppy; background|sky|wall"``), the app's and the library's syntax too; ``--labels-file``
reads one class per line, synonyms separated by "|". A class named "background" is the background class.
Without either, a benchmark preset (``--preset voc21`` ...) uses its own class list.

Benchmark presets reproduce the reference code's behaviour (``reference`` mode, in ``results.jsonl``);
``--no-reference`` runs the project's own instead (the differences: ``vision/engines/trident/engine.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

NAME = "trident"
HELP = "open-vocabulary semantic segmentation from class names (Trident: CLIP + DINO + SAM)"


def read_labels_file(path: str) -> list[str]:
    """One class per line (synonyms separated by "|"); blank lines and ``#`` comments skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line for line in (raw.strip() for raw in lines) if line and not line.startswith("#")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vision import batch
    from vision.engines.trident import PRESETS

    parser.add_argument("--labels", help='classes separated by ";", synonyms of a class by "|" '
                        '(e.g. "cat; dog|puppy; background")')
    parser.add_argument("--labels-file", metavar="FILE", help='one class per line, synonyms separated by "|"')
    parser.add_argument("--preset", choices=list(PRESETS), default="open",
                        help="settings (and, without --labels, classes) of a benchmark; default: open")
    parser.add_argument("--prob-thd", type=float, default=None,
                        help="pixels whose best class probability is below this become background")
    parser.add_argument("--no-refine", action="store_true", help="skip the SAM prompt refinement")
    parser.add_argument("--no-reference", action="store_true",
                        help="with a benchmark preset: the project's behaviour, not the reference code's")
    parser.add_argument("--clip", choices=["clip_b16", "clip_h14"], default=None, help="CLIP model (default B/16)")
    parser.add_argument("--vfm", choices=["dino_b16", "dinov2_b14"], default=None,
                        help="proxy-attention model (default DINO B/16; DINOv2 is a deviation from the paper)")
    parser.add_argument("--sam", choices=["sam_b", "sam_h"], default=None, help="SAM model (default ViT-B)")
    batch.add_batch_arguments(parser)


def build_config(args: argparse.Namespace) -> Any:
    from vision.engines.trident import TridentConfig

    changes = {k: v for k, v in {"prob_thd": args.prob_thd, "clip": args.clip, "vfm": args.vfm,
                                 "sam": args.sam}.items() if v is not None}
    if args.no_refine:
        changes["refine"] = False
    if args.no_reference:
        changes["reference"] = False
    return TridentConfig.from_preset(args.preset, **changes)


def make_processor(classes: Any, config: Any) -> Any:
    """Once per worker: the engine and its text embeddings; then one engine call per image."""
    from vision.engines.trident import TridentEngine

    engine = TridentEngine(config)
    engine.text_embeddings(classes.unique_queries)
    return lambda item: engine(item.image(), classes)


def run(args: argparse.Namespace) -> int:
    from vision import batch
    from vision.classnames import CLASS_LISTS
    from vision.engines.trident import parse_classes
    from vision.engines.trident.modes import mode_for

    try:
        config = build_config(args)
        config.validate()
        if args.labels and args.labels_file:
            raise ValueError("give either --labels or --labels-file, not both")
        if args.labels is not None:
            classes = parse_classes(args.labels)
        elif args.labels_file:
            classes = parse_classes(read_labels_file(args.labels_file))
        elif config.preset in CLASS_LISTS:
            classes = parse_classes(mode_for(config).class_list(config.preset))
        else:
            raise ValueError('no classes: give --labels "cat; dog; background" (or --labels-file, or a benchmark '
                             "--preset)")
        if config.prob_thd > 0 and classes.background is None:
            raise ValueError(f"--prob-thd {config.prob_thd} needs a background class: add 'background' to the labels")
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = {"classes": [list(n) for n in classes.names], "background": classes.background,
                "config": dataclasses.asdict(config),
                "tiny": bool(getattr(args, "tiny", False))}
    return batch.run_from_args(args, functools.partial(make_processor, classes, config), settings=settings)
