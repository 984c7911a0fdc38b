"""The model hub: the single owner of every foundation model.

Engines ask ``hub.get(name)`` and receive the one shared instance of that model, loaded lazily on first
use, on the best device (cuda > mps > cpu, or ``VISION_DEVICE``), with the dtype policy of
:meth:`ModelHub.dtype_for`. Two threads asking for the same model at once load it once. In tiny mode
(``ModelHub(tiny=True)``, ``--tiny`` or ``VISION_TINY=1``) every name maps to a tiny random-weight
model of the same class (see :mod:`vision.tiny`).

An optional memory budget (GiB of accelerator memory) moves the least recently used models to the CPU
when a newly requested one would not fit; asking for an offloaded model moves it back.

Names (``hub.names()``): dinov2_b14, dinov2_l14, dino_b16, dino_b8, clip_b16, metaclip_b16, clip_h14, clip_g14,
clip_tokenizer, sam_t, sam_b, sam_h, sam2_tiny, sam2_small, sam2_base_plus, sam2_large, mask2former,
mask2former_processor,
sd15_unet, sd15_vae, sd15_text_encoder, sd15_tokenizer, sd15_scheduler, sdxl_unet, sdxl_vae,
sdxl_text_encoder, sdxl_text_encoder_2, sdxl_tokenizer, sdxl_tokenizer_2, sdxl_scheduler,
ip_adapter_sd15, ip_image_encoder_h, ip_adapter_sdxl, ip_image_encoder_bigg, lcm_lora_sd15, lcm_lora_sdxl,
realvisxl_unet,
realvisxl_vae, realvisxl_text_encoder, realvisxl_text_encoder_2, controlnet_canny_sd15, controlnet_depth_sd15,
controlnet_canny_sdxl, controlnet_depth_sdxl, depth_anything_v2_small, sd35_medium_transformer,
sd35_large_transformer, sd35_vae, sd35_text_encoder, sd35_text_encoder_2, sd35_text_encoder_3, sd35_tokenizer_3,
sd35_scheduler.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vision import builders, tiny, weights

Builder = Callable[[Path, str, torch.dtype], Any]

MAX_USER_MODELS = 3  # user checkpoints / ControlNets kept loaded at once (an SDXL checkpoint is ~7 GB in fp16)

# Every SAM the hub holds (all ``segment_anything`` ``Sam`` objects), lightest first. ``sam_t`` has
# MobileSAM's TinyViT encoder: no ViT attention blocks (Trident's global aggregation needs them).
SAM_MODELS = ("sam_t", "sam_b", "sam_h")


@dataclass(frozen=True)
class ModelEntry:
    """How to make one model. ``weights`` names its :mod:`vision.weights` entry; ``None`` means the
    model needs no download and ``local`` builds it in both modes. ``tiny`` receives the hub (an
    adapter's tiny weights are shaped after the tiny UNet)."""

    name: str
    tiny: Callable[[ModelHub], Any]
    build: Builder | None = None
    weights: str | None = None
    local: Callable[[], Any] | None = None
    keep_fp32: bool = False  # SAM: fp16 SAM-H produces garbage masks
    bf16: bool = False  # SD3.5: bfloat16 on CUDA, as published (its T5 overflows in fp16)


def _t(fn: Callable[[], Any]) -> Callable[[ModelHub], Any]:
    return lambda hub: fn()


def _entries() -> dict[str, ModelEntry]:
    entries = [*_vision_entries(), *_diffusion_entries(), *_shared_entries(), *_generation_entries()]
    return {entry.name: entry for entry in entries}


def _vision_entries() -> list[ModelEntry]:
    """The segmentation engines' feature models, CLIPs and SAMs."""
    b = builders
    return [
        ModelEntry("dinov2_b14", _t(tiny.dinov2_b14), b.dinov2, "dinov2_b14"),
        ModelEntry("dinov2_l14", _t(tiny.dinov2_l14), b.dinov2, "dinov2_l14"),
        ModelEntry("dino_b16", _t(tiny.dino_b16), b.dino_v1, "dino_b16"),
        ModelEntry("dino_b8", _t(tiny.dino_b8), b.dino_v1, "dino_b8"),
        ModelEntry("metaclip_b16", _t(tiny.clip_b16), b.open_clip_model("ViT-B-16-quickgelu"), "metaclip_b16"),
        ModelEntry("mask2former", _t(tiny.mask2former), b.mask2former, "mask2former"),
        ModelEntry("mask2former_processor", _t(tiny.mask2former_processor), b.mask2former_processor, "mask2former"),
        ModelEntry("clip_b16", _t(tiny.clip_b16), b.open_clip_model("ViT-B-16-quickgelu"), "clip_b16"),
        ModelEntry("clip_h14", _t(tiny.clip_h14), b.open_clip_model("ViT-H-14"), "clip_h14"),
        ModelEntry("clip_g14", _t(tiny.clip_g14), b.open_clip_model("ViT-g-14"), "clip_g14"),  # CLIP scorer
        ModelEntry("sam_t", _t(tiny.sam_t), b.sam_t, "sam_t", keep_fp32=True),
        ModelEntry("sam_b", _t(tiny.sam_b), b.sam("vit_b"), "sam_b", keep_fp32=True),
        ModelEntry("sam_h", _t(tiny.sam_h), b.sam("vit_h"), "sam_h", keep_fp32=True),
        *[ModelEntry(f"sam2_{size}", _t(tiny.sam2), b.sam2_video, f"sam2_{size}", keep_fp32=True)
          for size in ("tiny", "small", "base_plus", "large")],  # SAM 2.1 video models (the video engine)
    ]


def _diffusion_entries() -> list[ModelEntry]:
    """Stable Diffusion 1.5 / SDXL / RealVisXL modules and the IP-Adapters and LCM-LoRAs of Story."""
    b = builders
    return [
        ModelEntry("sd15_unet", _t(tiny.sd15_unet), b.diffusers_model("UNet2DConditionModel", "unet"), "sd15_unet"),
        ModelEntry("sd15_vae", _t(tiny.sd15_vae), b.diffusers_model("AutoencoderKL", "vae"), "sd15_vae"),
        ModelEntry("sd15_text_encoder", _t(tiny.sd15_text_encoder),
                   b.transformers_model("CLIPTextModel", "text_encoder"), "sd15_text_encoder"),
        ModelEntry("sdxl_unet", _t(tiny.sdxl_unet), b.diffusers_model("UNet2DConditionModel", "unet"), "sdxl_unet"),
        ModelEntry("sdxl_vae", _t(tiny.sdxl_vae), b.diffusers_model("AutoencoderKL", "vae", variant=None), "sdxl_vae"),
        ModelEntry("sdxl_text_encoder", _t(tiny.sdxl_text_encoder),
                   b.transformers_model("CLIPTextModel", "text_encoder"), "sdxl_text_encoder"),
        ModelEntry("sdxl_text_encoder_2", _t(tiny.sdxl_text_encoder_2),
                   b.transformers_model("CLIPTextModelWithProjection", "text_encoder_2"), "sdxl_text_encoder_2"),
        ModelEntry("ip_adapter_sd15",
                   lambda hub: tiny.ip_adapter_state_dict(hub.get("sd15_unet"), tiny.TINY_IMAGE_EMBED),
                   b.ip_adapter_weights("models/ip-adapter_sd15.safetensors"), "ip_adapter_sd15"),
        ModelEntry("ip_image_encoder_h", _t(tiny.ip_image_encoder_h),
                   b.transformers_model("CLIPVisionModelWithProjection", "models/image_encoder", variant=None),
                   "ip_image_encoder_h"),
        ModelEntry("ip_adapter_sdxl",
                   lambda hub: tiny.ip_adapter_state_dict(hub.get("sdxl_unet"), tiny.TINY_IMAGE_EMBED),
                   b.ip_adapter_weights("sdxl_models/ip-adapter_sdxl.safetensors"), "ip_adapter_sdxl"),
        ModelEntry("ip_image_encoder_bigg", _t(tiny.ip_image_encoder_bigg),
                   b.transformers_model("CLIPVisionModelWithProjection", "sdxl_models/image_encoder", variant=None),
                   "ip_image_encoder_bigg"),
        # LCM-LoRAs of Story's fast preset: the object is the LoRA file's path (models.loras_applied reads it)
        ModelEntry("lcm_lora_sd15", lambda hub: tiny.lcm_lora_file(hub.get("sd15_unet")),
                   b.weights_file("pytorch_lora_weights.safetensors"), "lcm_lora_sd15"),
        ModelEntry("lcm_lora_sdxl", lambda hub: tiny.lcm_lora_file(hub.get("sdxl_unet")),
                   b.weights_file("pytorch_lora_weights.safetensors"), "lcm_lora_sdxl"),
        # RealVisXL V4.0: SDXL's architecture (tiny: the tiny SDXL models), tokenizers and scheduler shared
        ModelEntry("realvisxl_unet", _t(tiny.sdxl_unet), b.diffusers_model("UNet2DConditionModel", "unet"),
                   "realvisxl_unet"),
        ModelEntry("realvisxl_vae", _t(tiny.sdxl_vae), b.diffusers_model("AutoencoderKL", "vae", variant=None),
                   "realvisxl_vae"),
        ModelEntry("realvisxl_text_encoder", _t(tiny.sdxl_text_encoder),
                   b.transformers_model("CLIPTextModel", "text_encoder"), "realvisxl_text_encoder"),
        ModelEntry("realvisxl_text_encoder_2", _t(tiny.sdxl_text_encoder_2),
                   b.transformers_model("CLIPTextModelWithProjection", "text_encoder_2"), "realvisxl_text_encoder_2"),
    ]


def _shared_entries() -> list[ModelEntry]:
    """Tokenizers and schedulers: built locally (no weights), shared by the models that use them."""
    b = builders
    shared = {
        "clip_tokenizer": lambda: __import__("open_clip").get_tokenizer("ViT-B-16"),
        "sd15_tokenizer": b.clip_tokenizer,
        "sdxl_tokenizer": b.clip_tokenizer,
        "sdxl_tokenizer_2": lambda: b.clip_tokenizer(pad_token="!"),
        "sd15_scheduler": b.sd_scheduler,
        "sdxl_scheduler": b.sd_scheduler,
        "sd35_scheduler": b.sd3_scheduler,
    }
    return [ModelEntry(name, tiny=_t(fn), local=fn) for name, fn in shared.items()]


def _generation_entries() -> list[ModelEntry]:
    """The Generate engine's ControlNets, depth estimator and SD3.5 modules (#26)."""
    b = builders
    sd3_transformer = b.diffusers_model("SD3Transformer2DModel", "transformer", None)
    return [
        # ControlNets and the depth estimator of the Generate engine's control input (#26)
        ModelEntry("controlnet_canny_sd15", _t(tiny.controlnet_sd15), b.diffusers_model("ControlNetModel", None, None),
                   "controlnet_canny_sd15"),
        ModelEntry("controlnet_depth_sd15", _t(tiny.controlnet_sd15), b.diffusers_model("ControlNetModel", None, None),
                   "controlnet_depth_sd15"),
        ModelEntry("controlnet_canny_sdxl", _t(tiny.controlnet_sdxl), b.diffusers_model("ControlNetModel", None),
                   "controlnet_canny_sdxl"),
        ModelEntry("controlnet_depth_sdxl", _t(tiny.controlnet_sdxl), b.diffusers_model("ControlNetModel", None),
                   "controlnet_depth_sdxl"),
        ModelEntry("depth_anything_v2_small", _t(tiny.depth_anything_v2_small),
                   b.transformers_model("AutoModelForDepthEstimation", "", variant=None), "depth_anything_v2_small"),
        # Stable Diffusion 3.5 Medium / Large
        ModelEntry("sd35_medium_transformer", _t(tiny.sd35_transformer), sd3_transformer, "sd35_medium_transformer",
                   bf16=True),
        ModelEntry("sd35_large_transformer", _t(tiny.sd35_large_transformer), sd3_transformer,
                   "sd35_large_transformer", bf16=True),
        ModelEntry("sd35_vae", _t(tiny.sd35_vae), b.diffusers_model("AutoencoderKL", "vae", None), "sd35_vae",
                   bf16=True),
        ModelEntry("sd35_text_encoder", _t(tiny.sd35_text_encoder),
                   b.transformers_model("CLIPTextModelWithProjection", "text_encoder", None), "sd35_text_encoder",
                   bf16=True),
        ModelEntry("sd35_text_encoder_2", _t(tiny.sdxl_text_encoder_2),
                   b.transformers_model("CLIPTextModelWithProjection", "text_encoder_2", None), "sd35_text_encoder_2",
                   bf16=True),
        ModelEntry("sd35_text_encoder_3", _t(tiny.sd35_text_encoder_3),
                   b.transformers_model("T5EncoderModel", "text_encoder_3", None), "sd35_text_encoder_3", bf16=True),
        ModelEntry("sd35_tokenizer_3", _t(tiny.sd35_tokenizer_3), b.t5_tokenizer, "sd35_tokenizer_3"),
    ]


ENTRIES = _entries()


def best_device() -> str:
    if os.environ.get("VISION_DEVICE"):
        return os.environ["VISION_DEVICE"]
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def module_bytes(obj: Any) -> int:
    """Bytes held by a model's parameters and buffers (or a state dict's tensors); 0 for other objects."""
    if isinstance(obj, torch.nn.Module):
        return sum(t.numel() * t.element_size() for t in (*obj.parameters(), *obj.buffers()))
    if isinstance(obj, dict):
        return sum(module_bytes(v) if isinstance(v, dict) else v.numel() * v.element_size()
                   for v in obj.values() if isinstance(v, (dict, torch.Tensor)))
    return 0


@dataclass
class _Slot:
    obj: Any
    last_used: float
    offloaded: bool = False


class ModelHub:
    """Loads each model once and shares it. See the module docstring for names and policies."""

    def __init__(self, tiny: bool = False, device: str | None = None, memory_budget_gb: float | None = None,
                 weight_paths: dict[str, str] | None = None):
        self.tiny = tiny
        self.device = device or best_device()
        self.memory_budget_bytes = None if memory_budget_gb is None else int(memory_budget_gb * 2**30)
        self.weight_paths = dict(weight_paths or {})
        self.load_counts: dict[str, int] = {}
        self._slots: dict[str, _Slot] = {}
        self._locks = {name: threading.Lock() for name in ENTRIES}
        self._budget_lock = threading.RLock()
        self._user: dict[str, str] = {}  # key of a user model -> its source (file, folder or repo)

    @staticmethod
    def names() -> list[str]:
        return list(ENTRIES)

    def dtype_for(self, name: str) -> torch.dtype:
        """fp16 on CUDA, fp32 elsewhere; SAM stays fp32 everywhere."""
        if self.device.startswith("cuda") and ENTRIES[name].bf16:
            return torch.bfloat16
        if self.device.startswith("cuda") and not ENTRIES[name].keep_fp32:
            return torch.float16
        return torch.float32

    def get(self, name: str) -> Any:
        """The shared instance of model ``name``, loading it on first use (thread-safe)."""
        if name not in ENTRIES:
            raise KeyError(f"unknown model {name!r}; known: {', '.join(ENTRIES)}")
        with self._locks[name]:
            slot = self._slots.get(name)
            if slot is None:
                obj = self._load(ENTRIES[name])
                slot = self._slots[name] = _Slot(obj, time.monotonic())
                self.load_counts[name] = self.load_counts.get(name, 0) + 1
            slot.last_used = time.monotonic()
            self._fit_budget(name)
            return slot.obj

    def _load(self, entry: ModelEntry) -> Any:
        if entry.local is not None:
            return entry.local()
        dtype = self.dtype_for(entry.name)
        if self.tiny:
            return _to(entry.tiny(self), self.device, dtype)
        folder = weights.resolve(entry.weights, self.weight_paths.get(entry.name))
        try:
            model = entry.build(folder, self.device, dtype)
        except weights.WeightsError:  # the builder's own diagnosis (e.g. a failed checksum)
            raise
        except Exception as err:  # a present file that fails to load is damaged, never silently used
            raise weights.corrupt(entry.name, folder, err) from err
        return model.eval() if isinstance(model, torch.nn.Module) else model

    def _fit_budget(self, current: str) -> None:
        """Bring ``current`` to the device and offload least recently used models until under budget."""
        with self._budget_lock:
            slot = self._slots[current]
            if slot.offloaded:
                _to(slot.obj, self.device, None)
                slot.offloaded = False
            if self.memory_budget_bytes is None:
                return
            resident = sorted((s.last_used, n) for n, s in self._slots.items() if not s.offloaded and n != current)
            used = sum(module_bytes(s.obj) for s in self._slots.values() if not s.offloaded)
            for _, victim in resident:
                if used <= self.memory_budget_bytes:
                    break
                victim_slot = self._slots[victim]
                _to(victim_slot.obj, "cpu", None)
                victim_slot.offloaded = True
                used -= module_bytes(victim_slot.obj)

    def put(self, name: str, model: Any) -> None:
        """Install a pre-built model under ``name`` (benchmarks inject full-size random-weight models)."""
        if name not in ENTRIES:
            raise KeyError(f"unknown model {name!r}; known: {', '.join(ENTRIES)}")
        with self._locks[name]:
            self._slots[name] = _Slot(model, time.monotonic())

    def offload(self, name: str) -> None:
        """Move loaded model ``name`` to the CPU until its next :meth:`get`, which brings it back (an engine
        frees accelerator memory between two uses; nothing happens when it is not loaded)."""
        with self._budget_lock:
            slot = self._slots.get(name)
            if slot is not None and not slot.offloaded:
                _to(slot.obj, "cpu", None)
                slot.offloaded = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def is_loaded(self, name: str) -> bool:
        return name in self._slots

    def unload(self, name: str) -> None:
        with self._lock_of(name):
            self._slots.pop(name, None)
            self._user.pop(name, None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- the user's own models (checkpoints, LoRA-free modules, ControlNets from their files) --------------

    def get_user(self, key: str, load: Callable[[], Any], source: str) -> Any:
        """A model from the user's own file, folder or repo, under ``key`` (e.g. ``checkpoint:<path>``):
        loaded once by ``load()`` and shared like the registry's models, in the memory budget, listed by
        :meth:`status` (``source`` says where it came from). At most :data:`MAX_USER_MODELS` stay loaded:
        loading one more drops the least recently used (its memory is freed when no run holds it)."""
        with self._lock_of(key):
            slot = self._slots.get(key)
            if slot is None:
                obj = load()
                slot = self._slots[key] = _Slot(obj, time.monotonic())
                self._user[key] = source
                self.load_counts[key] = self.load_counts.get(key, 0) + 1
            slot.last_used = time.monotonic()
        for stale in sorted(self._user, key=lambda k: self._slots[k].last_used)[:-MAX_USER_MODELS]:
            self.unload(stale)
        self._fit_budget(key)
        return slot.obj

    def _lock_of(self, name: str) -> threading.Lock:
        with self._budget_lock:
            return self._locks.setdefault(name, threading.Lock())

    def status(self) -> list[dict[str, Any]]:
        """One row per known model: loaded?, device, dtype, memory (MiB), weights present?"""
        rows = []
        for name, entry in ENTRIES.items():
            slot = self._slots.get(name)
            obj = slot.obj if slot else None
            rows.append({
                "name": name,
                "loaded": slot is not None,
                "device": ("cpu (offloaded)" if slot.offloaded else _device_of(obj)) if slot else "",
                "dtype": str(_dtype_of(obj)).replace("torch.", "") if slot else "",
                "memory_mb": round(module_bytes(obj) / 2**20, 1) if slot else 0.0,
                "weights": "tiny (random)" if self.tiny else
                ("bundled" if entry.weights is None else weights.status(entry.weights)),
            })
        for key, source in list(self._user.items()):
            slot = self._slots.get(key)
            if slot is not None:
                rows.append({"name": key, "loaded": True, "device": _device_of(slot.obj),
                             "dtype": str(_dtype_of(slot.obj)).replace("torch.", ""),
                             "memory_mb": round(module_bytes(slot.obj) / 2**20, 1), "weights": f"user: {source}"})
        return rows


def _to(obj: Any, device: str, dtype: torch.dtype | None) -> Any:
    """Move a module or a (nested) state dict; floating tensors also change dtype when given."""
    if isinstance(obj, torch.nn.Module):
        obj.to(device)
        if dtype is not None and _first_tensor(obj) is not None and _first_tensor(obj).dtype != dtype:
            obj.to(dtype)
        return obj
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, (dict, torch.Tensor)):
                obj[key] = _to(value, device, dtype)
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device=device, dtype=dtype if dtype and obj.is_floating_point() else obj.dtype)
    return obj


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.nn.Module):
        return next(iter(obj.parameters()), None)
    if isinstance(obj, dict):
        for value in obj.values():
            found = value if isinstance(value, torch.Tensor) else _first_tensor(value)
            if found is not None:
                return found
    return None


def _device_of(obj: Any) -> str:
    t = _first_tensor(obj)
    return str(t.device) if t is not None else "n/a"


def _dtype_of(obj: Any) -> str:
    t = _first_tensor(obj)
    return str(t.dtype) if t is not None else "n/a"


_model_locks: dict[int, threading.RLock] = {}
_model_locks_guard = threading.Lock()


def model_lock(model: Any) -> threading.RLock:
    """The one re-entrant lock of a shared model object.

    Engines hold it while they run a shared model whose state they change for the duration (hooks,
    an IP-Adapter on the UNet, a patched attention that records SAM's last block) and while they run a
    model another engine may change, so two threads of the app or a library user never see each
    other's temporary changes. Re-entrant: an engine that holds it may call code that takes it again.
    """
    with _model_locks_guard:
        return _model_locks.setdefault(id(model), threading.RLock())


_default_hub: ModelHub | None = None
_default_lock = threading.Lock()


def tiny_requested() -> bool:
    return os.environ.get("VISION_TINY", "").lower() in ("1", "true", "yes")


def get_hub() -> ModelHub:
    """The process-wide hub (tiny when ``VISION_TINY=1``); created on first use."""
    global _default_hub
    with _default_lock:
        if _default_hub is None:
            budget = os.environ.get("VISION_MEMORY_BUDGET_GB")
            _default_hub = ModelHub(tiny=tiny_requested(), memory_budget_gb=float(budget) if budget else None)
        return _default_hub


def set_hub(hub: ModelHub) -> ModelHub:
    """Replace the process-wide hub (the CLI and app do this for ``--tiny`` / ``--device``)."""
    global _default_hub
    with _default_lock:
        _default_hub = hub
    return hub
