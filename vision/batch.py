"""Batch mode: run one engine over a folder of images (or a file of prompts), resumably and safely.

Every engine CLI subcommand (``ipseg``, ``trident``, ``generate``, ``story``) uses this module, so a
folder run behaves the same everywhere:

* **Items.** :func:`image_items` walks an input file or folder (``recursive``, extension filter;
  symlinked files are used only when they point inside the input folder, symlinked folders are never
  entered); :func:`prompt_items` reads one prompt per line of a text file (blank lines and ``#``
  comments skipped; a line that is a JSON object gives ``item.params``, its ``"prompt"`` the text);
  :func:`file_items` walks any other kind of file (e.g. ``.txt`` stories). Each :class:`Item` has a
  stable relative ``id`` (``"sub/cat.jpg"``, ``"00003-a-red-fox"``) and a stable ``index`` (its place
  in the sorted list of all items); outputs mirror the input tree as ``<OUT>/<stem>.<suffix>``.
* **Engine contract.** ``make_processor()`` is called once per worker (once locally, once per Ray
  actor) and loads the models and computes prompt/text features once; it returns either a callable
  ``process(item) -> result`` or an object with ``process(item)`` and, optionally,
  ``process_batch(items) -> list[result | Exception]`` (used with ``--batch-size`` > 1). Inside,
  ``item.image()`` gives the RGB uint8 array (via :func:`vision.imaging.load_image`, prefetched in a
  thread; bad files raise :class:`vision.imaging.ImageError`), ``item.text`` the prompt. A result
  has ``to_files() -> {suffix: PIL.Image | ndarray | bytes | str | dict}`` (suffix like
  ``"mask.png"``, ``"overlay.jpg"``; images are encoded by the suffix's extension) and
  ``to_record() -> dict`` (JSON-able scores etc.); :class:`BatchResult` is a ready-made one. Raise
  :class:`Skip` to decline an item (status ``"skipped"``); any other exception is recorded as an
  error for that item and the run goes on. If ``make_processor()`` itself fails (missing weights...)
  nothing can run: :class:`EngineStartError` (the CLI helper prints it and exits with 2).
* **Outputs.** Each file is written atomically (temp file in the same folder, then ``os.replace``);
  the item's ``results.jsonl`` line is appended last, so an item is complete exactly when it has a
  line whose files all exist. Lines: ``{"id", "status": "ok"|"skipped"|"error", "input",
  "outputs": {suffix: path relative to OUT}, "seconds", ...to_record()}``. Failures also go to
  ``errors.jsonl`` (``{"id", "input", "error", "reason"}``, plus ``"traceback"`` for unexpected
  engine exceptions).
* **Resume.** Rerunning the same command skips complete items (summary: "skipped"), retries failed
  or unfinished ones, deletes temp files left by a killed run, and never leaves two lines for one
  item (stale lines of re-processed items are dropped first, atomically). ``settings`` (a dict of the
  options that change outputs) is hashed into each line: rerunning with other settings redoes items.
* **Safety.** Never writes outside the output folder (every target is resolved and checked, so
  ``..`` ids and symlinks in the output tree are refused), opens inputs read-only, refuses an output
  folder inside the input folder unless ``allow_output_inside_input=True`` (then that folder is not
  read as input), and never writes into the input folder otherwise.
* **Scale-out.** ``shard=(i, n)`` keeps the items whose stable id hash is ``i`` mod ``n`` (``--shard
  I/N``; shards may run at once on one output folder). ``ray=True`` runs the engine in Ray Data
  actors (one ``make_processor()`` per actor; ``ray`` is an optional dependency) and writes the
  same files through the same writer. ``coco_json=PATH`` writes COCO RLE annotations of the mask
  outputs (``pycocotools``).
* A tqdm progress bar (images/s, ETA) and a summary (done, skipped, failed); exit code 1 when any
  item failed, 130 when interrupted, 2 for unusable arguments or an engine that cannot start.
  ``--device`` is the global one of ``python -m vision`` (added here only to parsers without it).
  ``Item.stem`` keeps the extension (``cat.jpg.mask.png``) when two inputs share a stem.

Usage from an engine's CLI module (``vision/commands/<engine>.py``)::

    import functools
    from vision import batch

    def add_arguments(parser):
        parser.add_argument("--classes", required=True)
        batch.add_batch_arguments(parser)          # --input --output --recursive --ext --batch-size
                                                   # --shard --coco-json --ray ... (--device if absent)

    def make_processor(classes):                   # top level, so Ray can pickle it
        engine = TridentEngine(classes)            # models and text features: once per worker
        return lambda item: engine.segment(item.image())   # a result with to_files()/to_record()

    def run(args):
        return batch.run_from_args(args, functools.partial(make_processor, args.classes.split(",")),
                                   settings={"classes": args.classes})

or from Python::

    summary = batch.run_batch(batch.image_items("photos", recursive=True), "out", make_processor)
    print(summary.done, summary.skipped, summary.failed, summary.exit_code)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS", "Item", "BatchResult", "Skip", "BatchError", "EngineStartError", "Summary",
    "image_items", "file_items", "prompt_items", "select_shard", "parse_shard",
    "run_batch", "add_batch_arguments", "run_from_args", "encode_files",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
RESULTS_NAME = "results.jsonl"
ERRORS_NAME = "errors.jsonl"
TMP_TAG = ".batchtmp"
RESERVED_KEYS = ("id", "status", "input", "outputs", "seconds", "settings", "error", "reason")
_SUFFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class BatchError(ValueError):
    """Unusable batch arguments (bad folders, bad shard spec...); the message says why."""


class EngineStartError(BatchError):
    """``make_processor()`` failed (missing weights, bad options...): nothing can be processed."""


class Skip(Exception):
    """Raised by a processor to decline an item: it is recorded with status ``"skipped"`` and the
    message as ``reason``, counts as complete, and is not retried on a rerun."""


# ----------------------------------------------------------------------------------------------- items


@dataclasses.dataclass(eq=False)
class Item:
    """One unit of work. ``id`` is the stable relative id (posix path for files); ``index`` its place
    in the sorted list of all items of the input (stable across shards and runners, e.g. for seeds);
    ``path`` the input file (``None`` for prompts); ``text`` the prompt; ``params`` extra per-item
    parameters (from a JSON prompt line)."""

    id: str
    index: int
    path: Path | None = None
    text: str | None = None
    params: dict = dataclasses.field(default_factory=dict)
    kind: str = "image"  # "image", "prompt" or "file"
    stem: str = ""  # output base (relative, posix, no extension); set by the item builders
    input_label: str = ""  # the input as shown in results ("photos/sub/cat.jpg")
    root: Path | None = dataclasses.field(default=None, repr=False)  # the input folder it was found in
    _data: Any = dataclasses.field(default=None, repr=False)
    _error: BaseException | None = dataclasses.field(default=None, repr=False)
    _loaded: bool = dataclasses.field(default=False, repr=False)

    def __post_init__(self) -> None:
        if not self.stem:
            self.stem = _strip_ext(self.id) if self.kind != "prompt" else self.id
        if not self.input_label:
            self.input_label = str(self.path) if self.path is not None else (self.text or self.id)

    def image(self) -> np.ndarray:
        """The input image as RGB uint8 [H, W, 3] (raises :class:`vision.imaging.ImageError`)."""
        if self.kind != "image":
            raise TypeError(f"item {self.id!r} is a {self.kind}, not an image")
        return self.load()

    def load(self) -> Any:
        """The item's data: image array, prompt text, or (other files) the file's text. Cached."""
        if not self._loaded:
            try:
                self._data = self._read()
            except Exception as err:  # kept and re-raised for every caller
                self._error = err
            self._loaded = True
        if self._error is not None:
            raise self._error
        return self._data

    def read_bytes(self) -> bytes:
        if self.path is None:
            raise TypeError(f"item {self.id!r} has no input file")
        return self.path.read_bytes()

    def _read(self) -> Any:
        if self.kind == "image":
            from vision.imaging import load_image

            return load_image(self.path)
        if self.kind == "prompt":
            return self.text
        return self.path.read_text(encoding="utf-8")

    def unload(self) -> None:
        self._data, self._error, self._loaded = None, None, False

    def to_row(self) -> dict:
        """A plain, picklable description (for Ray); :meth:`from_row` rebuilds the item."""
        return {"id": self.id, "index": self.index, "path": None if self.path is None else str(self.path),
                "text": self.text, "params": json.dumps(self.params, sort_keys=True), "kind": self.kind,
                "stem": self.stem, "input_label": self.input_label}

    @classmethod
    def from_row(cls, row: dict) -> "Item":
        return cls(id=str(row["id"]), index=int(row["index"]), path=None if row["path"] in (None, "") else Path(row["path"]),
                   text=row["text"], params=json.loads(row["params"] or "{}"), kind=str(row["kind"]),
                   stem=str(row["stem"]), input_label=str(row["input_label"]))


def _strip_ext(rel: str) -> str:
    head, _, name = rel.rpartition("/")
    base = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}/{base}" if head else base


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _check_rel(rel: str) -> str:
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel or "\x00" in rel:
        raise BatchError(f"unsafe relative path {rel!r}")
    return rel


def _normalise_exts(extensions: Iterable[str] | str | None, default: Sequence[str]) -> tuple[str, ...]:
    if extensions is None:
        return tuple(default)
    if isinstance(extensions, str):
        extensions = extensions.split(",")
    extensions = list(extensions)
    if not extensions:
        return ()  # every file
    exts = tuple("." + e.strip().lower().lstrip(".") for e in extensions if e.strip())
    if not exts:
        raise BatchError("the extension filter is empty")
    return exts


def _walk(root: Path, recursive: bool, exts: tuple[str, ...], exclude: Path | None) -> list[tuple[str, Path]]:
    """(relative posix id, path) of matching files under ``root`` (resolved), sorted by id."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            sub = here / d
            if d.startswith(".") or sub.is_symlink():  # hidden folders (and our temp names), never follow links
                continue
            if exclude is not None and sub.resolve() == exclude:
                continue
            keep.append(d)
        dirnames[:] = keep if recursive else []
        for name in filenames:
            if name.startswith(".") or (exts and not name.lower().endswith(exts)):
                continue
            path = here / name
            if path.is_symlink():
                target = path.resolve()
                if not _is_within(target, root) or (exclude is not None and _is_within(target, exclude)):
                    continue  # a link out of the input folder (or into the output folder) is not followed
                if not target.is_file():
                    continue
            elif not path.is_file():
                continue
            found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda t: t[0])
    return found


def file_items(input_path: str | os.PathLike, *, recursive: bool = False, extensions: Iterable[str] | str | None = None,
               kind: str = "file", exclude: str | os.PathLike | None = None) -> list[Item]:
    """Items for the files under ``input_path`` (a file, or a folder: ``recursive`` to descend).

    ``extensions`` (".jpg,.png" or a list; case-insensitive; an empty list: every file) filters
    folder contents (default: image extensions); a single file given directly is always used. ``exclude`` is a folder not to read
    (the output folder when it lies inside the input folder). Hidden files and folders are ignored.
    """
    exts = _normalise_exts(extensions, IMAGE_EXTENSIONS)
    given = Path(input_path)
    if not given.exists():
        raise BatchError(f"{given}: no such file or folder")
    if given.is_file():
        root, entries = given.resolve().parent, [(given.name, given)]
        label_root = given.parent
    else:
        root = given.resolve()
        excl = Path(exclude).resolve() if exclude is not None else None
        entries = _walk(root, recursive, exts, excl)
        label_root = given
    stems: dict[str, int] = {}
    for rel, _ in entries:
        stems[_strip_ext(rel)] = stems.get(_strip_ext(rel), 0) + 1
    items = []
    for index, (rel, path) in enumerate(entries):
        _check_rel(rel)
        stem = _strip_ext(rel)
        if stems[stem] > 1:  # cat.jpg and cat.png in one folder: keep the extension in both stems
            stem = rel
        items.append(Item(id=rel, index=index, path=path if path.is_absolute() else root / rel, kind=kind,
                          stem=stem, input_label=str(label_root / rel), root=root))
    return items


def image_items(input_path: str | os.PathLike, *, recursive: bool = False,
                extensions: Iterable[str] | str | None = None, exclude: str | os.PathLike | None = None) -> list[Item]:
    """Items for the image files under ``input_path`` (see :func:`file_items`)."""
    return file_items(input_path, recursive=recursive, extensions=extensions, kind="image", exclude=exclude)


def _slug(text: str, width: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:width].strip("-")
    return slug or "prompt"


def prompt_items(prompts: str | os.PathLike | Sequence[str]) -> list[Item]:
    """Items for prompts: a text file (one prompt per line; blank and ``#`` lines skipped; a JSON
    object line gives ``params`` with the text in ``"prompt"``) or a list of strings. Ids (and output
    stems) are ``"<5-digit line number>-<slug of the prompt>"``."""
    if isinstance(prompts, (str, os.PathLike)) and not (isinstance(prompts, str) and "\n" in prompts):
        path = Path(prompts)
        if not path.is_file():
            raise BatchError(f"{path}: no such prompts file")
        lines = path.read_text(encoding="utf-8").splitlines()
    else:
        lines = prompts.splitlines() if isinstance(prompts, str) else list(prompts)
    items = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        params: dict = {}
        if text.startswith("{"):
            try:
                params = json.loads(text)
            except json.JSONDecodeError as err:
                raise BatchError(f"prompts line {number}: not valid JSON ({err})") from None
            if not isinstance(params, dict) or not isinstance(params.get("prompt"), str):
                raise BatchError(f"prompts line {number}: a JSON line needs a \"prompt\" string")
            text = params["prompt"]
        rid = f"{number:05d}-{_slug(text)}"
        items.append(Item(id=rid, index=len(items), text=text, params=params, kind="prompt", stem=rid, input_label=text))
    return items


def parse_shard(spec: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"I/N"`` (or ``(I, N)``) -> (I, N) with 0 <= I < N; ``None`` -> ``None``."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
        if not m:
            raise BatchError(f"--shard wants I/N (e.g. 0/4), got {spec!r}")
        i, n = int(m.group(1)), int(m.group(2))
    else:
        i, n = (int(v) for v in spec)
    if n < 1 or not 0 <= i < n:
        raise BatchError(f"--shard {i}/{n}: need 0 <= I < N")
    return i, n


def shard_of(item_id: str, n: int) -> int:
    """The shard (0..n-1) of an item: a stable hash of its id (the same on every machine and run)."""
    return int.from_bytes(hashlib.sha1(item_id.encode("utf-8")).digest()[:8], "big") % n


def select_shard(items: Sequence[Item], shard: str | Sequence[int] | None) -> list[Item]:
    """The items of shard ``I/N``; the N shards together hold every item exactly once."""
    spec = parse_shard(shard)
    if spec is None:
        return list(items)
    i, n = spec
    return [item for item in items if shard_of(item.id, n) == i]


# --------------------------------------------------------------------------------------------- results


@dataclasses.dataclass
class BatchResult:
    """A ready-made result: ``files`` {suffix: image/array/bytes/str/dict}, ``record`` {key: JSON}."""

    files: dict = dataclasses.field(default_factory=dict)
    record: dict = dataclasses.field(default_factory=dict)

    def to_files(self) -> dict:
        return dict(self.files)

    def to_record(self) -> dict:
        return dict(self.record)


def _pil_format(suffix: str) -> str | None:
    ext = "." + suffix.rsplit(".", 1)[-1].lower()
    return Image.registered_extensions().get(ext)


def _encode_one(suffix: str, value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (dict, list)) and not isinstance(value, Image.Image):
        return (json.dumps(value, indent=1, sort_keys=True, default=_json_default) + "\n").encode("utf-8")
    if isinstance(value, np.ndarray):
        arr = value.astype(np.uint8) * 255 if value.dtype == bool else value
        value = Image.fromarray(arr)
    if isinstance(value, Image.Image):
        fmt = _pil_format(suffix)
        if fmt is None:
            raise ValueError(f"output suffix {suffix!r}: unknown image extension")
        image = value
        options: dict = {}
        if fmt == "JPEG":
            if image.mode not in ("RGB", "L"):
                image = image.convert("RGB")
            options = {"quality": 95}
        elif fmt == "PNG":
            options = {"compress_level": 6}
        buf = io.BytesIO()
        image.save(buf, format=fmt, **options)
        return buf.getvalue()
    raise TypeError(f"output {suffix!r}: cannot write a {type(value).__name__}")


def encode_files(result: Any) -> dict[str, bytes]:
    """A result's ``to_files()`` encoded to bytes by suffix (the same bytes in every runner)."""
    files = result.to_files() if hasattr(result, "to_files") else {}
    out = {}
    for suffix, value in files.items():
        if not isinstance(suffix, str) or not _SUFFIX_RE.match(suffix) or ".." in suffix:
            raise ValueError(f"unsafe output suffix {suffix!r} (letters, digits, '_', '-', '.' only)")
        out[suffix] = _encode_one(suffix, value)
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # torch scalars
        try:
            return value.item()
        except Exception:
            pass
    return repr(value)


def _record_of(result: Any) -> dict:
    record = result.to_record() if hasattr(result, "to_record") else {}
    record = json.loads(json.dumps(dict(record or {}), default=_json_default))  # JSON-able, plain
    return {(f"engine_{k}" if k in RESERVED_KEYS else k): v for k, v in record.items()}


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
        return Outcome(item.id, "ok", files=encode_files(result), record=_record_of(result), seconds=seconds)
    except Exception as err:
        return _error_outcome(item, err, seconds)


class _Worker:
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


# ---------------------------------------------------------------------------------------------- writer


def _settings_hash(settings: dict | None) -> str | None:
    if settings is None:
        return None
    text = json.dumps(settings, sort_keys=True, default=_json_default)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


@contextlib.contextmanager
def _locked(lock_path: Path):
    """An exclusive lock on the output folder's bookkeeping files (shards may share one folder)."""
    try:
        import fcntl
    except ImportError:  # Windows: one process per output folder
        yield
        return
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_jsonl(path: Path) -> tuple[list[dict], int]:
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


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname())[:32] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class Writer:
    """Owns the output folder: safe paths, atomic files, results/errors lines, resume state."""

    def __init__(self, output: str | os.PathLike, input_root: Path | None = None, *, settings: dict | None = None,
                 fsync: bool = True):
        self.out = Path(output).resolve()
        self.input_root = input_root.resolve() if input_root is not None else None
        self.settings_hash = _settings_hash(settings)
        self.fsync = fsync
        self.results_path = self.out / RESULTS_NAME
        self.errors_path = self.out / ERRORS_NAME
        self.lock_path = self.out / ".batch.lock"
        self.tmp_suffix = f".{_host_tag()}-{os.getpid()}{TMP_TAG}"
        self.input_files: set[Path] = set()
        self.out.mkdir(parents=True, exist_ok=True)

    # -- paths
    def target(self, item: Item, suffix: str) -> Path:
        """The checked absolute path of one output; raises :class:`BatchError` if it would escape."""
        rel = _check_rel(f"{item.stem}.{suffix}")
        path = self.out / rel
        parent = path.parent.resolve()
        final = parent / path.name
        if not _is_within(final, self.out) or final == self.out:
            raise BatchError(f"output {rel!r} would be written outside the output folder {self.out}")
        if self.input_root is not None and _is_within(final, self.input_root) and not _is_within(self.out, self.input_root):
            raise BatchError(f"output {rel!r} would be written inside the input folder {self.input_root}")
        if final in self.input_files or (final.exists() and final.resolve() in self.input_files):
            raise BatchError(f"output {rel!r} would overwrite an input file")
        if final.is_symlink() or final.is_dir():
            raise BatchError(f"output {rel!r} exists as a link or folder; refusing to replace it")
        return final

    def _ensure_dir(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if not _is_within(folder.resolve(), self.out):
            raise BatchError(f"folder {folder} resolves outside the output folder {self.out}")

    def write_file(self, path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` atomically (temp file in the same folder + os.replace)."""
        self._ensure_dir(path.parent)
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
        line = (json.dumps(row, sort_keys=False, default=_json_default, ensure_ascii=False) + "\n").encode("utf-8")
        with _locked(self.lock_path):
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
        rows, _ = _read_jsonl(self.results_path)
        done: dict[str, bool] = {}
        for row in rows:
            rid = row["id"]
            if rid not in wanted:
                continue
            ok = row.get("status") in ("ok", "skipped") and row.get("settings") == self.settings_hash
            if ok:
                for rel in (row.get("outputs") or {}).values():
                    try:
                        path = self.out / _check_rel(str(rel))
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
        with _locked(self.lock_path):
            for path in (self.results_path, self.errors_path):
                rows, bad = _read_jsonl(path)
                keep = [r for r in rows if r["id"] not in ids]
                if bad or len(keep) != len(rows):
                    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep).encode("utf-8")
                    self.write_file(path, data)
        self.clean_temp_files()

    def clean_temp_files(self) -> int:
        """Delete our temp files whose writer is gone (same host, dead pid, or this process)."""
        removed = 0
        host = _host_tag()
        pattern = re.compile(r"\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)" + re.escape(TMP_TAG) + "$")
        for dirpath, _dirs, files in os.walk(self.out, followlinks=False):
            for name in files:
                m = pattern.search(name)
                if not m or not name.startswith("."):
                    continue
                pid = int(m.group("pid"))
                if m.group("host") == host and (pid == os.getpid() or not _pid_alive(pid)):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(dirpath, name))
                        removed += 1
        return removed

    # -- items
    def commit(self, item: Item, outcome: Outcome) -> dict:
        """Write an item's files, then its results line (and errors line). Returns the line."""
        row: dict = {"id": item.id, "status": outcome.status, "input": item.input_label}
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


# ---------------------------------------------------------------------------------------------- runner


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

    def text(self) -> str:
        line = (f"batch: {self.done} done, {self.skipped} skipped, {self.failed} failed of {self.total} "
                f"in {self.seconds:.1f} s ({self.rate:.2f} {self.unit}/s); outputs in {self.output}")
        if self.failed:
            line += f"\n  failures are listed in {Path(self.output) / ERRORS_NAME}"
            for rid, reason in self.failures[:5]:
                line += f"\n  {rid}: {reason.splitlines()[0] if reason else ''}"
            if len(self.failures) > 5:
                line += f"\n  ... and {len(self.failures) - 5} more"
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
    """Refuse an output folder equal to, or inside, the input folder (unless allowed), or a file."""
    out = Path(output).resolve()
    if out.exists() and not out.is_dir():
        raise BatchError(f"output {out} exists and is not a folder")
    if input_path is None:
        return
    given = Path(input_path)
    if not given.exists():
        raise BatchError(f"{given}: no such file or folder")
    root = given.resolve() if given.is_dir() else given.resolve().parent
    if out == root:
        raise BatchError(f"the output folder {out} is the input folder; choose another one")
    if _is_within(out, root) and not allow_output_inside_input:
        raise BatchError(f"the output folder {out} is inside the input folder {root}; choose another folder "
                         "or pass --allow-output-inside-input (it is then not read as input)")


def run_batch(items: Sequence[Item], output: str | os.PathLike, make_processor: Callable[[], Any], *,
              batch_size: int = 1, shard: str | Sequence[int] | None = None, settings: dict | None = None,
              input_root: str | os.PathLike | None = None, allow_output_inside_input: bool = False,
              overwrite: bool = False, progress: bool = True, coco_json: str | os.PathLike | None = None,
              ray: bool = False, ray_options: dict | None = None, fsync: bool = True,
              log: Callable[[str], None] | None = None) -> Summary:
    """Run ``make_processor()``'s processor over ``items`` into ``output``; see the module docstring.

    ``input_root``: the input folder (default: the items' common folder), guarded against writes and
    against holding the output folder. ``overwrite``: redo complete items too. ``ray_options``:
    ``address``, ``num_actors``, ``num_gpus`` (per actor), ``num_cpus`` (per actor), ``init``
    (extra ``ray.init`` keywords), ``env`` (environment variables for the workers).
    """
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    started = time.perf_counter()
    if batch_size < 1:
        raise BatchError("--batch-size must be at least 1")
    root = Path(input_root) if input_root is not None else _common_root(items)
    if root is not None:
        check_output_folder(root, output, allow_output_inside_input)
    if coco_json is not None:
        _require_pycocotools()
    writer = Writer(output, root, settings=settings, fsync=fsync)
    if coco_json is not None:
        _coco_target(writer, coco_json)  # refuse a bad --coco-json path before the run, not after
    # Never read our own outputs as inputs (an output folder inside the input folder), nor overwrite an input.
    if root is None or not _is_within(root.resolve(), writer.out):
        items = [item for item in items if item.path is None or not _is_within(item.path.resolve(), writer.out)]
    writer.input_files = {item.path.resolve() for item in items if item.path is not None}
    selected = select_shard(items, shard)
    unit = "prompts" if selected and all(item.kind == "prompt" for item in selected) else (
        "images" if all(item.kind == "image" for item in selected) else "items")
    summary = Summary(total=len(selected), output=str(writer.out), unit=unit)
    complete = set() if overwrite else writer.complete_ids(selected)
    todo = [item for item in selected if item.id not in complete]
    summary.skipped = len(selected) - len(todo)
    writer.prepare(todo)
    if shard is not None:
        i, n = parse_shard(shard)
        log(f"batch: shard {i}/{n}: {len(selected)} of {len(items)} items")
    if summary.skipped:
        log(f"batch: {summary.skipped} of {len(selected)} items already complete, skipping them")
    bar = _progress(len(todo), unit, progress)

    def record(item: Item, outcome: Outcome) -> None:
        row = writer.commit(item, outcome)
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
                from vision import batch_ray

                batch_ray.run(todo, make_processor, record, batch_size=batch_size, options=dict(ray_options or {}))
            else:
                _run_local(todo, make_processor, record, batch_size)
    except KeyboardInterrupt:
        summary.interrupted = True
    except BatchError:
        raise
    except Exception as err:
        if ray:  # an actor that could not start, a lost node...: what was written stays, a rerun resumes
            raise BatchError(f"the Ray run failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                             "rerun to resume") from err
        raise
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - started
        with contextlib.suppress(Exception):
            writer.clean_temp_files()
    if coco_json is not None and not summary.interrupted:
        path = write_coco_json(writer, items, coco_json)
        log(f"batch: COCO annotations written to {path}")
    log(summary.text())
    return summary


def _progress(total: int, unit: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit[:-1] if unit.endswith("s") else unit, desc="batch", disable=not enabled,
                dynamic_ncols=True, smoothing=0.1, file=sys.stderr)


def start_processor(make_processor: Callable[[], Any]) -> "_Worker":
    """Call ``make_processor()`` once (models, prompt features) and wrap it; a failure becomes an
    :class:`EngineStartError` that names the cause."""
    try:
        processor = make_processor()
    except BatchError:
        raise
    except Exception as err:
        raise EngineStartError(f"could not start the engine: {type(err).__name__}: {err}") from err
    return _Worker(processor)


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


# ------------------------------------------------------------------------------------------------ COCO


def _require_pycocotools():
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise BatchError("--coco-json needs pycocotools: pip install pycocotools") from None
    return mask_utils


def _masks_of(path: Path, suffix: str, row: dict) -> list[tuple[str, np.ndarray]]:
    """(category, bool mask) pairs of one output file: a binary mask (L/1 mode, suffix with "mask"),
    an instance mask (``<category>_<k>.inst.png``) or a label map (suffix with "label"; one mask per
    nonzero label, named by the record's ``classes``)."""
    name = suffix.rsplit(".", 1)[0].lower()
    instance = name.endswith(".inst")
    if not suffix.lower().endswith(".png") or not ("mask" in name or "label" in name or instance):
        return []
    with Image.open(path) as image:
        mode = image.mode
        arr = np.asarray(image)
    if "label" in name and arr.ndim == 2:
        classes = row.get("classes") or row.get("labels") or []
        found = []
        for value in np.unique(arr):
            if value == 0:
                continue
            v = int(value)
            category = str(classes[v]) if isinstance(classes, list) and v < len(classes) else f"label_{v}"
            found.append((category, arr == value))
        return found
    if mode in ("L", "1", "P") and arr.ndim == 2:
        if instance:  # "<concept>_<k>.inst.png": one instance of a concept
            return [(suffix[: -len(".inst.png")].rsplit("_", 1)[0] or "foreground", arr > 0)]
        category = row.get("category") or row.get("prompt") or row.get("label") or "foreground"
        return [(str(category), arr > 0)]
    return []


def _coco_target(writer: Writer, path: str | os.PathLike) -> Path:
    target = Path(path)
    if not target.is_absolute():
        target = writer.out / target
    target = target.parent.resolve() / target.name
    if not _is_within(target, writer.out) or target.name in (RESULTS_NAME, ERRORS_NAME):
        raise BatchError(f"--coco-json {path}: must be a new file inside the output folder {writer.out}")
    return target


def write_coco_json(writer: Writer, items: Sequence[Item], path: str | os.PathLike) -> Path:
    """COCO instances JSON (RLE segmentations) of every complete item in the output folder."""
    mask_utils = _require_pycocotools()
    target = _coco_target(writer, path)
    rows, _ = _read_jsonl(writer.results_path)
    latest = {row["id"]: row for row in rows}
    categories: dict[str, int] = {}
    images, annotations = [], []
    for image_id, rid in enumerate(sorted(r for r, row in latest.items() if row.get("status") == "ok"), start=1):
        row = latest[rid]
        entry: dict | None = None
        outputs = sorted((row.get("outputs") or {}).items())
        if any(s.lower().endswith(".inst.png") for s, _ in outputs):  # instances replace their union mask
            outputs = [(s, r) for s, r in outputs if s.lower().endswith(".inst.png")]
        for suffix, rel in outputs:
            file = writer.out / rel
            if not file.is_file():
                continue
            for category, mask in _masks_of(file, suffix, row):
                if entry is None:
                    entry = {"id": image_id, "file_name": rid, "height": int(mask.shape[0]), "width": int(mask.shape[1])}
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                cat_id = categories.setdefault(category, len(categories) + 1)
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id,
                    "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0, "output": rel, **({"score": row["score"]} if isinstance(row.get("score"), (int, float)) else {}),
                })
        if entry is not None:
            images.append(entry)
    coco = {"info": {"description": "vision batch masks", "version": "1.0"}, "images": images,
            "annotations": annotations, "categories": [{"id": i, "name": n} for n, i in categories.items()]}
    writer._ensure_dir(target.parent)
    writer.write_file(target, (json.dumps(coco) + "\n").encode("utf-8"))
    return target


# ------------------------------------------------------------------------------------------------- CLI


def _add(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *flags: str, **kwargs: Any) -> None:
    container = parser
    existing = getattr(container, "_option_string_actions", {})
    if any(flag in existing for flag in flags):
        return  # the engine defines it already (e.g. its own --output): that one is used
    container.add_argument(*flags, **kwargs)


def add_batch_arguments(parser: argparse.ArgumentParser, *, inputs: str = "images", input_flag: bool = True) -> None:
    """Add the shared batch options to an engine subcommand's parser.

    ``inputs``: "images" (``--input`` is an image or folder), "prompts" (a prompts file) or "files".
    ``input_flag=False`` leaves ``--input`` out (the engine has its own positional input and passes
    it to :func:`run_from_args`). Options the parser already has (``--device``, ``--output``...) are
    not added again.
    """
    group = parser.add_argument_group("batch mode", "Run over a folder (or a prompts file): resumable; "
                                      "results.jsonl and errors.jsonl in the output folder.")
    what = {"images": "an image file or a folder of images", "prompts": "a text file, one prompt per line",
            "files": "a file or a folder of input files"}.get(inputs, inputs)
    if input_flag:
        _add(group, "--input", "-i", dest="input", help=f"input: {what}")
    _add(group, "--output", "-o", dest="output", help="output folder (mirrors the input tree; "
         "results.jsonl and errors.jsonl inside)")
    if inputs != "prompts":
        _add(group, "--recursive", "-r", action="store_true", help="also read sub-folders")
        _add(group, "--ext", default=None, help="comma-separated extensions to read from a folder "
             f"(default: {','.join(IMAGE_EXTENSIONS) if inputs == 'images' else 'all'})")
        _add(group, "--allow-output-inside-input", action="store_true",
             help="allow an output folder inside the input folder (it is then not read as input)")
    _add(group, "--batch-size", type=int, default=1, help="items per engine call (engines that batch)")
    _add(group, "--device", help="cuda, cuda:1, mps or cpu (default: best available)")
    _add(group, "--shard", default=None, metavar="I/N", help="process only shard I of N (0-based), for "
         "several processes or GPUs; the N shards together cover every item once")
    _add(group, "--overwrite", action="store_true", help="redo items that are already complete")
    _add(group, "--coco-json", nargs="?", const="coco.json", default=None, metavar="PATH",
         help="also write COCO RLE annotations of the masks (default name coco.json, in the output folder)")
    _add(group, "--no-progress", action="store_true", help="no progress bar")
    _add(group, "--ray", action="store_true", help="run the engine in Ray Data actors (pip install 'ray[data]')")
    _add(group, "--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    _add(group, "--ray-actors", type=int, default=None, help="number of Ray actors (default: one per GPU, or 2)")
    _add(group, "--ray-gpus-per-actor", type=float, default=None, help="GPUs per actor (default: 1 if "
         "the cluster has GPUs, else 0)")


def items_from_args(args: argparse.Namespace, inputs: str = "images", input_path: Any = None) -> list[Item]:
    """The items named by parsed batch arguments."""
    source = input_path if input_path is not None else getattr(args, "input", None)
    if source is None:
        raise BatchError("no input given (a file or folder, or a prompts file)")
    if inputs == "prompts":
        return prompt_items(source)
    exclude = getattr(args, "output", None) if getattr(args, "allow_output_inside_input", False) else None
    ext = getattr(args, "ext", None)
    if inputs == "files" and ext is None:
        ext = ()  # every file
    return file_items(source, recursive=getattr(args, "recursive", False), extensions=ext,
                      kind="image" if inputs == "images" else "file", exclude=exclude)


def run_from_args(args: argparse.Namespace, make_processor: Callable[[], Any], *, inputs: str = "images",
                  settings: dict | None = None, input_path: Any = None, output: Any = None,
                  items: Sequence[Item] | None = None) -> int:
    """Run a batch from :func:`add_batch_arguments` options; returns the exit code (prints errors)."""
    try:
        out = output if output is not None else getattr(args, "output", None)
        if out is None:
            raise BatchError("no output folder given (--output)")
        source = input_path if input_path is not None else getattr(args, "input", None)
        if items is None:
            if inputs != "prompts" and source is not None:
                check_output_folder(source, out, getattr(args, "allow_output_inside_input", False))
            items = items_from_args(args, inputs, source)
        if not items:
            print(f"batch: no input items found in {source}", file=sys.stderr)
            return 1
        root = None
        if inputs != "prompts" and source is not None:
            given = Path(source)
            root = given if given.is_dir() else given.parent
        ray_options = {
            "address": getattr(args, "ray_address", None), "num_actors": getattr(args, "ray_actors", None),
            "num_gpus": getattr(args, "ray_gpus_per_actor", None), "tiny": bool(getattr(args, "tiny", False)),
            "device": getattr(args, "device", None),
        }
        device = getattr(args, "device", None)
        if device and not getattr(args, "ray", False):
            from vision.hub import ModelHub, get_hub, set_hub

            hub = get_hub()
            if hub.device != device:  # a parser outside vision.cli: honour --device here
                budget = hub.memory_budget_bytes / 2**30 if hub.memory_budget_bytes else None
                set_hub(ModelHub(tiny=hub.tiny, device=device, memory_budget_gb=budget, weight_paths=hub.weight_paths))
        summary = run_batch(items, out, make_processor, batch_size=getattr(args, "batch_size", 1) or 1,
                            shard=getattr(args, "shard", None), settings=settings, input_root=root,
                            allow_output_inside_input=getattr(args, "allow_output_inside_input", False),
                            overwrite=getattr(args, "overwrite", False),
                            progress=not getattr(args, "no_progress", False),
                            coco_json=getattr(args, "coco_json", None), ray=getattr(args, "ray", False),
                            ray_options=ray_options)
        return summary.exit_code
    except BatchError as err:
        print(f"batch: {err}", file=sys.stderr)
        return 2
