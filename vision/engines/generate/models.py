"""The user's own models for SD1.5 / SDXL pipelines: checkpoints and LoRAs (a small public API).

::

    from vision.engines.generate.models import Lora, loras_applied, pipeline_parts
    from vision.engines.generate.pipelines import assemble_pipeline

    parts, arch, info = pipeline_parts(hub, "sd15", model="my_model.safetensors")  # or a folder / repo id
    pipe = assemble_pipeline(arch, parts, "ddim")          # the checkpoint's modules + the base's tokenizers
    with loras_applied(pipe, [Lora.parse("ink.safetensors:0.8")]) as applied:   # PATH[:SCALE], diffusers'
        image = pipe("a fox").images[0]                    # LoRA loading; unloaded on exit, bit-identical
    info.record()                                          # source, kind, arch, detected, parts, sha256

A checkpoint is loaded once by the hub (``hub.get_user``: shared, in the memory budget, in the Models
tab). The hub keeps at most ``vision.hub.MAX_USER_MODELS`` user models; the base family's modules stay
loaded beside a checkpoint's (its missing parts, tokenizers and scheduler come from the base), and with
``VISION_MEMORY_BUDGET_GB`` set the hub moves the least recently used ones to the CPU when both do not
fit; without a budget an out-of-memory error says to set one.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

LORA_SCALE_RANGE = (-2.0, 2.0)  # beyond this a LoRA's weights dominate the model's (and slider LoRAs stay in it)


class ModelFileError(ValueError):
    """A user's model file or repo that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class Lora:
    """One LoRA: a ``.safetensors`` file (or a Hub repo id) and its scale (1.0: as trained)."""

    path: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Lora:
        """``PATH[:SCALE]``; a Windows drive colon or a path with colons but no number after the last one
        is all path."""
        text = str(text).strip()
        if not text:
            raise ValueError("an empty LoRA path")
        head, sep, tail = text.rpartition(":")
        if sep and head:
            try:
                return cls(head, float(tail))
            except ValueError:
                pass
        return cls(text)

    def __str__(self) -> str:
        return f"{self.path}:{self.scale:g}"


# ------------------------------------------------------------------------------------------ checkpoints
CHECKPOINT_PARTS = {"sd15": ("unet", "vae", "text_encoder"), "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2")}
_PART_PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                  ("sd15", "text_encoder"): "cond_stage_model.transformer.",
                  ("sdxl", "text_encoder"): "conditioner.embedders.0.transformer.",
                  ("sdxl", "text_encoder_2"): "conditioner.embedders.1.model."}


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a checkpoint came from and what it is (what records state).

    ``kind``: ``single-file`` | ``diffusers-folder`` | ``hub-repo``; ``arch``: ``sd15`` | ``sdxl``;
    ``detected``: how the architecture was recognised; ``parts``: the modules the checkpoint provides
    (others come from the family's base model); ``sha256``: the first 16 hex digits of the file's sha256
    (a folder / repo: of its UNet weights file).
    """

    source: str
    kind: str
    arch: str
    detected: str
    parts: tuple[str, ...]
    sha256: str

    def record(self) -> dict:
        return {"source": self.source, "kind": self.kind, "arch": self.arch, "detected": self.detected,
                "parts": list(self.parts), "sha256": self.sha256}


def checkpoint_kind(source: str) -> str:
    """``single-file`` (an existing file), ``diffusers-folder`` (an existing folder) or ``hub-repo``
    (``owner/name`` that is no local path); ModelFileError for anything else."""
    path = Path(source).expanduser()
    if path.is_file():
        return "single-file"
    if path.is_dir():
        return "diffusers-folder"
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.endswith((".safetensors", ".ckpt")):
        return "hub-repo"
    raise ModelFileError(f"checkpoint {source}: no such file or folder (and not a Hub repo id 'owner/name')")


class CheckpointModules(torch.nn.ModuleDict):
    """A loaded checkpoint: its modules by pipeline argument name (``unet``, ``vae``, ``text_encoder``,
    ``text_encoder_2``; only those it holds) and its :class:`CheckpointInfo` (``.info``)."""

    def __init__(self, modules: dict[str, torch.nn.Module], info: CheckpointInfo):
        super().__init__(modules)
        self.info = info


def load_checkpoint(hub: Any, source: str) -> CheckpointModules:
    """The modules of an SD1.5 / SDXL checkpoint (single ``.safetensors`` file in the original key layout,
    diffusers folder, or Hub repo id), loaded once by the hub (``hub.get_user``) on its device and dtype.

    ModelFileError names the file and the reason: not a checkpoint, an unsupported architecture (named), a
    LoRA or ControlNet given as a checkpoint, a gated or unreachable repo. Nothing loaded before is changed.
    """
    source = str(source).strip()
    kind = checkpoint_kind(source)
    key = f"checkpoint:{source}"
    if kind != "hub-repo":  # a file changed on disk is loaded again
        path = Path(source).expanduser().resolve()
        key = f"checkpoint:{path}@{path.stat().st_mtime_ns}"
    loaders = {"single-file": _load_single_file, "diffusers-folder": _load_folder, "hub-repo": _load_repo}
    return hub.get_user(key, lambda: loaders[kind](hub, source), source)


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a ``.safetensors`` file, from its header only (no weights read)."""
    from safetensors import safe_open

    if path.suffix.lower() != ".safetensors":
        raise ModelFileError(f"{path}: single-file models are read as .safetensors only (a pickled .ckpt / .pt "
                             "file can run code when loaded): convert it to .safetensors, or give its diffusers folder")
    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise ModelFileError(f"{path}: not a model file: it cannot be read as safetensors ({err})") from None


def classify_checkpoint(shapes: dict[str, tuple[int, ...]], path: Path) -> tuple[str, str, tuple[str, ...]]:
    """(arch, how it was recognised, the parts it holds) of an original-layout checkpoint's tensor names,
    or ModelFileError naming what the file is instead. Keys on module prefixes (not on layer counts, as
    diffusers' ``infer_diffusers_model_type`` does), so pruned and tiny checkpoints are recognised too."""
    keys = list(shapes)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    unet = "model.diffusion_model."
    if any(".lora_down." in k or ".lora_A." in k or k.startswith("lora_") for k in keys):
        raise ModelFileError(f"{path} is a LoRA, not a checkpoint: add it as a LoRA (--lora) instead")
    if has("control_model.") or has("controlnet_cond_embedding.") or has("input_hint_block."):
        raise ModelFileError(f"{path} is a ControlNet, not a checkpoint: give it as the ControlNet (--controlnet)")
    if has(unet + "joint_blocks."):
        raise ModelFileError(f"{path} is an SD3 / SD3.5 checkpoint, unsupported as a custom model (SD1.5 and SDXL "
                             "are): use the family sd35_medium / sd35_large")
    if has("double_blocks.") or has(unet + "double_blocks."):
        raise ModelFileError(f"{path} is a Flux checkpoint, an unsupported architecture (SD1.5 and SDXL are)")
    if not has(unet + "input_blocks."):
        what = ("a diffusers-layout UNet only: give its diffusers folder (with model_index.json) instead"
                if "conv_in.weight" in shapes and has("down_blocks.") else
                f"no Stable Diffusion checkpoint (no {unet}input_blocks.* tensors among its {len(keys)}"
                + (f", e.g. {keys[0]}" if keys else "") + ")")
        raise ModelFileError(f"{path} is {what}")
    channels = shapes.get(unet + "input_blocks.0.0.weight", (0, 0))[1]
    if channels != 4:
        raise ModelFileError(f"{path} has a UNet with {channels} input channels (an inpainting or other variant), "
                             "unsupported: SD1.5 / SDXL text-to-image UNets take 4")
    if has("cond_stage_model.model."):
        raise ModelFileError(f"{path} is an SD2.x checkpoint (OpenCLIP ViT-H text encoder), unsupported (SD1.5 and "
                             "SDXL are)")
    if has("conditioner.embedders.0.model."):
        raise ModelFileError(f"{path} is an SDXL refiner checkpoint, unsupported (SDXL base models are)")
    arch = "sdxl" if has(unet + "label_emb.") else "sd15"
    parts = tuple(p for p in CHECKPOINT_PARTS[arch] if has(_PART_PREFIXES.get((arch, p), _PART_PREFIXES.get(p, "?"))))
    name = {"sd15": "SD1.x", "sdxl": "SDXL"}[arch]
    return arch, f"{name} single file, original key layout ({', '.join(parts)})", parts


def _check_width(hub: Any, arch: str, cross_width: int | None, source: str) -> None:
    """The UNet's cross-attention width must be the architecture's (768 SD1.x, 2048 SDXL; 1024 is SD2.x)."""
    from vision.engines.generate.arch import module_configs

    want = module_configs(hub, arch)["unet"]["cross_attention_dim"]
    if cross_width is not None and cross_width != want:
        sd2 = " (1024 is SD2.x)" if cross_width == 1024 else ""
        raise ModelFileError(f"{source}: its UNet's text width is {cross_width}{sd2}, this {arch} architecture's is "
                             f"{want}: an unsupported architecture")


def _dtype(hub: Any) -> torch.dtype:
    return hub.dtype_for("sd15_unet")


def _base_parts(hub: Any, arch: str, present: tuple[str, ...]) -> dict[str, Any]:
    """The base family's tokenizers and scheduler, and its modules for the parts a checkpoint lacks."""
    from vision.engines.generate.arch import BASE_FAMILY
    from vision.engines.generate.config import family_spec

    spec = family_spec(BASE_FAMILY[arch])
    names = [k for k in ("tokenizer", "tokenizer_2", "scheduler") if k in spec]
    names += [p for p in CHECKPOINT_PARTS[arch] if p not in present]
    return {k: hub.get(spec[k]) for k in names}


def _load_single_file(hub: Any, source: str) -> CheckpointModules:
    import diffusers

    from vision.engines.generate.arch import PIPELINES, config_folder
    from vision.weights import file_digest

    path = Path(source).expanduser().resolve()
    shapes = read_shapes(path)
    arch, detected, parts = classify_checkpoint(shapes, path)
    widths = [s[1] for k, s in shapes.items()
              if k.startswith("model.diffusion_model.") and k.endswith("attn2.to_k.weight")]
    _check_width(hub, arch, widths[0] if widths else None, str(path))
    extra = {k: v for k, v in _base_parts(hub, arch, parts).items()}
    if arch == "sd15":
        extra.update(safety_checker=None, feature_extractor=None)
    try:
        pipe = getattr(diffusers, PIPELINES[arch]).from_single_file(
            str(path), config=str(config_folder(hub, arch)), local_files_only=True, torch_dtype=_dtype(hub), **extra)
    except Exception as err:  # diffusers' conversion errors: a damaged or mislabelled file
        raise ModelFileError(f"{path}: a {detected} checkpoint that does not load "
                             f"({type(err).__name__}: {err})") from err
    info = CheckpointInfo(str(source), "single-file", arch, detected, parts, file_digest(path, "sha256")[:16])
    return CheckpointModules({p: getattr(pipe, p) for p in parts}, info).to(hub.device).eval()


FOLDER_PIPELINES = {"StableDiffusionPipeline": "sd15", "StableDiffusionImg2ImgPipeline": "sd15",
                    "StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl"}


def _load_folder(hub: Any, source: str, kind: str = "diffusers-folder", folder: str | None = None) -> CheckpointModules:
    import diffusers
    import transformers

    from vision.engines.generate.arch import _CLASSES
    from vision.weights import file_digest

    folder = Path(folder or source).expanduser()
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelFileError(f"{folder}: not a diffusers folder (no model_index.json)")
    index = json.loads(index_file.read_text(encoding="utf-8"))
    arch = FOLDER_PIPELINES.get(index.get("_class_name", ""))
    if arch is None:
        raise ModelFileError(f"{folder}: a {index.get('_class_name')!r} model, an unsupported architecture (SD1.5 "
                             f"and SDXL pipelines are: {', '.join(FOLDER_PIPELINES)})")
    unet_config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    _check_width(hub, arch, unet_config.get("cross_attention_dim"), str(folder))
    parts = tuple(p for p in CHECKPOINT_PARTS[arch] if (folder / p / "config.json").is_file())
    modules = {}
    for part in parts:
        library, name = _CLASSES[part]
        cls = getattr(diffusers if library == "diffusers" else transformers, name)
        try:
            modules[part] = cls.from_pretrained(folder / part, torch_dtype=_dtype(hub), variant=_variant(folder / part))
        except Exception as err:  # missing or damaged weight files
            raise ModelFileError(f"{folder / part}: does not load ({type(err).__name__}: {err})") from err
    weights = sorted((folder / "unet").glob("*.safetensors")) or sorted((folder / "unet").glob("*.bin"))
    digest = file_digest(weights[0], "sha256")[:16] if weights else ""
    detected = f"{index['_class_name']} ({kind}: {', '.join(parts)})"
    info = CheckpointInfo(source, kind, arch, detected, parts, digest)
    return CheckpointModules(modules, info).to(hub.device).eval()


def _variant(folder: Path) -> str | None:
    """``fp16`` when the folder holds only ``*.fp16.*`` weight files (diffusers' variant naming)."""
    files = [f.name for f in folder.iterdir() if f.suffix in (".safetensors", ".bin")]
    return "fp16" if files and all(".fp16." in f for f in files) else None


def _load_repo(hub: Any, repo_id: str) -> CheckpointModules:
    """A Hub repo's diffusers layout, downloaded to the Hugging Face cache (or found there offline)."""
    import os

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = os.environ.get("VISION_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    patterns = ["model_index.json", *[f"{p}/*" for p in ("unet", "vae", "text_encoder", "text_encoder_2")]]
    try:
        folder = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline)
    except GatedRepoError:
        raise ModelFileError(f"Hub repo {repo_id} is gated: accept its licence on its page while logged in, then "
                             "give this machine a token (HF_TOKEN=... or `hf auth login`)") from None
    except RepositoryNotFoundError:
        raise ModelFileError(f"Hub repo {repo_id} does not exist (or is private: set HF_TOKEN)") from None
    except (LocalEntryNotFoundError, OSError) as err:
        raise ModelFileError(f"Hub repo {repo_id} is not in the Hugging Face cache and cannot be downloaded "
                             f"{'(offline)' if offline else f'({type(err).__name__})'}: download it elsewhere "
                             "(`hf download REPO`) and give its folder instead") from None
    return _load_folder(hub, repo_id, "hub-repo", folder)


def pipeline_parts(hub: Any, family: str, model: str | None = None
                   ) -> tuple[dict[str, Any], str, CheckpointInfo | None]:
    """(modules by pipeline argument name, architecture, checkpoint info or None) of a family, or of a
    checkpoint ``model`` completed by its architecture's base family (tokenizers, scheduler, the parts the
    checkpoint lacks). When the checkpoint's architecture is not the family's, the checkpoint's wins."""
    from vision.engines.generate.arch import BASE_FAMILY
    from vision.engines.generate.config import family_spec
    from vision.engines.generate.pipelines import family_parts

    if not model:
        return family_parts(hub, family), family_spec(family)["arch"], None
    loaded = load_checkpoint(hub, model)
    arch = loaded.info.arch
    base = family if family_spec(family)["arch"] == arch else BASE_FAMILY[arch]
    parts = family_parts(hub, base, skip=tuple(loaded.keys()))
    parts.update(loaded.items())
    return parts, arch, loaded.info


# ------------------------------------------------------------------------------------------------ LoRAs
def lora_problems(loras: Sequence[Lora | str], field: str = "loras") -> list[str]:
    """One message per LoRA that is no ``PATH[:SCALE]`` or whose scale is out of :data:`LORA_SCALE_RANGE`
    (the config checks of every engine that takes LoRAs)."""
    out = []
    low, high = LORA_SCALE_RANGE
    for lora in loras:
        try:
            lora = lora if isinstance(lora, Lora) else Lora.parse(lora)
        except ValueError as err:
            out.append(f"{field}: {err}")
            continue
        if not low <= lora.scale <= high:
            out.append(f"{field}: scale {lora.scale:g} of {lora.path} is out of range {low:g}..{high:g}")
    return out


def read_lora(path: str) -> dict[str, torch.Tensor]:
    """A LoRA ``.safetensors`` file's tensors; ModelFileError when it is missing or no LoRA."""
    from safetensors.torch import load_file

    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelFileError(f"LoRA {path}: no such file")
    read_shapes(file)  # a .safetensors file, readable (its own message otherwise)
    state = load_file(str(file))
    if not any("lora" in k.lower() for k in state):
        raise ModelFileError(f"LoRA {path}: no LoRA tensors in it (no '*lora*' names among {len(state)}); a full "
                             "checkpoint goes in as the model (--model)")
    return state


@contextlib.contextmanager
def loras_applied(pipe: Any, loras: Sequence[Lora]) -> Iterator[list[dict]]:
    """Load ``loras`` into ``pipe`` with diffusers' own LoRA loading (one adapter per file, named
    ``lora0``, ``lora1``, ..., weighted by their scales with ``set_adapters``), yield what the record says
    of them (path, scale, sha256 prefix, adapter name, modules touched), and unload every adapter on the
    way out, also after an error, so the models are exactly as before (``unload_lora_weights``).

    The caller holds the model lock of the modules it shares (LoRAs change them for the duration).
    ModelFileError names a file that is missing, no LoRA, or made for another base model.
    """
    from vision.weights import file_digest

    applied: list[dict] = []
    try:
        for i, lora in enumerate(loras):
            name = f"lora{i}"
            state = read_lora(lora.path)
            try:
                pipe.load_lora_weights(state, adapter_name=name)
            except Exception as err:  # shapes or names of another architecture (diffusers / PEFT errors)
                raise ModelFileError(f"LoRA {lora.path} does not fit this model (a LoRA for another base model?): "
                                     f"{type(err).__name__}: {str(err)[:300]}") from None
            touched = sorted(m for m, names in pipe.get_list_adapters().items() if name in names)
            if not touched:
                raise ModelFileError(f"LoRA {lora.path} changed no layer of this model (its layer names are another "
                                     "base model's)")
            applied.append({"path": str(lora.path), "scale": lora.scale, "adapter": name, "modules": touched,
                            "sha256": file_digest(Path(lora.path).expanduser(), "sha256")[:16]})
        if applied:
            pipe.set_adapters([a["adapter"] for a in applied], adapter_weights=[a["scale"] for a in applied])
        yield applied
    finally:
        if loras:
            pipe.unload_lora_weights()
