"""Items of a batch: walking an input file or folder, reading a prompts file, and splitting into shards.

Each :class:`Item` has a stable relative ``id`` (``"sub/cat.jpg"``, ``"00003-a-red-fox"``), a stable
``index`` (its place in the sorted list of all items) and an output ``stem`` (outputs mirror the input
tree as ``<OUT>/<stem>.<suffix>``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vision.batch.errors import BatchError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


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
    def from_row(cls, row: dict) -> Item:
        return cls(id=str(row["id"]), index=int(row["index"]),
                   path=None if row["path"] in (None, "") else Path(row["path"]), text=row["text"],
                   params=json.loads(row["params"] or "{}"), kind=str(row["kind"]),
                   stem=str(row["stem"]), input_label=str(row["input_label"]))


def _strip_ext(rel: str) -> str:
    head, _, name = rel.rpartition("/")
    base = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}/{base}" if head else base


def is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def check_rel(rel: str) -> str:
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
                if not is_within(target, root) or (exclude is not None and is_within(target, exclude)):
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
    folder contents (default: image extensions); a single file given directly is always used.
    ``exclude`` is a folder not to read (the output folder when it lies inside the input folder).
    Hidden files and folders are ignored.
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
        check_rel(rel)
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
        items.append(Item(id=rid, index=len(items), text=text, params=params, kind="prompt", stem=rid,
                          input_label=text))
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
    """The shard (0..n-1) of an item: a stable hash of its id (the same on every machine and run; a name
    that is not valid UTF-8 is hashed as its bytes)."""
    return int.from_bytes(hashlib.sha1(item_id.encode("utf-8", "surrogateescape")).digest()[:8], "big") % n


def select_shard(items: Sequence[Item], shard: str | Sequence[int] | None) -> list[Item]:
    """The items of shard ``I/N``; the N shards together hold every item exactly once."""
    spec = parse_shard(shard)
    if spec is None:
        return list(items)
    i, n = spec
    return [item for item in items if shard_of(item.id, n) == i]

