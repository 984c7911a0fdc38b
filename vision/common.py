"""Small helpers every engine shares, written once: an LRU cache, content keys, a stage timer and the
float-to-uint8 image conversion."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, MutableMapping
from typing import Any, Generic, TypeVar

import numpy as np

V = TypeVar("V")


class LRUCache(Generic[V]):
    """A thread-safe least-recently-used cache of at most ``size`` entries; counts hits and misses."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"cache size must be >= 1, got {size}")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        """The entry for ``key`` (now the most recent), or None (a miss)."""
        with self._lock:
            if key not in self._items:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]

    def put(self, key: Hashable, value: V) -> V:
        """Store ``value`` under ``key`` (the oldest entries beyond ``size`` are dropped); returns it."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> tuple[V, bool]:
        """(entry, True) on a hit; else ``make()`` is stored and returned with False. ``make`` runs outside
        the lock, so two threads missing the same key at once may both make it (the later one is kept)."""
        found = self.get(key)
        if found is not None:
            return found, True
        return self.put(key, make()), False

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)


def content_key(array: np.ndarray) -> str:
    """A key for an array's content: a hash of its shape, dtype and bytes (32 hex digits)."""
    digest = hashlib.blake2b(f"{array.shape}{array.dtype.str}".encode(), digest_size=16)
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def synchronize(device: Any) -> None:
    """Wait for queued CUDA work on ``device`` (a no-op elsewhere), so a timer measures the work itself."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def stage(timings: MutableMapping[str, float], name: str, device: Any = "cpu") -> Iterator[None]:
    """Add the seconds the block takes to ``timings[name]`` (CUDA work on ``device`` included)."""
    synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in 0..1 (any shape) -> uint8 0..255, clipped and rounded to the nearest level."""
    return (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
