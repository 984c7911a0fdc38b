"""``python -m vision trident --labels "cat; dog; background" --input IMG_OR_DIR --output DIR [--preset open]
[--method corrclip]``

Open-vocabulary semantic segmentation of an image or a folder of images with Trident or, with
``--method corrclip``, CorrCLIP. For every image ``<stem>.labels.png`` (indexed palette, pixel value =
class index), ``<stem>.coarse.png`` (before Trident's SAM refinement / CorrCLIP's map correction) and
``<stem>.overlay.png`` are written (CorrCLIP also ``<stem>.regions.png``, its region masks as 16-bit ids,
and ``<stem>.regions_overlay.png``), plus one line per image in ``results.jsonl`` (method, classes,
pixel share per class, timings); failures go to ``errors.jsonl`` and a rerun resumes.

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
HELP = "open-vocabulary semantic segmentation from class names (Trident or CorrCLIP: CLIP + DINO + SAM)"


def read_labels_file(path: str) -> list[str]:
    """One class per line (synonyms separated by "|"); blank lines and ``#`` comments skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line for line in (raw.strip() for raw in lines) if line and not line.startswith("#")]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The method and model options ``trident`` and ``eval trident`` share."""
    from vision.engines.trident.config import CORRCLIP_CLIPS, CORRCLIP_VFMS, METHODS
    from vision.engines.trident.regions import GENERATORS

    parser.add_argument("--method", choices=METHODS, default=None,
                        help="trident (default) or corrclip (CorrCLIP: region masks + DINO + CLIP); a corrclip_* "
                        "preset implies corrclip")
    parser.add_argument("--no-refine", action="store_true", help="trident: skip the SAM prompt refinement")
    parser.add_argument("--no-reference", action="store_true",
                        help="with a benchmark preset: the project's behaviour, not the reference code's")
    parser.add_argument("--clip", choices=sorted({"clip_b16", "clip_h14", *CORRCLIP_CLIPS}), default=None,
                        help="CLIP model (default: the preset's; trident: clip_b16/clip_h14)")
    parser.add_argument("--vfm", choices=sorted({"dino_b16", "dinov2_b14", *CORRCLIP_VFMS}), default=None,
                        help="DINO model (default: the preset's; DINOv2 is a deviation, trident only)")
    parser.add_argument("--sam", choices=["sam_b", "sam_h"], default=None, help="trident: SAM model (default ViT-B)")
    parser.add_argument("--mask-generator", choices=GENERATORS, default=None,
                        help="corrclip: region masks from SAM's automatic generator or Mask2Former")
    parser.add_argument("--points-per-side", type=int, default=None, metavar="N",
                        help="corrclip with SAM: the automatic generator's N x N point grid (presets: 8 or 32)")


def config_from_args(args: argparse.Namespace, preset: str) -> Any:
    """The config of ``--method``/``preset`` with the model options applied; options of the other method
    are refused with the reason (:class:`~vision.engines.trident.config.TridentError`)."""
    from vision.engines.trident import PRESETS, TridentConfig
    from vision.engines.trident.config import TridentError, preset_for

    method = args.method or PRESETS.get(preset, PRESETS["open"]).method
    name = preset_for(method, preset)
    if name in PRESETS and PRESETS[name].method != method:
        raise TridentError(f"--preset {preset} is a {PRESETS[name].method} preset, not --method {method}")
    wrong = {"trident": ["--mask-generator", "--points-per-side"], "corrclip": ["--no-refine", "--sam"]}[method]
    given = [flag for flag in wrong if getattr(args, flag[2:].replace("-", "_")) not in (None, False)]
    if given:
        raise TridentError(f"{', '.join(given)} do(es) not apply to --method {method}")
    changes = {k: v for k, v in {"clip": args.clip, "vfm": args.vfm, "sam": args.sam,
                                 "mask_generator": args.mask_generator,
                                 "points_per_side": args.points_per_side}.items() if v is not None}
    if args.no_refine:
        changes["refine"] = False
    if args.no_reference:
        changes["reference"] = False
    return TridentConfig.from_preset(name, **changes).validate()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vision import batch
    from vision.engines.trident import PRESETS

    parser.add_argument("--labels", help='classes separated by ";", synonyms of a class by "|" '
                        '(e.g. "cat; dog|puppy; background")')
    parser.add_argument("--labels-file", metavar="FILE", help='one class per line, synonyms separated by "|"')
    parser.add_argument("--preset", choices=list(PRESETS), default="open",
                        help="settings (and, without --labels, classes) of a benchmark; default: open "
                        "(with --method corrclip: corrclip; --method corrclip --preset voc21 is corrclip_voc21)")
    parser.add_argument("--prob-thd", type=float, default=None,
                        help="pixels whose best class probability is below this become background")
    add_model_arguments(parser)
    batch.add_batch_arguments(parser)


def build_config(args: argparse.Namespace) -> Any:
    config = config_from_args(args, args.preset)
    return config if args.prob_thd is None else config.replace(prob_thd=args.prob_thd)


def make_processor(classes: Any, config: Any) -> Any:
    """Once per worker: the engine and its text embeddings; then one engine call per image."""
    from vision.engines.trident import TridentEngine

    engine = TridentEngine(config)
    engine.text_embeddings(classes.unique_queries)
    return lambda item: engine(item.image(), classes)


def run(args: argparse.Namespace) -> int:
    from vision import batch
    from vision.engines.trident import parse_classes

    try:
        config = build_config(args).validate()
        if args.labels and args.labels_file:
            raise ValueError("give either --labels or --labels-file, not both")
        if args.labels is not None:
            classes = parse_classes(args.labels)
        elif args.labels_file:
            classes = parse_classes(read_labels_file(args.labels_file))
        elif config.class_list() is not None:
            classes = parse_classes(config.class_list())
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
