"""``python -m vision eval trident --preset voc21 --root DIR [--limit N] [--json FILE]``

Measures mIoU of an engine on a benchmark's validation split (mmseg protocol: batch size 1, predictions
at the original size, 255 ignored, ``reduce_zero_label`` for ADE20k, Context-59 and VOC20) and prints a
per-class table. ``--root`` is the dataset folder in the layout of :mod:`vision.metrics` (for VOC: the
folder holding JPEGImages/, SegmentationClass/ and ImageSets/). With real weights this reproduces the
paper's table; in tiny mode the numbers are those of random weights (noise).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

NAME = "eval"
HELP = "measure mIoU of an engine on a benchmark's validation split (prints a per-class table)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vision.engines.trident import PRESETS

    parser.add_argument("engine", choices=["trident"], help="the engine to evaluate")
    parser.add_argument("--preset", required=True, choices=[p for p in PRESETS if p != "open"],
                        help="benchmark: its settings, class names and folder layout")
    parser.add_argument("--root", required=True, metavar="DIR", help="the dataset folder (see vision/metrics.py)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate the first N images only")
    parser.add_argument("--json", metavar="FILE", help="also write the summary (mIoU, per-class IoU) as JSON")
    parser.add_argument("--no-refine", action="store_true", help="skip the SAM prompt refinement")
    parser.add_argument("--no-reference", action="store_true",
                        help="the project's behaviour instead of the reference code's (see the engine's docstring)")
    parser.add_argument("--clip", choices=["clip_b16", "clip_h14"], default=None, help="CLIP model (default B/16)")
    parser.add_argument("--vfm", choices=["dino_b16", "dinov2_b14"], default=None,
                        help="proxy-attention model (default DINO B/16; DINOv2 is a deviation)")
    parser.add_argument("--sam", choices=["sam_b", "sam_h"], default=None, help="SAM model (default ViT-B)")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from vision.engines.trident import TridentConfig, TridentEngine
    from vision.engines.trident.modes import mode_for
    from vision.metrics import LAYOUTS, DatasetError, dataset_samples, evaluate
    from vision.wording import plural

    if args.limit is not None and args.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return 2
    changes = {k: v for k, v in {"clip": args.clip, "vfm": args.vfm, "sam": args.sam}.items() if v is not None}
    if args.no_refine:
        changes["refine"] = False
    if args.no_reference:
        changes["reference"] = False
    config = TridentConfig.from_preset(args.preset, **changes)
    try:
        samples = dataset_samples(args.preset, args.root, args.limit)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    classes = mode_for(config).class_list(args.preset)
    engine = TridentEngine(config=config)
    tiny = bool(engine.hub.tiny)
    bar = tqdm(total=len(samples), unit="image", desc=f"trident {args.preset}")
    started = time.perf_counter()

    def predict(path: Path):
        return engine.segment(path, classes, config=config, return_probs=False).labels

    try:
        matrix = evaluate(predict, samples, len(classes.names), LAYOUTS[args.preset].reduce_zero_label,
                          on_image=lambda n, s: bar.update(1))
    except KeyboardInterrupt:
        bar.close()
        print("interrupted", file=sys.stderr)
        return 130
    bar.close()
    seconds = time.perf_counter() - started
    if tiny:
        print("TINY MODE: random-weight models, these numbers are noise (for testing the harness).")
    print(f"Trident {args.preset}: {plural(matrix.images, 'image')}, {seconds:.1f} s "
          f"({seconds / max(1, matrix.images):.2f} s/image); clip={config.clip} vfm={config.vfm} sam={config.sam} "
          f"refine={'on' if config.refine else 'off'} reference={'on' if config.reference else 'off'}")
    print(matrix.table(classes.display))
    if args.json:
        summary = {"engine": "trident", "preset": args.preset, "reference": config.reference, "root": str(args.root),
                   "tiny": tiny, "seconds": round(seconds, 2),
                   "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
                   **matrix.summary(classes.display)}
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return 0
