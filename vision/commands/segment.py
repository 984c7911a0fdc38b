"""``python -m vision segment --image IMG_OR_DIR --point X,Y[,LABEL] ... [--box X0,Y0,X1,Y1] [--sam sam_t]
--output DIR`` (or ``--everything``): SAM masks from clicks and/or a box.

Per image: ``<stem>.mask.png`` (the best mask, 0/255; the union of all masks with ``--everything``),
``<stem>.overlay.png``, ``<stem>.rle.json`` (COCO RLE of every mask with its predicted IoU) and, with
``--everything``, ``<stem>.labels.png``; one ``results.jsonl`` line per image with the scores (best
first) and the backend that ran. ``--backend`` picks where SAM runs (``auto``: torch on a GPU, the
fastest installed of OpenVINO / ONNX Runtime on a CPU). ``--image`` is the batch mode's ``--input``: a folder applies the same prompts to every image.
The engine is :mod:`vision.engines.segment`; this module only maps options onto it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys

NAME = "segment"
HELP = "SAM masks from clicks (--point X,Y[,LABEL]) and/or a box, or every mask (--everything)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vision import batch
    from vision.hub import SAM_MODELS
    from vision.sam.backends import BACKENDS

    parser.add_argument("--image", "--input", "-i", dest="input", metavar="IMG_OR_DIR",
                        help="an image, or a folder of images (the same prompts for each)")
    parser.add_argument("--point", action="append", default=[], metavar="X,Y[,LABEL]",
                        help="a click in pixels; LABEL 1 = foreground (default), 0 = background; repeatable")
    parser.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a box in pixels")
    parser.add_argument("--everything", action="store_true",
                        help="every mask SAM's automatic generator finds (no prompts)")
    parser.add_argument("--sam", choices=SAM_MODELS, default="sam_t", help="SAM model (default sam_t)")
    masks = parser.add_mutually_exclusive_group()
    masks.add_argument("--multimask", dest="multimask", action="store_true", default=None,
                       help="three candidate masks (default: for a lone click only)")
    masks.add_argument("--single-mask", dest="multimask", action="store_false", help="one mask")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="where SAM runs: torch, onnx (onnxruntime), openvino, or auto (default: torch on a "
                             "GPU, the fastest installed on a CPU)")
    parser.add_argument("--reference", action="store_true",
                        help="SAM's own behaviour (the full 32x32 everything grid on CPU too)")
    batch.add_batch_arguments(parser)


def parse_numbers(text: str, counts: tuple[int, ...], flag: str) -> list[float]:
    """``"10,20"`` -> [10.0, 20.0]; the number of values must be one of ``counts``."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        raise ValueError(f"{flag} wants {' or '.join(str(c) for c in counts)} comma-separated numbers, got {text!r}")
    return values


def make_processor(config, points: list, box, multimask, everything: bool):
    """One engine per worker (top level for Ray); prompts are checked against each image."""
    from vision.engines.segment import SegmentEngine

    engine = SegmentEngine(config)
    if everything:
        return lambda item: engine.everything(item.image(), name=item.id)
    return lambda item: engine(item.image(), points, box, multimask=multimask, name=item.id)


def run(args: argparse.Namespace) -> int:
    from vision import batch
    from vision.engines.segment import SegmentConfig
    from vision.hub import get_hub

    try:
        points = [parse_numbers(p, (2, 3), "--point") for p in args.point]
        box = parse_numbers(args.box, (4,), "--box") if args.box else None
        if args.everything and (points or box):
            raise ValueError("--everything takes no --point or --box")
        if not args.everything and not points and box is None:
            raise ValueError("give at least one --point X,Y[,LABEL] or a --box X0,Y0,X1,Y1 (or --everything)")
        config = SegmentConfig.from_preset("sam" if args.reference else "default", sam_model=args.sam,
                                           backend=args.backend).validate()
    except ValueError as err:  # bad options (SegmentError is a ValueError)
        print(f"segment: {err}", file=sys.stderr)
        return 2
    settings = {"config": dataclasses.asdict(config), "points": points, "box": box, "multimask": args.multimask,
                "everything": args.everything, "tiny": get_hub().tiny}
    return batch.run_from_args(args, functools.partial(make_processor, config, points, box, args.multimask,
                                                       args.everything), settings=settings)
