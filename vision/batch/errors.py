"""The errors of batch mode (every module of :mod:`vision.batch` raises them)."""

from __future__ import annotations


class BatchError(ValueError):
    """Unusable batch arguments (bad folders, bad shard spec...); the message says why."""


class EngineStartError(BatchError):
    """``make_processor()`` failed (missing weights, bad options...): nothing can be processed."""


class Skip(Exception):
    """Raised by a processor to decline an item: it is recorded with status ``"skipped"`` and the
    message as ``reason``, counts as complete, and is not retried on a rerun."""


class OutputInUseError(BatchError):
    """Another live run holds the output folder (or an overlapping shard of it); see :mod:`.lock`."""
