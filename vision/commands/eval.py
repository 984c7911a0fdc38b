"""``python -m vision eval ENGINE ...``: reproduce a paper's table on your machine.

* ``eval trident --preset voc21 --root DIR [--limit N] [--json FILE] [--method corrclip]``: mIoU of
  Trident (or CorrCLIP, on the same images and with the same table) on a
  benchmark's validation split (mmseg protocol: batch size 1, predictions at the original size, 255
  ignored, ``reduce_zero_label`` for ADE20k, Context-59 and VOC20) with a per-class table. ``--root`` is
  the dataset folder in the layout of :mod:`vision.metrics` (for VOC: the folder holding JPEGImages/,
  SegmentationClass/ and ImageSets/).
* ``eval ipseg --dataset perseg|fss|coco|pascal --root DIR --out DIR``: one-shot (``--shots K``)
  segmentation mIoU / FB-IoU (/ bIoU): :mod:`vision.evaluation.ipseg_eval`.
* ``eval generate --prompts FILE --out DIR --deepcache 2 3 5 --branch 0 1``: CLIP score, measured
  speed-up and MACs of DeepCache against the uncached baseline: :mod:`vision.evaluation.generation_eval`.
* ``eval story --stories DIR --out DIR``: CLIP-T and aCCS per Story-Adapter round:
  :mod:`vision.evaluation.story_eval`.
* ``eval video --layout davis|oneshot --root DIR --out DIR``: J, F and J&F of the video engine on the
  DAVIS-2017 semi-supervised layout or the one-shot layout: :mod:`vision.evaluation.video_eval`.
* ``eval synthetic --layout perseg --root DIR``: a small dataset with exact masks in a few-shot layout
  (``--layout davis``: two video sequences in the DAVIS-2017 layout).

Every harness but Trident's writes ``items.jsonl`` (one line per item), ``summary.json``, ``table.txt``
and a PNG plot into ``--out`` (:mod:`vision.evaluation.records`). With real weights these reproduce the
papers' tables; in tiny mode the numbers are those of random weights (noise).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

NAME = "eval"
HELP = "reproduce a paper's numbers: trident / ipseg / generate / story / video evaluations (tables, JSONL, plots)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vision.evaluation import generation_eval, ipseg_eval, story_eval, video_eval

    engines = parser.add_subparsers(dest="engine", required=True, metavar="ENGINE")
    for name, help_text, add, run_fn in (
        ("trident", "mIoU of Trident or CorrCLIP (--method) on a benchmark's validation split (per-class table)",
         add_trident_arguments,
         run_trident),
        ("ipseg", "IPSeg one-shot segmentation: PerSeg, FSS-1000, COCO-20i, PASCAL-5i (mIoU, FB-IoU, bIoU)",
         ipseg_eval.add_arguments, ipseg_eval.run),
        ("generate", "Stable Diffusion with DeepCache vs no cache: CLIP score, speed-up, MACs, images for FID",
         generation_eval.add_arguments, generation_eval.run),
        ("story", "Story-Adapter per round: CLIP-T and aCCS over a folder of stories", story_eval.add_arguments,
         story_eval.run),
        ("video", "video object segmentation: DAVIS-2017 semi-supervised or one-shot layouts (J, F, J&F)",
         video_eval.add_arguments, video_eval.run),
        ("synthetic", "write a small few-shot dataset with exact masks (from scikit-image photos) in a layout",
         add_synthetic_arguments, run_synthetic),
    ):
        sub = engines.add_parser(name, help=help_text, description=help_text)
        # The global options after the engine too (`vision eval ipseg --tiny ...`).
        sub.add_argument("--tiny", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument("--device", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        add(sub)
        sub.set_defaults(eval_run=run_fn)


def run(args: argparse.Namespace) -> int:
    return args.eval_run(args)


# ------------------------------------------------------------------------------------------------ trident


def add_trident_arguments(parser: argparse.ArgumentParser) -> None:
    from vision.classnames import CLASS_LISTS
    from vision.commands.trident import add_model_arguments

    parser.add_argument("--preset", required=True, choices=[*CLASS_LISTS, *(f"corrclip_{n}" for n in CLASS_LISTS)],
                        help="benchmark: its settings, class names and folder layout (with --method corrclip, "
                        "CorrCLIP's settings for it)")
    parser.add_argument("--root", required=True, metavar="DIR", help="the dataset folder (see vision/metrics.py)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate the first N images only")
    parser.add_argument("--json", metavar="FILE", help="also write the summary (mIoU, per-class IoU) as JSON")
    parser.add_argument("--region-masks", metavar="DIR", default=None,
                        help="corrclip: pre-generated region masks instead of a mask generator, DIR/<image stem>.npz "
                        "holding an 'instance_mask' id map (the reference's format: the paper's SAM 2 masks)")
    add_model_arguments(parser)


def load_region_masks(folder: Path, image: Path) -> Any:
    """The pre-generated region id map [H, W] of ``image``: ``folder/<stem>.npz``'s ``instance_mask``."""
    import numpy as np

    path = folder / f"{image.stem}.npz"
    with np.load(path) as data:
        if "instance_mask" not in data:
            raise ValueError(f"--region-masks: {path} has no 'instance_mask' array (has: {', '.join(data.files)})")
        return data["instance_mask"]


def run_trident(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from vision.commands.trident import config_from_args
    from vision.engines.trident import TridentEngine
    from vision.metrics import LAYOUTS, DatasetError, dataset_samples, evaluate

    if args.limit is not None and args.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return 2
    try:
        config = config_from_args(args, args.preset)
        benchmark = config.benchmark
        samples = dataset_samples(benchmark, args.root, args.limit)
        masks = None if args.region_masks is None else Path(args.region_masks)
        if masks is not None and (config.method != "corrclip" or not masks.is_dir()):
            raise ValueError(f"--region-masks {masks}: " + ("not a folder" if config.method == "corrclip"
                                                             else "applies to --method corrclip"))
        missing = [] if masks is None else [s for s in samples if not (masks / f"{s.image.stem}.npz").is_file()]
        if missing:
            raise ValueError(f"--region-masks: {len(missing)} of {len(samples)} images have no masks file, e.g. "
                             f"{masks / (missing[0].image.stem + '.npz')}")
    except (DatasetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    classes = config.class_list()
    engine = TridentEngine(config)
    tiny = bool(engine.hub.tiny)
    bar = tqdm(total=len(samples), unit="image", desc=f"{config.method} {benchmark}")
    started = time.perf_counter()

    def predict(path: Path):
        regions = None if masks is None else load_region_masks(masks, path)
        return engine(path, classes, return_probs=False, regions=regions).labels

    try:
        matrix = evaluate(predict, samples, len(classes.names), LAYOUTS[benchmark].reduce_zero_label,
                          on_image=lambda n, s: bar.update(1))
    except KeyboardInterrupt:
        bar.close()
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:  # a damaged masks file or image: the message names it
        bar.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    bar.close()
    _report_trident(args, config, classes, matrix, masks, tiny, time.perf_counter() - started)
    return 0


def _report_trident(args: argparse.Namespace, config, classes, matrix, masks: Path | None, tiny: bool,
                    seconds: float) -> None:
    """The run's line and per-class table on stdout; with ``--json``, the summary in that file."""
    from vision.wording import plural

    if tiny:
        print("TINY MODE: random-weight models, these numbers are noise (for testing the harness).")
    title = "CorrCLIP" if config.method == "corrclip" else "Trident"
    regions = f"region_masks={masks}" if masks is not None else f"mask_generator={config.regions.label}"
    models = regions if config.method == "corrclip" else f"sam={config.sam} refine={'on' if config.refine else 'off'}"
    print(f"{title} {config.benchmark}: {plural(matrix.images, 'image')}, {seconds:.1f} s "
          f"({seconds / max(1, matrix.images):.2f} s/image); preset={config.preset} clip={config.clip} "
          f"vfm={config.vfm} {models} reference={'on' if config.reference else 'off'}")
    print(matrix.table(classes.display))
    if args.json:
        summary = {"engine": "trident", "method": config.method, "preset": config.preset,
                   "benchmark": config.benchmark, "region_masks": None if masks is None else str(masks),
                   "mode": config.mode, "reference": config.reference, "root": str(args.root), "tiny": tiny,
                   "seconds": round(seconds, 2), "config": dataclasses.asdict(config),
                   **matrix.summary(classes.display)}
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------- synthetic


def add_synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", required=True, choices=["perseg", "fss", "coco", "pascal", "davis"],
                        help="folder layout (vision/evaluation/fewshot_datasets.py; davis: two video sequences in "
                             "the DAVIS-2017 layout with a one-shot pairs.txt, vision/evaluation/synthetic_video.py)")
    parser.add_argument("--root", required=True, metavar="DIR", help="folder to write the dataset into")
    parser.add_argument("--classes", type=int, default=4, help="object classes (1..12, default 4)")
    parser.add_argument("--images", type=int, default=5, help="images per class (default 5)")
    parser.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"),
                        help="image size (default 240 320)")
    parser.add_argument("--seed", type=int, default=0)


def run_synthetic(args: argparse.Namespace) -> int:
    from vision.evaluation.synthetic_datasets import build
    from vision.evaluation.synthetic_video import write_davis

    try:
        if args.layout == "davis":  # --images is the frames per sequence
            root = write_davis(args.root, args.images, tuple(args.size))
            print(f"wrote a synthetic DAVIS-2017-layout dataset (2 sequences x {args.images} frames) to {root}")
            return 0
        root = build(args.layout, args.root, args.classes, args.images, tuple(args.size), args.seed)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote a synthetic {args.layout} dataset ({args.classes} classes x {args.images} images) to {root}")
    return 0
