"""ONNX export of a SAM's image encoder and of its prompt encoder + mask decoder, cached beside its weights.

The project exports its own PyTorch modules (``torch.onnx.export``, TorchScript exporter, opset
:data:`OPSET`); nothing is downloaded. Four graphs per model (:data:`PARTS`):

* ``encoder``: ``pixels`` [1, 3, S, S] float32 (SAM's ``preprocess``: normalised, zero-padded; S = 1024)
  -> ``embedding`` [1, C, S/16, S/16] float32 (C = 256 for every SAM).
* ``decoder`` (:class:`PromptMaskDecoder`): ``embedding`` [1, C, g, g], ``point_coords`` [B, N, 2]
  float32 in the encoder's input frame (pixels of the resized image, before the +0.5 shift),
  ``point_labels`` [B, N] float32 (-1 padding, 0 background, 1 foreground, 2 / 3 a box's top-left /
  bottom-right corner), ``mask_input`` [B or 1, 1, 4g, 4g] float32 logits, ``has_mask_input`` [1]
  float32 (1: use ``mask_input``, 0: SAM's no-mask embedding) -> ``low_res_masks`` [B, 4, 4g, 4g]
  logits and ``iou_predictions`` [B, 4] of all four mask tokens (token 0: the single-mask output,
  1..3: the multimask outputs). B and N are dynamic.
* ``decoder_image`` (:class:`~vision.sam.split_decoder.DecoderImagePart`) and ``decoder_prompts``
  (:class:`~vision.sam.split_decoder.DecoderPromptPart`): the same decoder without a mask input, split:
  ``embedding`` -> the per-image tensors named in :data:`~vision.sam.split_decoder.IMAGE_OUTPUTS` once
  per image; those, ``point_coords`` and ``point_labels`` -> ``low_res_masks`` and ``iou_predictions``
  per batch of prompts (a third of the operations per prompt of SAM's decoder).

Cache (:func:`exported`): ``<folder>/<part>-<checksum>-<graph>.onnx`` where the checksum (16 hex digits)
is a blake2b of the model's state dict (names, dtypes, shapes and bytes of every tensor: the *source
weights*) and ``graph`` (8 hex digits, :func:`graph_digest`) one of the code that builds the graphs, so
neither other weights nor a changed graph reuse a stale export; ``<part>-<checksum>-<graph>.json``
beside it records the file's sha256, the opset and the torch version. A file whose sha256 does not
match (truncated, corrupt) or that is missing is exported again; the manifest is written last, so an
interrupted export is never taken for a complete one. A new export removes the same weights' exports of
that part made by other code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vision.sam import split_decoder
from vision.sam.split_decoder import IMAGE_OUTPUTS, DecoderImagePart, DecoderPromptPart, sparse_embedding

OPSET = 17
PARTS = ("encoder", "decoder", "decoder_image", "decoder_prompts")


class ExportError(RuntimeError):
    """An ONNX export that could not be made; the message says which part and why."""


class PromptMaskDecoder(nn.Module):
    """SAM's prompt encoder + mask decoder with fixed inputs (see the module docstring), for export.

    Every prompt is a labelled point: a box is its two corners labelled 2 and 3, and a prompt without a
    box ends with one padding point labelled -1, exactly the sequence ``PromptEncoder.forward`` builds;
    the embedding of a point is SAM's positional encoding of (x + 0.5, y + 0.5) plus the embedding of its
    label (padding: the not-a-point embedding alone). Only the public modules and methods of ``Sam`` are
    used (``pe_layer.forward_with_coords``, the embeddings, ``mask_downscaling``, ``get_dense_pe``,
    ``mask_decoder.predict_masks``), so the graph computes what ``SamPredictor.predict_torch`` computes.
    """

    def __init__(self, sam: Any):
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder

    def forward(self, embedding: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = self.prompt_encoder
        sparse = sparse_embedding(encoder, point_coords, point_labels)
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_mask_input * encoder.mask_downscaling(mask_input) + (1 - has_mask_input) * no_mask
        return self.mask_decoder.predict_masks(image_embeddings=embedding, image_pe=encoder.get_dense_pe(),
                                               sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)


def weights_checksum(model: nn.Module) -> str:
    """16 hex digits identifying a model's weights: blake2b over its state dict's names, dtypes, shapes
    and bytes."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@functools.cache
def graph_digest() -> str:
    """8 hex digits identifying the code that builds the exported graphs: a blake2b of this module's and
    :mod:`vision.sam.split_decoder`'s source files."""
    digest = hashlib.blake2b(digest_size=4)
    for source in (Path(__file__), Path(split_decoder.__file__)):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _export_args(sam: Any, part: str) -> tuple[nn.Module, tuple, list[str], list[str], dict]:
    """(module, example inputs, input names, output names, dynamic axes) of one part, on the CPU."""
    side = int(sam.image_encoder.img_size)
    if part == "encoder":
        return (sam.image_encoder, (torch.zeros(1, 3, side, side),), ["pixels"], ["embedding"], {})
    grid = int(sam.prompt_encoder.image_embedding_size[0])
    channels = int(sam.prompt_encoder.embed_dim)
    embedding = torch.zeros(1, channels, grid, grid)
    prompts = (torch.zeros(2, 3, 2), torch.tensor([[1.0, 0.0, -1.0]] * 2))
    per_prompt = {"point_coords": {0: "batch", 1: "points"}, "point_labels": {0: "batch", 1: "points"},
                  "low_res_masks": {0: "batch"}, "iou_predictions": {0: "batch"}}
    outputs = ["low_res_masks", "iou_predictions"]
    if part == "decoder_image":
        return DecoderImagePart(sam), (embedding,), ["embedding"], list(IMAGE_OUTPUTS), {}
    if part == "decoder_prompts":
        with torch.no_grad():
            image_tensors = DecoderImagePart(sam)(embedding)
        return (DecoderPromptPart(sam), (*image_tensors, *prompts), [*IMAGE_OUTPUTS, "point_coords", "point_labels"],
                outputs, per_prompt)
    example = (embedding, *prompts, torch.zeros(1, 1, 4 * grid, 4 * grid), torch.zeros(1))
    names = ["embedding", "point_coords", "point_labels", "mask_input", "has_mask_input"]
    return PromptMaskDecoder(sam), example, names, outputs, {**per_prompt, "mask_input": {0: "mask_batch"}}


def export_part(sam: Any, part: str, path: Path) -> None:
    """Write ``part`` (one of :data:`PARTS`) of ``sam`` (on the CPU, fp32) as ONNX to ``path``."""
    module, example, inputs, outputs, dynamic = _export_args(sam, part)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(module, example, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic or None, opset_version=OPSET, dynamo=False, do_constant_folding=True)


@dataclass
class Exported:
    """An export on disk: ``path`` of the ONNX file, ``checksum`` of the source weights, and ``note``
    (what was done: reused, exported in N s, or re-exported because the file was missing/corrupt)."""

    path: Path
    checksum: str
    note: str


def exported(sam: Any, part: str, folder: Path, checksum: str | None = None) -> Exported:
    """The ONNX file of ``part`` for ``sam``'s weights in ``folder``: reused when its manifest's sha256
    matches, else (missing, corrupt, no manifest) exported again. Raises :class:`ExportError` saying why."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    checksum = checksum or weights_checksum(sam)
    path = folder / f"{part}-{checksum}-{graph_digest()}.onnx"
    manifest = path.with_suffix(".json")
    problem = _check(path, manifest)
    if problem is None:
        return Exported(path, checksum, f"{part}: reused {path.name}")
    start = time.perf_counter()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        manifest.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".part-{part}-", suffix=".onnx")
        os.close(fd)
        try:
            export_part(_on_cpu(sam), part, Path(tmp))
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        record = {"part": part, "weights_checksum": checksum, "graph": graph_digest(), "sha256": _file_sha256(path),
                  "opset": OPSET, "torch": torch.__version__, "exported_s": round(time.perf_counter() - start, 2)}
        manifest.write_text(json.dumps(record, indent=1) + "\n")
    except Exception as err:  # any exporter or file-system failure: the caller falls back and says why
        raise ExportError(f"ONNX export of the SAM {part} failed ({type(err).__name__}: {err})") from err
    again = "" if problem == "missing" else f" ({problem})"
    replaced = _remove_older_graphs(path, part, checksum)
    replaced = f"; removed {', '.join(replaced)} (made by other code)" if replaced else ""
    return Exported(path, checksum,
                    f"{part}: exported {path.name} in {time.perf_counter() - start:.1f} s{again}{replaced}")


def _remove_older_graphs(current: Path, part: str, checksum: str) -> list[str]:
    """Deletes the exports of ``part`` for the same weights beside ``current`` made by other code (another
    graph digest, or none: the names before it) with their manifests; their names."""
    folder = current.parent
    older = [p for p in (folder / f"{part}-{checksum}.onnx", *folder.glob(f"{part}-{checksum}-*.onnx"))
             if p != current and p.exists()]
    for path in older:
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
    return sorted(p.name for p in older)


def _check(path: Path, manifest: Path) -> str | None:
    """None when ``path`` is a complete export, else why not ("missing", "corrupt: ...")."""
    if not path.exists():
        return "missing"
    try:
        expected = json.loads(manifest.read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        return f"corrupt: no valid manifest {manifest.name}, exported again"
    if _file_sha256(path) != expected:
        return f"corrupt: {path.name}'s sha256 differs from its manifest, exported again"
    return None


def _on_cpu(sam: Any) -> Any:
    """``sam`` itself when it is on the CPU in fp32 (the export's frame), else refused."""
    first = next(sam.parameters())
    if first.device.type != "cpu" or first.dtype != torch.float32:
        raise ExportError(f"export needs the model on the CPU in float32, it is on {first.device} in {first.dtype}")
    return sam


def export_folder(hub: Any, name: str) -> Path:
    """Where the exports of hub model ``name`` are kept: ``exports/`` in its weights folder; for tiny
    models, or a model put into the hub without a weights folder, ``<weights dir>/exports/<name>``
    (file names carry the weights' checksum, so models never share a file by mistake).
    ``VISION_EXPORTS_DIR`` puts them in ``$VISION_EXPORTS_DIR/<name>`` instead (a read-only weights
    folder, tests)."""
    from vision import weights

    if os.environ.get("VISION_EXPORTS_DIR"):
        return Path(os.environ["VISION_EXPORTS_DIR"]) / name
    if not getattr(hub, "tiny", False):
        try:
            return weights.resolve(name, getattr(hub, "weight_paths", {}).get(name), download=False) / "exports"
        except weights.WeightsError:
            pass
    return weights.weights_dir() / "exports" / (f"{name}-tiny" if getattr(hub, "tiny", False) else name)
