"""The worker: one processor (an engine made by ``make_processor()``) applied to items, each item's
result or exception turned into a picklable :class:`Outcome` (encoded files + record) for the writer.

Shared by the local runner (:mod:`.runner`) and the Ray actors (:mod:`.ray_runner`).
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable
from typing import Any

from vision.batch.encoding import encode_files, record_of
from vision.batch.errors import BatchError, EngineStartError, Skip
from vision.batch.items import Item


@dataclasses.dataclass
class Outcome:
    """What a worker produced for one item (picklable; the writer turns it into files + a line)."""

    id: str
    status: str  # ok / skipped / error
    files: dict = dataclasses.field(default_factory=dict)  # suffix -> bytes
    record: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""
    reason: str = ""
    traceback: str = ""  # for unexpected engine exceptions (errors.jsonl only)


def _error_outcome(item: Item, err: BaseException, seconds: float = 0.0) -> Outcome:
    from vision.imaging import ImageError

    reason = str(err) or type(err).__name__
    if isinstance(err, Skip):
        return Outcome(item.id, "skipped", reason=reason, seconds=seconds)
    trace = ""
    if not isinstance(err, (ImageError, OSError, BatchError)):  # likely an engine bug: keep where it happened
        trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))[-4000:]
    return Outcome(item.id, "error", error=type(err).__name__, reason=reason, seconds=seconds, traceback=trace)


def _finish(item: Item, result: Any, seconds: float) -> Outcome:
    try:
        if isinstance(result, BaseException):
            raise result
        return Outcome(item.id, "ok", files=encode_files(result), record=record_of(result), seconds=seconds)
    except Exception as err:
        return _error_outcome(item, err, seconds)


class Worker:
    """Wraps a processor: loads items, calls ``process``/``process_batch``, encodes outputs."""

    def __init__(self, processor: Any):
        self.processor = processor
        self.process = processor.process if hasattr(processor, "process") else processor
        if not callable(self.process):
            raise BatchError("make_processor() must return a callable or an object with process(item)")
        self.process_batch = getattr(processor, "process_batch", None)

    def run(self, items: list[Item]) -> list[Outcome]:
        if self.process_batch is not None and len(items) > 1:
            return self._run_batch(items)
        return [self._run_one(item) for item in items]

    def _run_one(self, item: Item) -> Outcome:
        start = time.perf_counter()
        try:
            result = self.process(item)
        except Exception as err:
            return _error_outcome(item, err, time.perf_counter() - start)
        finally:
            item.unload()
        return _finish(item, result, time.perf_counter() - start)

    def _run_batch(self, items: list[Item]) -> list[Outcome]:
        outcomes: dict[str, Outcome] = {}
        good = []
        for item in items:  # bad files never reach the engine's batch
            try:
                item.load()
                good.append(item)
            except Exception as err:
                outcomes[item.id] = _error_outcome(item, err)
        if good:
            start = time.perf_counter()
            try:
                results = list(self.process_batch(good))
                if len(results) != len(good):
                    raise RuntimeError(f"process_batch returned {len(results)} results for {len(good)} items")
            except Exception:
                results = None
            seconds = (time.perf_counter() - start) / len(good)
            for i, item in enumerate(good):
                if results is None:  # the batch failed: isolate the culprit one by one
                    outcomes[item.id] = self._run_one(item)
                else:
                    outcomes[item.id] = _finish(item, results[i], seconds)
                item.unload()
        return [outcomes[item.id] for item in items]


def start_processor(make_processor: Callable[[], Any]) -> Worker:
    """Call ``make_processor()`` once (models, prompt features) and wrap it; a failure becomes an
    :class:`EngineStartError` that names the cause."""
    try:
        processor = make_processor()
    except BatchError:
        raise
    except Exception as err:
        raise EngineStartError(f"could not start the engine: {type(err).__name__}: {err}") from err
    return Worker(processor)

