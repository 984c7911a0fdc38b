"""Resumable video runs: the video engine's frames streamed into an output folder through the batch
:class:`~vision.batch.writer.Writer` (atomic files, ``results.jsonl`` / ``errors.jsonl``, resume state),
under the folder's :class:`~vision.batch.lock.RunLock`.

The output folder of :func:`run_video`:

* ``<frame>.mask.png`` per frame (``<frame>`` zero-padded, e.g. ``00012``, so names sort in frame order)
  and, with several instances, ``<frame>.<concept>_<id>.inst.png``; one ``results.jsonl`` line per frame
  (what ran, the frame's score, instances with stable ids, timings); a frame that failed (undecodable,
  or refused by the engine) has an ``errors.jsonl`` line and the run goes on;
* ``overlay.mp4``: the frames with their masks, H.264 (yuv420p, ``+faststart``) at the video's rate
  divided by ``every``, written once every frame has its line (a resumed run completes it);
* ``video.json``: the run's summary (video, settings, per-frame scores); ``--coco-json``: COCO RLE of
  every frame's masks (:func:`~vision.batch.coco.write_coco_json`).

Resuming: a rerun with the same settings skips finished frames and continues at the next unfinished
one; the saved mask of the frame before each frame still to do is read back and carried over (the
engine's docstring says how each track uses it). Other settings (a hash of them is in every line) redo
every frame.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vision.batch.coco import coco_target, require_pycocotools, write_coco_json
from vision.batch.encoding import encode_files, record_of
from vision.batch.items import Item
from vision.batch.lock import RunLock
from vision.batch.runner import Summary, check_output_folder
from vision.batch.worker import Outcome
from vision.batch.writer import Writer, read_jsonl
from vision.engines.video.results import instance_suffix, overlay_frame
from vision.imaging import load_mask
from vision.videoio import VideoInfo, VideoWriter, probe, read_frames

OVERLAY_NAME = "overlay.mp4"
SUMMARY_NAME = "video.json"


def frame_items(info: VideoInfo, indices: list[int]) -> list[Item]:
    """One batch item per frame: id and output stem the zero-padded frame index."""
    return [Item(id=info.frame_name(i), index=i, kind="frame", stem=info.frame_name(i),
                 input_label=f"{info.path}#{i}") for i in indices]


def run_video(engine: Any, source: str | os.PathLike | VideoInfo, prompt: Any, output: str | os.PathLike, *,
              overwrite: bool = False, coco_json: str | os.PathLike | None = None, overlay: bool = True,
              settings: dict | None = None, progress: Callable | None = None,
              log: Callable[[str], None] | None = None) -> Summary:
    """Run ``engine`` (a :class:`~vision.engines.video.VideoEngine`) on ``source`` into ``output``.

    ``progress`` receives the engine's per-frame :class:`~vision.engines.contract.Progress`; ``log`` the
    run's messages (default: stderr). Raises :class:`~vision.videoio.VideoError` /
    :class:`~vision.engines.video.VideoError` for an unusable video or prompt before anything is written.
    """
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    started = time.perf_counter()
    info = source if isinstance(source, VideoInfo) else probe(source)
    for note in info.notes:
        log(f"video: {note}")
    prompt.check(info)  # a bad click or frame is refused before the output folder is made
    check_output_folder(info.path, output)
    if coco_json is not None:
        require_pycocotools()
    writer = Writer(output, info.path if info.kind == "frames" else None, settings=settings)
    if coco_json is not None:
        coco_target(writer, coco_json)
    items = frame_items(info, engine.frames_to_process(info, prompt))
    summary = Summary(total=len(items), output=str(writer.out), unit="frames")
    with RunLock(writer.out):
        complete = set() if overwrite else writer.complete_ids(items)
        todo = [item for item in items if item.id not in complete]
        summary.skipped = len(items) - len(todo)
        writer.prepare(todo)
        if summary.skipped:
            log(f"video: {summary.skipped} of {len(items)} frames already done, continuing at the next one")
        try:
            _process(engine, info, prompt, writer, todo, summary, progress)
        except KeyboardInterrupt:
            summary.interrupted = True
        summary.seconds = time.perf_counter() - started
        if not summary.interrupted:
            _finish(writer, info, items, engine, overlay, coco_json, log)
    log(summary.text())
    return summary


def _process(engine: Any, info: VideoInfo, prompt: Any, writer: Writer, todo: list[Item], summary: Summary,
             progress: Callable | None) -> None:
    by_index = {item.index: item for item in todo}
    rows = {row["id"]: row for row in read_jsonl(writer.results_path)[0]}
    clock = time.perf_counter()
    for frame in engine.track(info, prompt, todo=list(by_index), done=lambda i: saved_masks(writer, rows, info, i),
                              progress=progress):
        item = by_index[frame.index]
        seconds, clock = time.perf_counter() - clock, time.perf_counter()
        if frame.ok:
            outcome = Outcome(item.id, "ok", files=encode_files(frame), record=record_of(frame), seconds=seconds)
        else:
            outcome = Outcome(item.id, "error", error="FrameError", reason=frame.error or "", seconds=seconds)
        row = writer.commit(item, outcome)
        if row["status"] == "ok":
            summary.done += 1
        else:
            summary.failed += 1
            summary.failures.append((item.id, row.get("reason", "")))


def saved_masks(writer: Writer, rows: dict[str, dict], info: VideoInfo, index: int) -> dict[str, np.ndarray]:
    """A finished frame's masks from the output folder: concept -> bool [H, W] (its union mask when the
    frame has one instance)."""
    row = rows.get(info.frame_name(index)) or {}
    outputs = row.get("outputs") or {}
    masks: dict[str, np.ndarray] = {}
    for inst in row.get("instances") or []:
        rel = outputs.get(instance_suffix(inst["concept"], inst["id"]))
        if rel is not None:
            mask = load_mask(writer.out / rel)
            masks[inst["concept"]] = masks.get(inst["concept"], mask) | mask
    if not masks and "mask.png" in outputs:
        masks[row.get("category") or "object"] = load_mask(writer.out / outputs["mask.png"])
    return masks


def _finish(writer: Writer, info: VideoInfo, items: list[Item], engine: Any, overlay: bool,
            coco_json: str | os.PathLike | None, log: Callable[[str], None]) -> None:
    rows = {row["id"]: row for row in read_jsonl(writer.results_path)[0]}
    missing = [item.id for item in items if item.id not in rows]
    if missing:
        log(f"video: {len(missing)} frames have no result yet (first: {missing[0]}); rerun to finish them")
        return
    summary = {**engine.config.describe(), "video": str(info.path), "frames": len(items),
               "fps": info.fps / engine.config.every, "width": info.width, "height": info.height,
               "scores": [rows[item.id].get("score") for item in items], "notes": list(info.notes),
               "failed": [item.id for item in items if rows[item.id].get("status") != "ok"]}
    writer.write_file(writer.out / SUMMARY_NAME, (json.dumps(summary, indent=1) + "\n").encode("utf-8"))
    if overlay:
        path = write_overlay(writer, info, items, rows, info.fps / engine.config.every)
        log(f"video: overlay written to {path}")
    if coco_json is not None:
        log(f"video: COCO annotations written to {write_coco_json(writer, coco_json)}")


def write_overlay(writer: Writer, info: VideoInfo, items: list[Item], rows: dict[str, dict], fps: float) -> Path:
    """``overlay.mp4``: every item's frame with its saved masks (a second decoding pass, so a resumed run's
    overlay holds every frame); written to a temp file and renamed when complete."""
    target = writer.out / OVERLAY_NAME
    tmp = target.with_name(f".{target.name}{writer.tmp_suffix}")
    try:
        with VideoWriter(tmp, fps) as out:
            for frame in read_frames(info, wanted=[item.index for item in items]):
                row = rows[info.frame_name(frame.index)]
                image = frame.image if frame.ok else np.zeros((info.height, info.width, 3), np.uint8)
                masks = saved_instance_masks(writer.out, row)
                error = row.get("reason") if row.get("status") != "ok" else None
                out.write(overlay_frame(image, masks, row.get("score"), bool(row.get("tiny")), error))
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return target


def saved_instance_masks(out: Path, row: dict) -> list[tuple[int, np.ndarray]]:
    """A frame's saved instance masks as (id, bool [H, W]) from its results line (``out``: the folder)."""
    outputs = row.get("outputs") or {}
    found = []
    for inst in row.get("instances") or []:
        rel = outputs.get(instance_suffix(inst["concept"], inst["id"])) or (
            outputs.get("mask.png") if len(row["instances"]) == 1 else None)
        if rel is not None:
            found.append((int(inst["id"]), load_mask(out / rel)))
    return found
