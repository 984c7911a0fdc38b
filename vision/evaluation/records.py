"""What every evaluation harness shares: its output folder, the per-item JSONL, the summary table and
JSON, engine settings from the command line, the progress bar and the tiny-mode banner.

Every ``python -m vision eval ENGINE`` run writes into its ``--out`` folder:

* ``items.jsonl``: one JSON object per evaluated item (episode, image, frame), written and flushed as
  soon as the item is done, so an interrupted run keeps everything it measured;
* ``summary.json`` (and a copy at ``--json FILE``): settings, engine mode, machine, metrics;
* ``table.txt``: the table printed at the end; and the harness's plot (PNG) beside it.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vision.weights import WeightsError

REPO_ROOT = Path(__file__).resolve().parents[2]
ITEMS = "items.jsonl"
SUMMARY = "summary.json"
TABLE = "table.txt"


class EvalError(ValueError):
    """An evaluation input or setting that cannot be used; the message says which and why."""


# What a harness reports as ``error: ...`` (exit code 2) instead of a traceback: bad inputs and settings
# (every engine's error is a ValueError), an unknown hub model name, weights that are missing or damaged.
USER_ERRORS = (ValueError, KeyError, WeightsError)


def message(err: BaseException) -> str:
    """The user-facing text of one of :data:`USER_ERRORS` (a KeyError's repr quotes are dropped)."""
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


__all__ = ["EvalError", "ItemLog", "format_table", "pct", "clean", "parse_settings", "make_config", "config_record",
           "USER_ERRORS", "message", "write_results", "output_folder", "progress", "bench_module", "machine",
           "tiny_notice", "ITEMS", "SUMMARY", "TABLE"]


class ItemLog:
    """Per-item JSONL: ``log.write(record)`` appends one line and flushes it (nothing is lost on a crash)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")
        self.count = 0

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, default=_jsonable) + "\n")
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ItemLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def clean(value: Any, digits: int = 6) -> float | None:
    """A float for JSON: rounded, ``None`` where undefined (NaN / inf / None)."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), digits)


def pct(value: float | None, width: int = 6) -> str:
    """A fraction as a percentage with two decimals (``n/a`` where undefined)."""
    if value is None or not math.isfinite(value):
        return "n/a".rjust(width)
    return f"{100 * value:{width}.2f}"


def format_table(header: Sequence[str], rows: Iterable[Sequence[Any]], rule_before: Sequence[int] = ()) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned; a rule under the header
    and before each row index in ``rule_before`` (e.g. the mean row)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [line(cells[0]), rule]
    for i, row in enumerate(cells[1:]):
        if i in rule_before:
            out.append(rule)
        out.append(line(row))
    return "\n".join(out)


def parse_settings(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` (``--set``) -> ``{key: value}``; values are Python literals where they parse
    (``0.1``, ``True``, ``(0.3, 0.2, 0.1)``, ``None``), else strings."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise EvalError(f"--set takes KEY=VALUE (a config field and its value), got {pair!r}")
        try:
            out[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            out[key] = text.strip()
    return out


def make_config(cls: type, preset: str | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """An engine config: ``cls.from_preset(preset)`` (or ``cls()``) with ``overrides`` replaced in.

    The engine validates the values itself; this only turns a missing preset mechanism or an unknown
    field into a message that names it (e.g. an option that another version of the engine has).
    """
    if preset:
        from_preset = getattr(cls, "from_preset", None)
        if from_preset is None:
            raise EvalError(f"{cls.__name__} has no named presets in this version (asked for --preset {preset})")
        config = from_preset(preset)
    else:
        config = cls()
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise EvalError(f"{cls.__name__} has no setting {', '.join(map(repr, unknown))} in this version; "
                        f"its settings are: {', '.join(sorted(fields))}")
    return dataclasses.replace(config, **overrides)


def config_record(config: Any) -> dict:
    """The config's fields (JSON-able) plus what says which variant ran: its method, preset, mode
    (reference or product), feature source, when it has them."""
    record = {"fields": json.loads(json.dumps(dataclasses.asdict(config), default=_jsonable))}
    for name in ("method", "preset", "mode", "reference", "feature_source"):
        value = getattr(config, name, None)
        if value is not None and not callable(value):
            record[name] = value
    return record


def write_results(out: Path, summary: dict, table: str, json_path: str | None = None) -> None:
    """``summary.json`` and ``table.txt`` in ``out`` (and the summary at ``json_path`` too)."""
    text = json.dumps(summary, indent=1, default=_jsonable) + "\n"
    (out / SUMMARY).write_text(text, encoding="utf-8")
    (out / TABLE).write_text(table + "\n", encoding="utf-8")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text, encoding="utf-8")


def progress(total: int, desc: str, unit: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)


def bench_module(name: str) -> Any:
    """``bench.<name>`` from the repository's ``bench/`` folder (shared helpers: MAC counting, machine)."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(f"bench.{name}")


def machine() -> dict:
    """The machine and library versions (the benchmarks' :func:`bench.common.machine`)."""
    return bench_module("common").machine()


def tiny_notice(tiny: bool) -> str | None:
    from vision.tiny import TINY_NOTICE

    return TINY_NOTICE if tiny else None


def output_folder(path: str | Path) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out
