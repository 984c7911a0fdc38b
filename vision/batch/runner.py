"""The runner: :func:`run_batch` checks the folders, claims the output folder (:class:`.lock.RunLock`),
skips complete items, runs the rest locally (or in Ray actors, :mod:`.ray_runner`) with a progress bar,
commits each item through the :class:`.writer.Writer` and returns a :class:`Summary`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from vision.batch import ray_runner
from vision.batch.coco import coco_target, require_pycocotools, write_coco_json
from vision.batch.errors import BatchError
from vision.batch.items import Item, is_within, parse_shard, select_shard
from vision.batch.lock import RunLock
from vision.batch.worker import Outcome, start_processor
from vision.batch.writer import ERRORS_NAME, Writer
from vision.wording import plural


@dataclasses.dataclass
class Summary:
    """Counts of one run. ``skipped``: already complete (or declined by the engine)."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    output: str = ""
    unit: str = "images"
    failures: list = dataclasses.field(default_factory=list)  # (id, reason), this run

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed else 0

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def _failure_lines(self, shown: int = 5) -> str:
        """The first failures, one line each; a reason of several lines (missing weights and how to get
        them) is printed whole, once, after the items it stopped."""
        by_reason: dict[str, list[str]] = {}
        for rid, reason in self.failures:
            by_reason.setdefault(reason or "", []).append(rid)
        lines, count = "", 0
        for reason, ids in by_reason.items():
            if "\n" in reason:
                named = ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")
                lines += f"\n  {named}: " + reason.replace("\n", "\n  ")
                continue
            for rid in ids:
                if count < shown:
                    lines += f"\n  {rid}: {reason}"
                count += 1
        if count > shown:
            lines += f"\n  ... and {count - shown} more"
        return lines

    def text(self) -> str:
        line = (f"batch: {self.done} done, {self.skipped} skipped, {self.failed} failed of {self.total} "
                f"in {self.seconds:.1f} s ({self.rate:.2f} {self.unit}/s); outputs in {self.output}")
        if self.failed:
            line += f"\n  failures are listed in {Path(self.output) / ERRORS_NAME}"
            line += self._failure_lines()
        if self.interrupted:
            line += "\n  interrupted: rerun the same command to resume"
        return line


def _chunks(seq: Sequence[Item], size: int) -> Iterable[list[Item]]:
    for start in range(0, len(seq), size):
        yield list(seq[start : start + size])


def _common_root(items: Sequence[Item]) -> Path | None:
    """The input folder the items were read from (``None`` for prompts or mixed origins)."""
    roots = {item.root for item in items if item.path is not None}
    return roots.pop() if len(roots) == 1 and None not in roots else None


def check_output_folder(input_path: str | os.PathLike | None, output: str | os.PathLike,
                        allow_output_inside_input: bool = False) -> None:
    """Refuse an output folder equal to, or inside, the input folder (unless allowed), or a file.

    A single input file has no such rule: only that file is read, and the writer never overwrites it."""
    out = Path(output).resolve()
    if out.exists() and not out.is_dir():
        raise BatchError(f"output {out} exists and is not a folder")
    if input_path is None:
        return
    given = Path(input_path)
    if not given.exists():
        raise BatchError(f"{given}: no such file or folder")
    if not given.is_dir():
        return
    root = given.resolve()
    if out == root:
        raise BatchError(f"the output folder {out} is the input folder; choose another one")
    if is_within(out, root) and not allow_output_inside_input:
        raise BatchError(f"the output folder {out} is inside the input folder {root}; choose another folder "
                         "or pass --allow-output-inside-input (it is then not read as input)")


def run_batch(items: Sequence[Item], output: str | os.PathLike, make_processor: Callable[[], Any], *,
              batch_size: int = 1, shard: str | Sequence[int] | None = None, settings: dict | None = None,
              input_root: str | os.PathLike | None = None, allow_output_inside_input: bool = False,
              overwrite: bool = False, progress: bool = True, coco_json: str | os.PathLike | None = None,
              ray: bool = False, ray_options: dict | None = None, fsync: bool = True,
              log: Callable[[str], None] | None = None) -> Summary:
    """Run ``make_processor()``'s processor over ``items`` into ``output``; see :mod:`vision.batch`.

    ``input_root``: the input folder (default: the items' common folder), guarded against writes and
    against holding the output folder. ``overwrite``: redo complete items too. ``ray_options``:
    ``address``, ``num_actors``, ``num_gpus`` (per actor), ``num_cpus`` (per actor), ``init``
    (extra ``ray.init`` keywords), ``env`` (environment variables for the workers). Raises
    :class:`.errors.OutputInUseError` at once when another live run covers some of the same items.
    """
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    started = time.perf_counter()
    if batch_size < 1:
        raise BatchError("--batch-size must be at least 1")
    shard_spec = parse_shard(shard)
    root = Path(input_root) if input_root is not None else _common_root(items)
    if root is not None:
        check_output_folder(root, output, allow_output_inside_input)
    if coco_json is not None:
        require_pycocotools()
    writer = Writer(output, root, settings=settings, fsync=fsync)
    if coco_json is not None:
        coco_target(writer, coco_json)  # refuse a bad --coco-json path before the run, not after
    # Never read our own outputs as inputs (an output folder inside the input folder), nor overwrite an input.
    if root is None or not is_within(root.resolve(), writer.out):
        items = [item for item in items if item.path is None or not is_within(item.path.resolve(), writer.out)]
    writer.input_files = {item.path.resolve() for item in items if item.path is not None}
    with RunLock(writer.out, shard_spec):
        summary = _run_claimed(writer, items, make_processor, shard_spec, batch_size, overwrite, progress,
                               ray, ray_options, log)
        summary.seconds = time.perf_counter() - started
        if coco_json is not None and not summary.interrupted:
            path = write_coco_json(writer, coco_json)
            log(f"batch: COCO annotations written to {path}")
    log(summary.text())
    return summary


def _run_claimed(writer: Writer, items: Sequence[Item], make_processor: Callable[[], Any],
                 shard: tuple[int, int] | None, batch_size: int, overwrite: bool, progress: bool, ray: bool,
                 ray_options: dict | None, log: Callable[[str], None]) -> Summary:
    """The run itself, once the output folder is ours: skip complete items, process and commit the rest."""
    selected = select_shard(items, shard)
    unit = "prompts" if selected and all(item.kind == "prompt" for item in selected) else (
        "images" if all(item.kind == "image" for item in selected) else "items")
    summary = Summary(total=len(selected), output=str(writer.out), unit=unit)
    complete = set() if overwrite else writer.complete_ids(selected)
    todo = [item for item in selected if item.id not in complete]
    summary.skipped = len(selected) - len(todo)
    writer.prepare(todo)
    if shard is not None:
        log(f"batch: shard {shard[0]}/{shard[1]}: {len(selected)} of {plural(len(items), unit[:-1])}")
    if summary.skipped:
        log(f"batch: {summary.skipped} of {plural(len(selected), unit[:-1])} already complete, skipping "
            f"{'it' if summary.skipped == 1 else 'them'}")
    bar = _progress(len(todo), unit, progress)

    def record(item: Item, outcome: Outcome) -> None:
        try:
            row = writer.commit(item, outcome)
        except Exception as err:  # noqa: BLE001 -- one item's files or lines that cannot be written stop no run
            row = {"status": "error", "reason": f"{type(err).__name__}: {err}"}
            log(f"batch: {item.id}: its results could not be written ({row['reason']})")
        if row["status"] == "ok":
            summary.done += 1
        elif row["status"] == "skipped":
            summary.skipped += 1
        else:
            summary.failed += 1
            summary.failures.append((item.id, row.get("reason", "")))
        bar.update(1)
        if summary.failed:
            bar.set_postfix(failed=summary.failed, refresh=False)

    try:
        if todo:
            if ray:
                ray_runner.run(todo, make_processor, record, batch_size=batch_size, options=dict(ray_options or {}))
            else:
                _run_local(todo, make_processor, record, batch_size)
    except KeyboardInterrupt:
        summary.interrupted = True
    except BatchError:
        raise
    except Exception as err:
        if ray:  # an actor that could not start, a lost node...: what was written stays, a rerun resumes
            raise BatchError(f"the Ray run failed ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); rerun to resume") from err
        raise
    finally:
        bar.close()
        with contextlib.suppress(Exception):
            writer.clean_temp_files()
    return summary


def _progress(total: int, unit: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit[:-1] if unit.endswith("s") else unit, desc="batch", disable=not enabled,
                dynamic_ncols=True, smoothing=0.1, file=sys.stderr)


def _run_local(todo: list[Item], make_processor: Callable[[], Any], record: Callable[[Item, Outcome], None],
               batch_size: int) -> None:
    worker = start_processor(make_processor)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="batch-load") as pool:
        chunks = list(_chunks(todo, batch_size))
        ahead: list[concurrent.futures.Future] = []
        # Prefetch (decode) the next two chunks while the engine works on the current one.
        for chunk in chunks[:2]:
            ahead.append(pool.submit(_preload, chunk))
        for n, chunk in enumerate(chunks):
            ahead[n].result()
            if n + 2 < len(chunks):
                ahead.append(pool.submit(_preload, chunks[n + 2]))
            for item, outcome in zip(chunk, worker.run(chunk)):
                record(item, outcome)


def _preload(chunk: list[Item]) -> None:
    for item in chunk:
        if item.kind == "image":
            with contextlib.suppress(Exception):
                item.load()


