"""``python -m vision eval video``: video object segmentation with region J, boundary F and J&F.

Layouts (``--layout``):

* ``davis`` (DAVIS-2017 semi-supervised): ``ROOT/JPEGImages/480p/<seq>/<frame>.jpg``, the annotations
  ``ROOT/Annotations/480p/<seq>/<frame>.png`` (object ids as palette indices, 0 = background) and the
  split ``ROOT/ImageSets/2017/<split>.txt``. Each object of each sequence is one run: the engine gets its
  first-frame mask (``VideoPrompt(mask=..., frame=0)``) and its prediction on every other frame is
  compared with that object's annotation.
* ``oneshot``: the same folders, and ``ROOT/pairs.txt`` whose lines are ``target_seq target_object
  exemplar_seq exemplar_frame exemplar_object``: the exemplar is an object of *another* sequence (its
  frame and mask), and the engine finds it in every frame of the target sequence (``track="exemplar"``;
  with ``sam2``, on the first frame, then propagated).

Metrics, per object, over every frame but the first and the last (the DAVIS-2017 evaluation's frames):

* **J** (region similarity) = IoU of the predicted and annotated masks (1 when both are empty);
* **F** (contour accuracy) = the F-measure of boundary precision and recall: a boundary pixel counts as
  matched when the other mask's boundary lies within ``ceil(0.008 x image diagonal)`` pixels (a disk
  dilation), as DAVIS' ``db_eval_boundary`` does (1 when both are empty, 0 when one is). Boundaries here
  are the mask minus its 3x3 erosion (DAVIS thins them with ``seg2bmap``; the two agree on the tolerance
  and differ by at most a pixel of width);
* **J&F** = (J + F) / 2. A sequence's J and F are the means over its objects; the dataset's (``mean``
  row) are the means over all objects, as the DAVIS benchmark reports them.

Outputs in ``--out``: ``items.jsonl`` (one line per object: J, F, J&F, frames, seconds, per-frame J),
``summary.json``, ``table.txt`` and ``jf_per_sequence.png``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vision.evaluation import records as R

PLOT = "jf_per_sequence.png"
BOUNDARY_TOLERANCE = 0.008  # DAVIS' bound_th: a fraction of the image diagonal


# --------------------------------------------------------------------------------------------- metrics
def region_j(pred: np.ndarray, gt: np.ndarray) -> float:
    """J: IoU of two bool [H, W] masks (1.0 when both are empty)."""
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def _boundary(mask: np.ndarray) -> np.ndarray:
    import cv2

    eroded = cv2.erode(np.pad(mask.astype(np.uint8), 1), np.ones((3, 3), np.uint8))[1:-1, 1:-1]
    return mask & ~eroded.astype(bool)


def boundary_f(pred: np.ndarray, gt: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """F: boundary F-measure of two bool [H, W] masks with a ``tolerance`` x diagonal pixel disk."""
    import cv2

    pb, gb = _boundary(np.asarray(pred, bool)), _boundary(np.asarray(gt, bool))
    if not pb.any() and not gb.any():
        return 1.0
    if not pb.any() or not gb.any():
        return 0.0
    radius = max(1, math.ceil(tolerance * math.hypot(*pred.shape)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    gb_near = cv2.dilate(gb.astype(np.uint8), disk).astype(bool)
    pb_near = cv2.dilate(pb.astype(np.uint8), disk).astype(bool)
    precision = float((pb & gb_near).sum() / pb.sum())
    recall = float((gb & pb_near).sum() / gb.sum())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------------------------- dataset
@dataclass(frozen=True)
class Task:
    """One run: follow ``target_object`` through ``sequence``, prompted by an object of ``exemplar_seq``'s
    frame ``exemplar_frame`` (the same sequence's first frame in the semi-supervised layout)."""

    sequence: str
    target_object: int
    exemplar_seq: str
    exemplar_frame: int
    exemplar_object: int

    @property
    def id(self) -> str:
        own = self.exemplar_seq == self.sequence and self.exemplar_frame == 0
        source = "" if own else f"<-{self.exemplar_seq}/{self.exemplar_object}"
        return f"{self.sequence}/{self.target_object}{source}"


class DavisLayout:
    """The DAVIS-2017 folders under ``root`` at ``resolution`` (``480p``)."""

    def __init__(self, root: str | Path, resolution: str = "480p"):
        self.root = Path(root)
        self.images = self.root / "JPEGImages" / resolution
        self.annotations = self.root / "Annotations" / resolution
        for folder in (self.images, self.annotations):
            if not folder.is_dir():
                raise R.EvalError(f"{folder}: no such folder (the DAVIS-2017 layout: JPEGImages/{resolution}/<seq>/ "
                                  f"and Annotations/{resolution}/<seq>/)")

    def sequences(self, split: str) -> list[str]:
        listing = self.root / "ImageSets" / "2017" / f"{split}.txt"
        if listing.is_file():
            names = [n.strip() for n in listing.read_text().splitlines() if n.strip()]
        else:
            names = sorted(p.name for p in self.images.iterdir() if p.is_dir())
        missing = [n for n in names if not (self.images / n).is_dir()]
        if missing:
            raise R.EvalError(f"{listing}: sequence(s) without frames in {self.images}: {', '.join(missing[:5])}")
        return names

    def annotation_files(self, sequence: str) -> list[Path]:
        files = sorted((self.annotations / sequence).glob("*.png"))
        if not files:
            raise R.EvalError(f"{self.annotations / sequence}: no annotation PNGs")
        return files

    def labels(self, path: Path) -> np.ndarray:
        """An annotation as object ids, uint8 [H, W] (palette indices; 0 = background)."""
        from PIL import Image

        with Image.open(path) as image:
            return np.asarray(image if image.mode in ("P", "L") else image.convert("L"))

    def objects(self, sequence: str) -> list[int]:
        ids = np.unique(self.labels(self.annotation_files(sequence)[0]))
        return [int(i) for i in ids if i not in (0, 255)]

    def semi_supervised(self, split: str) -> list[Task]:
        return [Task(s, o, s, 0, o) for s in self.sequences(split) for o in self.objects(s)]

    def one_shot(self, pairs: Path) -> list[Task]:
        if not pairs.is_file():
            raise R.EvalError(f"{pairs}: no such pairs file (lines: target_seq target_object exemplar_seq "
                              "exemplar_frame exemplar_object)")
        tasks = []
        for number, line in enumerate(pairs.read_text().splitlines(), start=1):
            words = line.split("#")[0].split()
            if not words:
                continue
            if len(words) != 5 or not all(w.isdigit() for w in (words[1], words[3], words[4])):
                raise R.EvalError(f"{pairs} line {number}: expected 'target_seq target_object exemplar_seq "
                                  f"exemplar_frame exemplar_object', got {line.strip()!r}")
            tasks.append(Task(words[0], int(words[1]), words[2], int(words[3]), int(words[4])))
        return tasks


# ------------------------------------------------------------------------------------------------- run
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layout", choices=("davis", "oneshot"), default="davis",
                        help="davis: DAVIS-2017 semi-supervised (first-frame mask given); oneshot: the exemplar "
                             "is an object of another sequence (ROOT/pairs.txt)")
    parser.add_argument("--root", required=True, metavar="DIR", help="the dataset folder (DAVIS-2017 layout)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for items.jsonl, summary, table, plot")
    parser.add_argument("--split", default="val", help="ImageSets/2017/<split>.txt (default val; without the "
                        "file: every sequence folder)")
    parser.add_argument("--pairs", metavar="FILE", help="oneshot pairs file (default ROOT/pairs.txt)")
    parser.add_argument("--sequences", type=int, metavar="N", help="evaluate the first N sequences only")
    parser.add_argument("--preset", help="VideoConfig.from_preset(NAME) (default: sam2 for davis, fast for oneshot)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="any VideoConfig field (repeatable), "
                        "e.g. track=exemplar, sam2_model=sam2_large, features=sam, sam_model=sam_t")
    parser.add_argument("--json", metavar="FILE", help="also write the summary here")


def evaluate_task(engine: Any, layout: DavisLayout, task: Task) -> dict:
    """J, F and J&F of one object over its sequence's frames (first and last left out)."""
    from vision.engines.video import VideoPrompt
    from vision.videoio import probe

    start = time.perf_counter()
    exemplar_labels = layout.labels(layout.annotation_files(task.exemplar_seq)[task.exemplar_frame])
    mask = exemplar_labels == task.exemplar_object
    if not mask.any():
        raise R.EvalError(f"{task.exemplar_seq} frame {task.exemplar_frame}: no object {task.exemplar_object}")
    if task.exemplar_seq == task.sequence and task.exemplar_frame == 0:
        prompt = VideoPrompt(mask=mask, frame=0)
    else:
        from vision.engines.ipseg import Concept, Prompt

        frames = probe(layout.images / task.exemplar_seq)
        image = frames.frame_files[task.exemplar_frame]
        name = f"{task.exemplar_seq}-{task.exemplar_object}"
        prompt = VideoPrompt(exemplar=Concept([Prompt(str(image), mask=mask)], name))
    info = probe(layout.images / task.sequence)
    truth = layout.annotation_files(task.sequence)
    js, fs = [], []
    for frame in engine.track(info, prompt):
        if not 0 < frame.index < len(truth) - 1:
            continue
        gt = layout.labels(truth[frame.index]) == task.target_object
        pred = frame.mask if frame.ok else np.zeros_like(gt)
        js.append(region_j(pred, gt))
        fs.append(boundary_f(pred, gt))
    j, f = (float(np.mean(v)) if v else math.nan for v in (js, fs))
    return {"task": task.id, "sequence": task.sequence, "object": task.target_object, "J": R.clean(j),
            "F": R.clean(f), "J&F": R.clean((j + f) / 2), "frames": len(js), "per_frame_J": [round(v, 4) for v in js],
            "seconds": round(time.perf_counter() - start, 3)}


def summarise(items: list[dict]) -> tuple[dict, str]:
    """(metrics, table): per sequence (mean over its objects) and the mean over all objects."""
    sequences: dict[str, list[dict]] = {}
    for item in items:
        sequences.setdefault(item["sequence"], []).append(item)

    def means(group: list[dict]) -> dict:
        return {k: R.clean(float(np.mean([g[k] for g in group if g[k] is not None]))) if any(
            g[k] is not None for g in group) else None for k in ("J", "F", "J&F")}

    per_sequence = {s: {"objects": len(g), **means(g)} for s, g in sequences.items()}
    overall = {"objects": len(items), **(means(items) if items else {"J": None, "F": None, "J&F": None})}
    rows = [[s, v["objects"], R.pct(v["J&F"]), R.pct(v["J"]), R.pct(v["F"])] for s, v in per_sequence.items()]
    rows.append(["mean (over objects)", overall["objects"], R.pct(overall["J&F"]), R.pct(overall["J"]),
                 R.pct(overall["F"])])
    table = R.format_table(["sequence", "objects", "J&F", "J", "F"], rows, [len(rows) - 1])
    return {"per_sequence": per_sequence, "mean": overall}, table


def _tasks(args: argparse.Namespace, layout: DavisLayout) -> Iterator[Task]:
    tasks = layout.semi_supervised(args.split) if args.layout == "davis" else layout.one_shot(
        Path(args.pairs) if args.pairs else layout.root / "pairs.txt")
    if args.sequences is not None:
        keep = list(dict.fromkeys(t.sequence for t in tasks))[: args.sequences]
        tasks = [t for t in tasks if t.sequence in keep]
    if not tasks:
        raise R.EvalError(f"{layout.root}: nothing to evaluate (no sequence with an annotated object)")
    return iter(tasks)


def run(args: argparse.Namespace) -> int:
    from vision.engines.video import VideoConfig, VideoEngine

    try:
        out = R.output_folder(args.out)
        layout = DavisLayout(args.root)
        tasks = list(_tasks(args, layout))
        preset = args.preset or ("sam2" if args.layout == "davis" else "fast")
        engine = VideoEngine(R.make_config(VideoConfig, preset, R.parse_settings(args.set)))
    except R.USER_ERRORS as err:
        print(f"error: {R.message(err)}", file=sys.stderr)
        return 2
    tiny, items, interrupted = engine.tiny, [], False
    bar = R.progress(len(tasks), f"video {args.layout}", "object")
    started = time.perf_counter()
    with R.ItemLog(out / R.ITEMS) as log:
        try:
            for task in tasks:
                items.append(evaluate_task(engine, layout, task))
                log.write(items[-1])
                bar.update(1)
        except R.USER_ERRORS as err:
            bar.close()
            print(f"error: {R.message(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            interrupted = True
    bar.close()
    seconds = time.perf_counter() - started
    metrics, table = summarise(items)
    notice = R.tiny_notice(tiny)
    described = engine.config.describe()
    header = (f"video {args.layout} on {layout.root}: {len(items)} object(s), {seconds:.1f} s; preset {preset}, track "
              f"{engine.config.track}" + (f" ({engine.config.sam2_model})" if engine.config.track == "sam2" else
                                          f" (prior {described['prior']})") + f", features {described['features']}, "
              f"SAM {described['sam_model']}")
    notes = ["INTERRUPTED: the numbers cover the objects done so far"] if interrupted else []
    text = "\n".join(filter(None, [notice, header, table, *notes]))
    print(text)
    summary = {"engine": "video", "layout": args.layout, "root": str(layout.root), "split": args.split,
               "objects": len(items), "interrupted": interrupted, "tiny": tiny, "notice": notice,
               "config": R.config_record(engine.config), "seconds": round(seconds, 2), "machine": R.machine(),
               "frames_scored": "every frame but the first and the last", "boundary_tolerance": BOUNDARY_TOLERANCE,
               **metrics, "files": {"items": R.ITEMS, "plot": PLOT}}
    R.write_results(out, summary, text, args.json)
    from vision.evaluation.plots import class_bars

    names = list(metrics["per_sequence"])
    class_bars(names, [metrics["per_sequence"][n]["J&F"] for n in names], out / PLOT,
               f"video {args.layout}: J&F per sequence", mean=metrics["mean"]["J&F"], ylabel="J&F (%)", tiny=tiny)
    print(f"results: {out}")
    return 130 if interrupted else 0
