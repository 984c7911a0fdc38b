"""Encoders: a result's ``to_files()`` values to bytes by suffix, its ``to_record()`` to plain JSON.

Both runners (local and Ray) encode through here, so a Ray run writes byte-identical files.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

RESERVED_KEYS = ("id", "status", "input", "outputs", "seconds", "settings", "error", "reason")
_SUFFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
        return (json.dumps(value, indent=1, sort_keys=True, default=json_default) + "\n").encode("utf-8")
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


def json_default(value: Any) -> Any:
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


def record_of(result: Any) -> dict:
    record = result.to_record() if hasattr(result, "to_record") else {}
    record = json.loads(json.dumps(dict(record or {}), default=json_default))  # JSON-able, plain
    return {(f"engine_{k}" if k in RESERVED_KEYS else k): v for k, v in record.items()}

