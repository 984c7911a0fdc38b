"""A SAM and where it runs: :class:`SamRunner` encodes images into :class:`~vision.sam.image.SamImage`
values, once per image content (an LRU cache), on the backend it was given."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vision.common import LRUCache, content_key, synchronize
from vision.hub import model_lock
from vision.sam.backends import make_backend, resolve_backend
from vision.sam.image import SamImage

# (id(sam), backend, folder) -> (sam, backend, notes): one compiled backend per model, shared by runners
_backends: LRUCache[tuple[Any, Any, list[str]]] = LRUCache(8)
_backends_lock = threading.Lock()


class SamRunner:
    """Encodes images with one ``segment_anything`` ``Sam`` on one backend, keeping the last
    ``cache_size`` encodings by image content.

    ``backend``: "torch", "onnx", "openvino" or "auto" (:func:`~vision.sam.backends.resolve_backend`);
    a compiled backend exports into ``export_dir`` (beside the model's weights) on first use, which
    takes seconds, and is shared by every runner of the same model. ``notes`` says what was done or why
    torch answers instead (an export that failed). ``cache.misses`` counts the encoder passes.
    """

    def __init__(self, sam: Any, backend: str = "torch", cache_size: int = 8, export_dir: Path | None = None):
        self.sam = sam
        self.requested = backend
        self.cache: LRUCache[SamImage] = LRUCache(cache_size)
        self.notes: list[str] = []
        device = str(next(sam.parameters()).device)
        name = resolve_backend(backend, device)
        key = (id(sam), name, str(export_dir))
        with _backends_lock:
            found = _backends.get(key)
            if found is None or found[0] is not sam:
                built: list[str] = []
                found = _backends.put(key, (sam, make_backend(sam, name, export_dir, built), built))
        self.backend, self.notes = found[1], list(found[2])

    @property
    def backend_name(self) -> str:
        """The backend that runs (after any fallback to torch)."""
        return self.backend.name

    @property
    def device(self) -> torch.device:
        return next(self.sam.parameters()).device

    def encode(self, image: np.ndarray, cache: bool = True,
               on_encode: Callable[[], Any] | None = None) -> tuple[SamImage, bool]:
        """``image`` (RGB uint8 [H, W, 3]) encoded, and whether it came from the cache. With
        ``cache=False`` the encoder always runs and nothing is stored (Trident records the attention of
        that very pass). ``on_encode()`` is called before the encoder runs (not on a cache hit)."""
        key = content_key(image) if cache else ""
        if cache:
            found = self.cache.get(key)
            if found is not None:
                return found, True
        if on_encode is not None:
            on_encode()
        encoded = self._encode(image, key)
        if cache:
            self.cache.put(key, encoded)
        return encoded, False

    def _encode(self, image: np.ndarray, key: str) -> SamImage:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image: SAM takes RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
        start = time.perf_counter()
        pixels, input_size = self.preprocess(image)
        with model_lock(self.sam):
            embedding = self.backend.encode(pixels).to(self.device)
        synchronize(self.device)
        return SamImage(self.sam, self.backend, embedding, tuple(image.shape[:2]), input_size, key,
                        time.perf_counter() - start)

    @torch.no_grad()
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """RGB uint8 [H, W, 3] -> SAM's encoder input [1, 3, S, S] float32 (long side resized to S,
        normalised, zero-padded; ``Sam.preprocess``) and the resized size (h, w)."""
        from segment_anything.utils.transforms import ResizeLongestSide

        resized = ResizeLongestSide(self.sam.image_encoder.img_size).apply_image(image)
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        return self.sam.preprocess(x.float()), tuple(resized.shape[:2])


def runner_for(hub: Any, name: str, backend: str = "auto", cache_size: int = 1) -> SamRunner:
    """A runner of hub model ``name`` on ``backend``, exporting beside its weights
    (:func:`~vision.sam.export.export_folder`); the compiled backend is shared with every other runner of
    that model."""
    from vision.sam.export import export_folder

    return SamRunner(hub.get(name), backend, cache_size, export_folder(hub, name))
