"""``python -m vision video --input VIDEO_OR_FRAME_DIR --output DIR`` with a prompt: follow an object
through a video (mp4, webm, mov, gif, ... or a folder of frames).

The prompt is an exemplar, as ``ipseg`` takes it (``--prompt IMG [--prompt-mask MASK | --prompt-box
X0,Y0,X1,Y1]``, repeatable for k-shot), or the object on a frame of the video: ``--point X,Y`` (repeatable;
``--negative-point X,Y`` for background), ``--box X0,Y0,X1,Y1`` or ``--mask MASK``, on ``--frame K``.
``--track exemplar`` (each frame from the exemplar, with a temporal prior) or ``sam2`` (SAM 2.1
propagates the prompt frame's mask); ``--method``, ``--image-preset``, ``--features``, ``--sam`` choose the
image-prompt engine (IPSeg / GF-SAM) as ``ipseg`` takes them.

Writes ``<frame>.mask.png`` per frame (zero-padded index), ``results.jsonl``, ``errors.jsonl``,
``overlay.mp4`` (H.264) and ``video.json`` into ``--output`` (see :mod:`vision.batch.video`); a killed run
continues at the next unfinished frame when rerun. The engine is :mod:`vision.engines.video`; this module
only maps options onto it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from pathlib import Path

from vision.commands.ipseg import per_prompt
from vision.engines.ipseg.config import FEATURES, METHODS, SAM_MODELS  # no torch: --help stays quick
from vision.engines.ipseg.config import PRESETS as IMAGE_PRESETS
from vision.engines.video.config import PRESETS, SAM2_MODELS, TRACKS

NAME = "video"
HELP = "follow an object through a video from an exemplar image, a click, a box or a mask"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_prompt_arguments(parser)
    parser.add_argument("--preset", choices=tuple(PRESETS), default="default",
                        help="default (exemplar track, DINOv2 + SAM-B); fast (SAM features, sam_t); sam2 / "
                             "sam2_large (SAM 2.1 tiny / large propagates the prompt frame's mask)")
    parser.add_argument("--track", choices=TRACKS, default=None, help="exemplar: every frame from the exemplar "
                        "with a temporal prior; sam2: SAM 2.1 propagates the prompt frame (default: the preset's)")
    parser.add_argument("--method", choices=METHODS, default=None, help="image-prompt method (default: ipseg)")
    parser.add_argument("--image-preset", choices=tuple(IMAGE_PRESETS), default=None,
                        help="the image-prompt engine's preset (as ipseg --preset; default: the video preset's)")
    parser.add_argument("--features", choices=FEATURES, default=None, help="image engine's feature source "
                        "(default: the preset's)")
    parser.add_argument("--sam", choices=SAM_MODELS, default=None, help="image engine's SAM (default: the preset's)")
    parser.add_argument("--sam2", choices=SAM2_MODELS, default=None, help="SAM 2.1 model (default: the preset's)")
    parser.add_argument("--no-prior", action="store_true", help="exemplar track: no temporal prior")
    parser.add_argument("--max-instances", type=int, default=None, help="masks per frame (exemplar track)")
    parser.add_argument("--presence-threshold", type=float, default=None,
                        help="below this score a frame gets no mask (exemplar track); default: always a mask")
    parser.add_argument("--every", type=int, default=1, metavar="N", help="take every N-th frame (default 1)")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N", help="process at most N frames")
    parser.add_argument("--input", "-i", required=True, help="a video file or a folder of frame images")
    parser.add_argument("--output", "-o", required=True, help="output folder (masks, results.jsonl, overlay.mp4)")
    parser.add_argument("--coco-json", nargs="?", const="coco.json", default=None, metavar="PATH",
                        help="also write COCO RLE annotations of every frame (default name coco.json)")
    parser.add_argument("--no-overlay", action="store_true", help="do not write overlay.mp4")
    parser.add_argument("--overwrite", action="store_true", help="redo frames that are already done")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """The prompt options (also used by ``eval video``)."""
    group = parser.add_argument_group("prompt", "an exemplar (as ipseg takes it), or the object on a frame")
    group.add_argument("--prompt", action="append", metavar="IMG", help="exemplar image showing the object; "
                       "repeat for several images of it (k-shot)")
    group.add_argument("--prompt-mask", action="append", metavar="MASK", help="mask of the object on the "
                       "exemplar (one per --prompt, in order); without a mask or box the foreground is found")
    group.add_argument("--prompt-box", action="append", metavar="X0,Y0,X1,Y1", help="box of the object on the "
                       "exemplar in pixels (instead of a mask)")
    group.add_argument("--point", action="append", metavar="X,Y", help="a click on the object on --frame, pixels")
    group.add_argument("--negative-point", action="append", metavar="X,Y", help="a click on background on --frame")
    group.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a box around the object on --frame, pixels")
    group.add_argument("--mask", metavar="MASK", help="the object's mask on --frame (the frame's size)")
    group.add_argument("--frame", type=int, default=0, metavar="K", help="the frame the click, box or mask is on "
                       "(and where sam2 starts; default 0)")


def make_config(args: argparse.Namespace):
    """The preset's config with the options given on the command line (validated)."""
    from vision.engines.video import VideoConfig

    given = {"track": args.track, "method": args.method, "image_preset": args.image_preset,
             "features": args.features, "sam_model": args.sam,
             "sam2_model": args.sam2, "max_instances": args.max_instances,
             "presence_threshold": args.presence_threshold, "max_frames": args.max_frames}
    changes = {k: v for k, v in given.items() if v is not None}
    return VideoConfig.from_preset(args.preset, every=args.every, prior=not args.no_prior, **changes).validate()


def make_prompt(args: argparse.Namespace):
    """The :class:`~vision.engines.video.VideoPrompt` the options describe (files checked to exist)."""
    from vision.engines.ipseg import Concept, Prompt
    from vision.engines.video import VideoPrompt

    for path in [*(args.prompt or []), *(m for m in args.prompt_mask or [] if m), *([args.mask] if args.mask else [])]:
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such file")
    points = [_numbers(p, 2, "--point") for p in args.point or []]
    negatives = [_numbers(p, 2, "--negative-point") for p in args.negative_point or []]
    box = _numbers(args.box, 4, "--box") if args.box else None
    if args.prompt:
        n = len(args.prompt)
        masks = per_prompt(args.prompt_mask, n, "--prompt-mask")
        boxes = per_prompt(args.prompt_box, n, "--prompt-box")
        shots = [Prompt(image, mask=mask, box=_numbers(b, 4, "--prompt-box") if b else None)
                 for image, mask, b in zip(args.prompt, masks, boxes, strict=True)]
        exemplar = Concept(shots, name=Path(args.prompt[0]).stem)
        return VideoPrompt(exemplar=exemplar, mask=args.mask, points=points + negatives,
                           labels=[1] * len(points) + [0] * len(negatives), box=box, frame=args.frame)
    return VideoPrompt(mask=args.mask, points=points + negatives, labels=[1] * len(points) + [0] * len(negatives),
                       box=box, frame=args.frame)


def settings_of(args: argparse.Namespace, config) -> dict:
    """What changes a run's outputs (hashed into each results.jsonl line): rerunning with other settings
    redoes the frames."""
    from vision.hub import get_hub

    files = [*(args.prompt or []), *(m for m in args.prompt_mask or [] if m), *([args.mask] if args.mask else [])]
    return {"config": dataclasses.asdict(config), "tiny": get_hub().tiny, "files": {f: _digest(f) for f in files},
            "prompt_boxes": args.prompt_box, "points": args.point, "negative_points": args.negative_point,
            "box": args.box, "frame": args.frame, "input": _fingerprint(args.input)}


def run(args: argparse.Namespace) -> int:
    from vision.batch import BatchError
    from vision.batch.video import run_video
    from vision.engines.video import VideoEngine
    from vision.weights import WeightsError

    try:
        config = make_config(args)
        prompt = make_prompt(args)
        settings = settings_of(args, config)
        engine = VideoEngine(config)
        described = config.describe()
        print(f"video: preset {config.preset}, track {config.track}, method {config.method}, features "
              f"{described['features']}, SAM {described['sam_model']}"
              + (f", SAM 2.1 {config.sam2_model}" if config.track == "sam2" else f", prior {described['prior']}"))
        summary = run_video(engine, args.input, prompt, args.output, overwrite=args.overwrite,
                            coco_json=args.coco_json, overlay=not args.no_overlay, settings=settings,
                            progress=None if args.no_progress else _progress_bar())
    except (ValueError, OSError, WeightsError, BatchError) as err:  # every input error names its file or field
        print(f"video: {err}", file=sys.stderr)
        return 2
    return summary.exit_code


def _progress_bar():
    """A tqdm bar driven by the engine's per-frame Progress."""
    from tqdm.auto import tqdm

    bar = tqdm(unit="frame", desc="video", dynamic_ncols=True, file=sys.stderr)

    def update(progress) -> None:
        if "frames" in progress.position:
            bar.total = progress.position["frames"]
            bar.n = progress.position["frame"]
            bar.set_description(progress.message)
        else:
            bar.n = bar.total or bar.n
            bar.close()
        bar.refresh()

    return update


def _numbers(text: str, n: int, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != n:
        raise ValueError(f"{flag} wants {n} comma-separated numbers in pixels, got {text!r}")
    return values


def _digest(path: str) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


def _fingerprint(path: str) -> dict:
    """The input's identity without reading it all: a file's size and change time, a folder's frame list."""
    source = Path(path)
    if source.is_dir():
        names = sorted(p.name for p in source.iterdir())
        return {"folder": str(source.resolve()), "files": hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]}
    stat = source.stat() if source.exists() else None
    return {"file": str(source.resolve()), "size": stat.st_size if stat else None,
            "mtime": int(stat.st_mtime) if stat else None}
