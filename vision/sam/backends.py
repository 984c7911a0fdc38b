"""Where a SAM's image encoder and prompt encoder + mask decoder run: PyTorch, ONNX Runtime or OpenVINO.

Every backend offers the same two calls (shapes as in :mod:`vision.sam.export`):

* ``encode(pixels)``: [1, 3, S, S] float32 (SAM's ``preprocess`` output) -> embedding [1, C, g, g] float32;
* ``decode(embedding, point_coords, point_labels, boxes, mask_input)``: prompts in the encoder's input
  frame exactly as ``SamPredictor.predict_torch`` takes them (coords [B, N, 2] and labels [B, N] or None,
  boxes [B, 4] or None, mask_input [B, 1, 4g, 4g] or None) -> (low-res logits [B, 4, 4g, 4g], predicted
  IoUs [B, 4]) of all four mask tokens, as torch tensors on the embedding's device.

``torch`` calls ``Sam``'s own modules (``prompt_encoder``, ``mask_decoder.predict_masks``): it is the
reference, accepts everything ``predict_torch`` does (Trident's reference-mode unbatched mask prompt
included) and is the only backend on CUDA. ``onnx`` (package ``onnxruntime``) and ``openvino`` (package
``openvino``) run the project's own ONNX exports (:mod:`vision.sam.export`) on the CPU with one thread
per core; OpenVINO compiles the same ONNX file, in float32 (its default on CPUs with bf16 units is bf16,
which moves the embedding by ~5e-2).

``auto`` (:func:`resolve_backend`): ``torch`` on a GPU; on a CPU the first installed of
:data:`CPU_PREFERENCE`, the order ``bench cpu`` measured (``bench/results/cpu.md``).
"""

from __future__ import annotations

import importlib.util
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vision.sam.export import ExportError, exported, weights_checksum
from vision.sam.split_decoder import IMAGE_OUTPUTS

BACKENDS = ("auto", "torch", "onnx", "openvino")
PACKAGES = {"onnx": "onnxruntime", "openvino": "openvino"}  # backend -> the package it needs
CPU_PREFERENCE = ("openvino", "onnx", "torch")  # fastest first on a CPU (see bench/results/cpu.md)
SPLIT_PARTS = ("decoder_image", "decoder_prompts")  # the decoder per image and per prompt (no mask input)
IMAGES_KEPT = 4  # embeddings whose per-image decoder tensors a compiled backend keeps (~38 MiB each for SAM)


def installed(backend: str) -> bool:
    """Whether ``backend``'s package can be imported (torch: always)."""
    package = PACKAGES.get(backend)
    return package is None or importlib.util.find_spec(package) is not None


def missing_package(backend: str) -> str | None:
    """A message naming the package to install when ``backend`` needs one that is missing, else None."""
    if backend in PACKAGES and not installed(backend):
        return f"backend {backend!r} needs the package {PACKAGES[backend]} (pip install {PACKAGES[backend]})"
    return None


def resolve_backend(backend: str, device: str) -> str:
    """The concrete backend ``backend`` means on ``device`` ("auto": torch on a GPU, else the fastest
    installed CPU backend)."""
    if backend != "auto":
        return backend
    if torch.device(device).type != "cpu":
        return "torch"
    return next(b for b in CPU_PREFERENCE if installed(b))


def cpu_threads() -> int:
    """Threads for CPU inference: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class TorchBackend:
    """SAM's own PyTorch modules (any device)."""

    name = "torch"

    def __init__(self, sam: Any):
        self.sam = sam

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.sam.image_encoder(pixels)

    @torch.no_grad()
    def decode(self, embedding: torch.Tensor, point_coords: torch.Tensor | None, point_labels: torch.Tensor | None,
               boxes: torch.Tensor | None, mask_input: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = self.sam.prompt_encoder
        points = None if point_coords is None else (point_coords, point_labels)
        sparse, dense = encoder(points=points, boxes=boxes, masks=mask_input)
        return self.sam.mask_decoder.predict_masks(image_embeddings=embedding, image_pe=encoder.get_dense_pe(),
                                                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)


def decoder_feed(embedding: torch.Tensor, point_coords: torch.Tensor | None, point_labels: torch.Tensor | None,
                 boxes: torch.Tensor | None, mask_input: torch.Tensor | None) -> dict[str, np.ndarray]:
    """The exported decoder's inputs for ``predict_torch``-style prompts: points, then a box's corners
    (labels 2, 3) or one padding point (label -1), as SAM's prompt encoder orders them."""
    batch = next((t.shape[0] for t in (point_coords, boxes, mask_input) if t is not None), 1)
    coords, labels = [], []
    if point_coords is not None:
        coords.append(point_coords.float().cpu())
        labels.append(point_labels.float().cpu())
    if boxes is not None:
        coords.append(boxes.float().cpu().reshape(-1, 2, 2))
        labels.append(torch.tensor([[2.0, 3.0]]).expand(batch, 2))
    else:
        coords.append(torch.zeros(batch, 1, 2))
        labels.append(torch.full((batch, 1), -1.0))
    side = 4 * int(embedding.shape[-1])
    if mask_input is not None and mask_input.dim() != 4:
        raise ValueError(f"mask_input: the exported decoder takes [B, 1, {side}, {side}], got "
                         f"{tuple(mask_input.shape)} (the torch backend takes other shapes)")
    has_mask = mask_input is not None
    mask = mask_input.float().cpu() if has_mask else torch.zeros(1, 1, side, side)
    return {"embedding": embedding.float().cpu().numpy(), "point_coords": torch.cat(coords, 1).numpy(),
            "point_labels": torch.cat(labels, 1).numpy(), "mask_input": mask.numpy(),
            "has_mask_input": np.array([float(has_mask)], np.float32)}


class CompiledBackend:
    """A SAM's ONNX graphs, compiled; each ``run_*`` maps a feed dict of numpy arrays to the list of
    outputs (see :func:`onnx_runtime` and :func:`openvino_runtime`).

    ``split`` = (run_image, run_prompts): the decoder split into a part per image and a part per prompt
    (:mod:`vision.sam.split_decoder`), used for prompts without a mask input; the per-image tensors are
    computed on an embedding's first decode and kept while that tensor lives (the last
    :data:`IMAGES_KEPT` embeddings). Without it (None), or with a mask input, the full ``decoder`` runs.
    """

    def __init__(self, name: str, run_encoder: Callable[[dict], list], run_decoder: Callable[[dict], list],
                 files: dict[str, Path], split: tuple[Callable[[dict], list], Callable[[dict], list]] | None = None):
        self.name, self.files, self.split = name, files, split
        self._run_encoder, self._run_decoder = run_encoder, run_decoder
        self._images: OrderedDict[int, tuple[weakref.ref, dict[str, np.ndarray]]] = OrderedDict()
        self._images_lock = threading.Lock()

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        (embedding,) = self._run_encoder({"pixels": pixels.float().cpu().numpy()})
        return torch.from_numpy(np.asarray(embedding))

    def decode(self, embedding: torch.Tensor, point_coords: torch.Tensor | None, point_labels: torch.Tensor | None,
               boxes: torch.Tensor | None, mask_input: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        feed = decoder_feed(embedding, point_coords, point_labels, boxes, mask_input)
        if self.split is None or mask_input is not None:
            low_res, iou = self._run_decoder(feed)
        else:
            prompts = {"point_coords": feed["point_coords"], "point_labels": feed["point_labels"]}
            low_res, iou = self.split[1]({**self.image_tensors(embedding), **prompts})
        return torch.from_numpy(np.asarray(low_res)), torch.from_numpy(np.asarray(iou))

    def image_tensors(self, embedding: torch.Tensor) -> dict[str, np.ndarray]:
        """The split decoder's per-image tensors of ``embedding`` [1, C, g, g] (names
        :data:`~vision.sam.split_decoder.IMAGE_OUTPUTS`), computed once per embedding tensor."""
        with self._images_lock:
            found = self._images.get(id(embedding))
            if found is not None and found[0]() is embedding:  # the same tensor, not a new one at a reused id
                self._images.move_to_end(id(embedding))
                return found[1]
        tensors = dict(zip(IMAGE_OUTPUTS, self.split[0]({"embedding": embedding.float().cpu().numpy()})))
        with self._images_lock:
            self._images[id(embedding)] = (weakref.ref(embedding), tensors)
            while len(self._images) > IMAGES_KEPT:
                self._images.popitem(last=False)
        return tensors


def onnx_runtime(threads: int) -> Callable[[Path], Callable[[dict], list]]:
    """A function that loads an ONNX file into ONNX Runtime (CPU, ``threads`` threads) and returns its
    run function."""
    import onnxruntime as ort

    def session(path: Path) -> Callable[[dict], list]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # no arena: it keeps the largest batch's buffers (GBs in the everything mode) for the process's life
        options.enable_cpu_mem_arena = False
        loaded = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda feed: loaded.run(None, feed)

    return session


def openvino_runtime(threads: int) -> Callable[[Path], Callable[[dict], list]]:
    """A function that compiles an ONNX file with OpenVINO (CPU, float32, ``threads`` threads) and returns
    its run function."""
    import openvino as ov

    core = ov.Core()

    def compiled(path: Path) -> Callable[[dict], list]:
        # f32: on CPUs with bf16 units OpenVINO's default precision is bf16 (embedding off by ~5e-2)
        model = core.compile_model(core.read_model(str(path)), "CPU",
                                   {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                    "INFERENCE_PRECISION_HINT": "f32"})
        request = model.create_infer_request()
        lock = threading.Lock()  # one infer request: calls from several threads take turns

        def run(feed: dict) -> list:
            with lock:
                results = request.infer(feed, share_inputs=True)  # no copy of the per-image tensors per call
                return [np.array(results[output]) for output in model.outputs]
        return run

    return compiled


RUNTIMES = {"onnx": onnx_runtime, "openvino": openvino_runtime}


def compiled_parts(sam: Any, name: str, parts: tuple[str, ...], folder: Path, checksum: str,
                   notes: list[str]) -> tuple[dict[str, Path], list[Callable[[dict], list]]]:
    """Exports (or reuses) ``parts`` of ``sam`` in ``folder`` and compiles them with runtime ``name``: (their
    files, their run functions). A cached file that fails to load is exported once more. Appends what it
    did to ``notes``."""
    load = RUNTIMES[name](cpu_threads())
    files = {}
    for part in parts:
        done = exported(sam, part, folder, checksum)
        notes.append(f"{name}: {done.note}")
        files[part] = done.path
    try:
        return files, [load(files[part]) for part in parts]
    except Exception as err:  # a file that passed its checksum but does not load: make it again, once
        notes.append(f"{name}: the cached export did not load ({type(err).__name__}: {err}); exported again")
        for path in files.values():
            path.unlink(missing_ok=True)
        for part in parts:
            notes.append(f"{name}: {exported(sam, part, folder, checksum).note}")
        return files, [load(files[part]) for part in parts]


def compiled_backend(sam: Any, name: str, folder: Path, notes: list[str]) -> CompiledBackend:
    """``name`` ("onnx" / "openvino") for ``sam``: its encoder, full decoder and split decoder exported
    (or reused) in ``folder`` and compiled. When the split decoder fails, the full decoder answers every
    prompt and ``notes`` says why. Appends what it did to ``notes``."""
    checksum = weights_checksum(sam)
    files, (run_encoder, run_decoder) = compiled_parts(sam, name, ("encoder", "decoder"), folder, checksum, notes)
    try:
        split_files, split = compiled_parts(sam, name, SPLIT_PARTS, folder, checksum, notes)
    except Exception as err:  # the split decoder is a speed-up only: the full decoder computes the same
        notes.append(f"{name}: the split decoder is unavailable, the full decoder answers every prompt "
                     f"({type(err).__name__}: {err})")
        split_files, split = {}, None
    return CompiledBackend(name, run_encoder, run_decoder, {**files, **split_files},
                           None if split is None else tuple(split))


def make_backend(sam: Any, name: str, folder: Path | None, notes: list[str]) -> Any:
    """The backend ``name`` (concrete, not "auto") for ``sam``. A compiled backend that cannot be built
    (export failed, no folder, model not on the CPU) falls back to torch, saying why in ``notes``."""
    if name == "torch":
        return TorchBackend(sam)
    problem = missing_package(name)
    if problem:
        raise ValueError(problem)
    try:
        if folder is None:
            raise ExportError("no folder to keep the export in")
        return compiled_backend(sam, name, folder, notes)
    except Exception as err:  # export or runtime failure: the torch path still answers
        notes.append(f"{name} unavailable, torch used: {err}")
        return TorchBackend(sam)


def backend_summary(device: str) -> str:
    """One Markdown line for the Models tab: the backend ``auto`` picks on ``device``, the installed
    ones with their versions and the CPU threads they use."""
    from importlib.metadata import PackageNotFoundError, version

    installed_now = ["torch " + torch.__version__]
    for backend, package in PACKAGES.items():
        try:
            installed_now.append(f"{backend} ({package} {version(package)})")
        except PackageNotFoundError:
            installed_now.append(f"{backend}: not installed (pip install {package})")
    return (f"**SAM backend:** `{resolve_backend('auto', device)}` on `{device}` (auto: torch on a GPU, the fastest "
            f"installed on a CPU; {cpu_threads()} CPU threads); backends: {', '.join(installed_now)}")
