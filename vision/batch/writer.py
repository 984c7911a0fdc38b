"""The writer: owns the output folder (safe paths, atomic files, ``results.jsonl`` / ``errors.jsonl``
lines, resume state). Both runners commit every item through one :class:`Writer` on the driver.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from vision.batch.encoding import json_default
from vision.batch.errors import BatchError
from vision.batch.items import Item, check_rel, is_within
from vision.batch.lock import LOCK_NAME, host_tag, locked, pid_alive
from vision.batch.worker import Outcome

RESULTS_NAME = "results.jsonl"
ERRORS_NAME = "errors.jsonl"
TMP_TAG = ".batchtmp"


def hash_settings(settings: dict | None) -> str | None:
    if settings is None:
        return None
    text = json.dumps(settings, sort_keys=True, default=json_default)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


SURROGATE = re.compile("[\ud800-\udfff]")
NAME_NOTE = ("the file name is not valid UTF-8: each undecodable byte 0xNN is recorded as the escape \\udcNN "
             "(Python's surrogateescape); os.fsencode(id) gives the name's bytes back")


def has_undecodable_bytes(text: str) -> bool:
    """``text`` came from a file name that is not valid UTF-8 (it holds surrogate-escaped bytes)."""
    return SURROGATE.search(text) is not None


def json_line(row: dict) -> bytes:
    """``row`` as one UTF-8 JSON line. Names that are not valid UTF-8 reach Python with each undecodable
    byte as a lone surrogate (U+DC80..U+DCFF), which UTF-8 cannot encode: those are written as JSON
    ``\\uXXXX`` escapes, which ``json.loads`` reads back to the same string (lossless), and the rest stays
    readable (``ensure_ascii=False``)."""
    text = json.dumps(row, sort_keys=False, default=json_default, ensure_ascii=False)
    return (SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n").encode("utf-8")


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """(parsed lines, number of unparsable lines: e.g. a line cut by a kill)."""
    if not path.exists():
        return [], 0
    rows, bad = [], 0
    with open(path, "rb") as handle:
        for raw in handle:
            raw = raw.strip()
            if not raw:
                continue
            try:
                row = json.loads(raw)
                if isinstance(row, dict) and isinstance(row.get("id"), str):
                    rows.append(row)
                else:
                    bad += 1
            except (json.JSONDecodeError, UnicodeDecodeError):
                bad += 1
    return rows, bad


class Writer:
    """Owns the output folder: safe paths, atomic files, results/errors lines, resume state."""

    def __init__(self, output: str | os.PathLike, input_root: Path | None = None, *, settings: dict | None = None,
                 fsync: bool = True):
        self.out = Path(output).resolve()
        self.input_root = input_root.resolve() if input_root is not None else None
        self.settings_hash = hash_settings(settings)
        self.fsync = fsync
        self.results_path = self.out / RESULTS_NAME
        self.errors_path = self.out / ERRORS_NAME
        self.lock_path = self.out / LOCK_NAME
        self.tmp_suffix = f".{host_tag()}-{os.getpid()}{TMP_TAG}"
        self.input_files: set[Path] = set()
        self.out.mkdir(parents=True, exist_ok=True)

    # -- paths
    def target(self, item: Item, suffix: str) -> Path:
        """The checked absolute path of one output; raises :class:`BatchError` if it would escape."""
        rel = check_rel(f"{item.stem}.{suffix}")
        path = self.out / rel
        parent = path.parent.resolve()
        final = parent / path.name
        if not is_within(final, self.out) or final == self.out:
            raise BatchError(f"output {rel!r} would be written outside the output folder {self.out}")
        if (self.input_root is not None and is_within(final, self.input_root)
                and not is_within(self.out, self.input_root)):
            raise BatchError(f"output {rel!r} would be written inside the input folder {self.input_root}")
        if final in self.input_files or (final.exists() and final.resolve() in self.input_files):
            raise BatchError(f"output {rel!r} would overwrite an input file")
        if final.is_symlink() or final.is_dir():
            raise BatchError(f"output {rel!r} exists as a link or folder; refusing to replace it")
        return final

    def ensure_dir(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if not is_within(folder.resolve(), self.out):
            raise BatchError(f"folder {folder} resolves outside the output folder {self.out}")

    def write_file(self, path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` atomically (temp file in the same folder + os.replace)."""
        self.ensure_dir(path.parent)
        tmp = path.with_name(f".{path.name}{self.tmp_suffix}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                if self.fsync:
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _append(self, path: Path, row: dict) -> None:
        line = json_line(row)
        with locked(self.lock_path):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            try:
                os.write(fd, line)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)

    # -- state
    def complete_ids(self, items: Sequence[Item]) -> set[str]:
        """Ids of ``items`` that already have a final line (ok/skipped) whose files all exist."""
        wanted = {item.id for item in items}
        rows, _ = read_jsonl(self.results_path)
        done: dict[str, bool] = {}
        for row in rows:
            rid = row["id"]
            if rid not in wanted:
                continue
            ok = row.get("status") in ("ok", "skipped") and row.get("settings") == self.settings_hash
            if ok:
                for rel in (row.get("outputs") or {}).values():
                    try:
                        path = self.out / check_rel(str(rel))
                    except BatchError:
                        ok = False
                        break
                    if not path.is_file():
                        ok = False
                        break
            done[rid] = ok  # the last line of an id decides
        return {rid for rid, ok in done.items() if ok}

    def prepare(self, todo: Sequence[Item]) -> None:
        """Drop stale lines of the items about to be (re)done, so no item ever has two lines, and
        remove temp files left behind by killed runs."""
        ids = {item.id for item in todo}
        with locked(self.lock_path):
            for path in (self.results_path, self.errors_path):
                rows, bad = read_jsonl(path)
                keep = [r for r in rows if r["id"] not in ids]
                if bad or len(keep) != len(rows):
                    data = b"".join(json_line(r) for r in keep)
                    self.write_file(path, data)
        self.clean_temp_files()

    def clean_temp_files(self) -> int:
        """Delete our temp files whose writer is gone (same host, dead pid, or this process)."""
        removed = 0
        host = host_tag()
        pattern = re.compile(r"\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)" + re.escape(TMP_TAG) + "$")
        for dirpath, _dirs, files in os.walk(self.out, followlinks=False):
            for name in files:
                m = pattern.search(name)
                if not m or not name.startswith("."):
                    continue
                pid = int(m.group("pid"))
                if m.group("host") == host and (pid == os.getpid() or not pid_alive(pid)):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(dirpath, name))
                        removed += 1
        return removed

    # -- items
    def commit(self, item: Item, outcome: Outcome) -> dict:
        """Write an item's files, then its results line (and errors line). Returns the line."""
        row: dict = {"id": item.id, "status": outcome.status, "input": item.input_label}
        if has_undecodable_bytes(item.id):
            row["name_note"] = NAME_NOTE
        if outcome.status == "ok":
            try:
                targets = {suffix: self.target(item, suffix) for suffix in outcome.files}
                for suffix, data in outcome.files.items():
                    self.write_file(targets[suffix], data)
                row["outputs"] = {s: p.relative_to(self.out).as_posix() for s, p in targets.items()}
            except (BatchError, OSError) as err:
                outcome = Outcome(item.id, "error", error=type(err).__name__, reason=str(err), seconds=outcome.seconds)
                row["status"] = "error"
        if outcome.status != "ok":
            row["outputs"] = {}
            if outcome.error:
                row["error"] = outcome.error
            row["reason"] = outcome.reason
        row["seconds"] = round(outcome.seconds, 4)
        row["settings"] = self.settings_hash
        if outcome.status == "ok":
            row.update(outcome.record)
        if outcome.status == "error":  # errors.jsonl first: the results line is always the last write
            line = {"id": item.id, "input": item.input_label, "error": outcome.error, "reason": outcome.reason}
            if outcome.traceback:
                line["traceback"] = outcome.traceback
            self._append(self.errors_path, line)
        self._append(self.results_path, row)
        return row

