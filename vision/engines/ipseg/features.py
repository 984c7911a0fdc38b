"""IPSeg's features on the grid: DINOv2 tokens, SD1.5 decoder maps (one pass or the reference's
overlapping crops), SAM's image embedding; prototypes and the fused similarity map.

**The grid.** Features are computed on a letterboxed square (DINOv2: 840 px -> 60x60 tokens; SD:
960 px -> 15/30/60 decoder maps) or, for SAM, on SAM's 1024 frame (64x64). Each map is cut back to the
cells that cover the real image and resized (nearest) to ``grid`` x ``grid``; from then on the grid
spans the *image* (cells are not square for non-square images). Which cells are kept and how the map is
resized differ by mode (:meth:`~vision.engines.ipseg.modes.ProductMode.valid_cells`, :func:`to_grid`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vision.common import stage
from vision.engines.ipseg.cascade import SamView
from vision.engines.ipseg.config import SD_FEATURES, IPSegConfig
from vision.engines.ipseg.modes import PRODUCT, ProductMode, mode_for
from vision.hub import model_lock
from vision.imaging import Letterbox, letterbox

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (module path in the UNet, feature name): SD1.5 decoder layers hooked for s5, s4, s3.
SD_HOOKS = (("up_blocks.0.resnets.1", "s5"), ("up_blocks.1.attentions.1", "s4"), ("up_blocks.2.attentions.1", "s3"))
SD_NATIVE_LATENT = 64  # SD1.5's latent side at its native 512 px: the reference's shared noise is this size


# ------------------------------------------------------------------------------------------------ grid
def reference_valid_region(height: int, width: int, n: int) -> tuple[slice, slice]:
    """Rows/columns of an ``n`` x ``n`` map of the letterboxed square that the reference keeps for an
    [H, W] image: ``kept = int(short / (long / n))`` cells across the short side, cut as
    ``[(n - kept) // 2, n - (n - kept) // 2)`` (one more than ``kept`` when ``n - kept`` is odd).
    A 480x640 image keeps 11 of 15 rows (s5), 22 of 30 (s4) and 46 of 60 (s3, DINOv2)."""
    full = slice(0, n)
    if height == width:
        return full, full
    kept = int(min(height, width) / (max(height, width) / n))
    start = (n - kept) // 2
    span = slice(start, n - start)
    return (span, full) if width > height else (full, span)


def to_grid(feature: torch.Tensor, rows: slice, cols: slice, grid: int, sampling: str) -> torch.Tensor:
    """Crop [C, n, n] to ``rows``/``cols`` and resize to [C, grid, grid] by nearest sampling: at cell
    centres (``"nearest-exact"``) or PyTorch's ``"nearest"`` (``floor(i * in / out)``, the reference's)."""
    crop = feature[:, rows, cols]
    if crop.shape[-2:] == (grid, grid):
        return crop
    return F.interpolate(crop[None].float(), size=(grid, grid), mode=sampling)[0].to(feature.dtype)


def crop_to_grid(feature: torch.Tensor, box: Letterbox, grid: int, mode: ProductMode = PRODUCT) -> torch.Tensor:
    """Feature map [C, n, n] of the letterboxed square -> [C, grid, grid] over the real image: the cells
    ``mode`` keeps (:meth:`ProductMode.valid_cells`) resized with its ``grid_sampling``."""
    rows, cols = mode.valid_cells(box, feature.shape[-1])
    return to_grid(feature, rows, cols, grid, mode.grid_sampling)


# ------------------------------------------------------------------------------------- SD decoder maps
class _FeaturesReady(Exception):
    """Raised by the last SD hook to end the UNet pass early (everything after it is unused)."""


def run_hooked_unet(unet: Any, sample: torch.Tensor, timestep: torch.Tensor,
                    encoder_hidden_states: torch.Tensor) -> dict[str, torch.Tensor]:
    """One UNet pass that returns the outputs of the :data:`SD_HOOKS` layers {"s5", "s4", "s3"}.

    Forward hooks are registered on the shared UNet for this call only and always removed (the UNet is
    shared with the generation engine); the pass ends right after the last hooked layer.
    """
    modules = dict(unet.named_modules())
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output)
            captured[name] = out.detach()
            if len(captured) == len(SD_HOOKS):
                raise _FeaturesReady

        return hook

    handles = [modules[path].register_forward_hook(hook_for(name)) for path, name in SD_HOOKS]
    try:
        unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)
    except _FeaturesReady:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for _, name in SD_HOOKS if name not in captured]
    if missing:
        raise RuntimeError(f"the UNet pass did not reach the hooked layer(s) {missing}")
    return {name: captured[name] for _, name in SD_HOOKS}


def slide_offsets(size: int, crop: int) -> list[int]:
    """Top (or left) pixel of each crop along one axis, as the reference's sliding window places them:
    stride = crop, the last crop pushed back inside the image (960 / 512 -> [0, 448])."""
    count = max(size - crop + crop - 1, 0) // crop + 1
    return [max(min(i * crop + crop, size) - crop, 0) for i in range(count)]


def average_crops(crops: Sequence[tuple[tuple[int, int], dict[str, torch.Tensor]]], size: int,
                  crop: int) -> dict[str, torch.Tensor]:
    """Assemble per-crop maps into maps of the whole ``size`` square, averaging where crops overlap.

    ``crops``: ((top, left) in pixels, {name: [1, C, m, m]}) per ``crop``-pixel crop. Each map is placed
    at its own resolution (stride = crop / m pixels per cell; offsets are multiples of it) and every
    cell is the mean of the crops covering it, as the reference's ``slide_forward`` does.
    Returns {name: [1, C, size / stride, size / stride]} float32.
    """
    out = {}
    for name, first in crops[0][1].items():
        m = first.shape[-1]
        stride = crop // m
        n = size // stride
        total = torch.zeros((1, first.shape[1], n, n), dtype=torch.float32, device=first.device)
        count = torch.zeros((1, 1, n, n), dtype=torch.float32, device=first.device)
        for (top, left), maps in crops:
            r, c = top // stride, left // stride
            total[..., r : r + m, c : c + m] += maps[name].float()
            count[..., r : r + m, c : c + m] += 1
        out[name] = total / count
    return out


# ------------------------------------------------------------------------------------- the extractor
class FeatureExtractor:
    """Computes an image's features on its grid from the hub's shared models, as ``config`` says."""

    def __init__(self, hub: Any, config: IPSegConfig):
        self.hub = hub
        self.config = config
        self.mode = mode_for(config)
        self._runner: Any = None  # the SAM runner (its backend), built on first use
        self._embedding: tuple[Any, torch.Tensor] | None = None  # (text encoder, empty-prompt embedding)
        self._scheduler = None

    def features(self, image: np.ndarray, timings: dict[str, float] | None = None, sam_view: SamView | None = None,
                 on_stage: Callable[[str], Any] | None = None) -> dict[str, torch.Tensor]:
        """{"dino": [768, g, g]} (+ {"s5", "s4", "s3"} with SD), or {"sam": [256, 64, 64]} for
        ``features="sam"`` (from ``sam_view`` when the image is already encoded), float32.
        ``on_stage(name)`` is called before each model pass; ``timings`` gets seconds per pass."""
        timings = {} if timings is None else timings
        on_stage = on_stage or (lambda _stage: None)
        device = self.hub.device
        if self.config.features == "sam":
            with stage(timings, "sam_features", device):
                if sam_view is None:
                    sam_view = self.sam_view(image)
                return {"sam": self.sam(sam_view)}
        on_stage("DINOv2 features")
        with stage(timings, "dino", device):
            feats = {"dino": self.dino(image)}
        if self.config.use_sd:
            on_stage("SD features")
            with stage(timings, "sd", device):
                feats.update(self.sd(image, feats["dino"].shape[-1]))
        return feats

    def sam_view(self, image: np.ndarray, stretch: bool | None = None) -> SamView:
        """``image`` encoded by SAM on the configured backend (``sam_backend``: the fastest installed one on a
        CPU with ``auto``, torch in reference mode; :mod:`vision.sam.backends`), stretched to SAM's square
        when ``stretch`` (default: the mode's frame)."""
        if self._runner is None:
            from vision.sam import runner_for

            backend = self.config.sam_backend
            if backend == "auto" and self.config.reference:
                backend = "torch"  # the reference's own SAM modules: a compiled backend moves the embedding
            self._runner = runner_for(self.hub, self.config.sam_model, backend)
        stretch = self.mode.stretch_sam if stretch is None else stretch
        return SamView.encode(self.hub.get(self.config.sam_model), image, stretch, self._runner)

    @property
    def sam_backend(self) -> str:
        """The backend SAM ran on ("" before its first encoding)."""
        return self._runner.backend_name if self._runner is not None else ""

    def sam(self, view: SamView) -> torch.Tensor:
        """SAM's image embedding on the image's grid ([C, n, n] float32, n = the embedding's side)."""
        embedding = view.predictor.features[0].float()
        rows, cols = view.valid_region(embedding.shape[-1])
        return to_grid(embedding, rows, cols, embedding.shape[-1], self.mode.grid_sampling)

    def dino(self, image: np.ndarray) -> torch.Tensor:
        """DINOv2 tokens of the last block before the final LayerNorm, CLS dropped, on the image's grid
        ([C, g, g] float32, g = dino_size / 14)."""
        model = self.hub.get(self.config.dino_model)
        device, dtype = device_dtype(model)
        square, box = letterbox(image, self.config.dino_size)
        x = torch.as_tensor(square, dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
        x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        with torch.no_grad():
            tokens = model(pixel_values=x.to(device=device, dtype=dtype), output_hidden_states=True).hidden_states[-1]
        patches = tokens[0, 1:].float()
        side = int(round(patches.shape[0] ** 0.5))
        if side * side != patches.shape[0]:
            raise RuntimeError(f"DINOv2 returned {patches.shape[0]} patch tokens, not a square grid")
        return crop_to_grid(patches.T.reshape(-1, side, side), box, side, self.mode)

    def sd(self, image: np.ndarray, grid: int) -> dict[str, torch.Tensor]:
        """SD1.5 decoder features s5, s4, s3 on the image's grid ([C, grid, grid] float32 each)."""
        raw, box = self.sd_raw(image)
        return {name: crop_to_grid(feat[0].float(), box, grid, self.mode) for name, feat in raw.items()}

    def sd_raw(self, image: np.ndarray) -> tuple[dict[str, torch.Tensor], Letterbox]:
        """The hooked UNet outputs on the letterboxed square ({"s5": [1, C, S/64, S/64], "s4": [1, C,
        S/32, S/32], "s3": [1, C, S/16, S/16]} for side S) and the letterbox placement.

        Default: one pass on the whole square (latent S/8), noise drawn for that latent. Reference: the
        square cut into overlapping ``sd_crop`` crops (:func:`slide_offsets` on both axes), each run with
        the same noise, the maps averaged where crops overlap (:func:`average_crops`).
        """
        cfg = self.config
        square, box = letterbox(image, cfg.sd_size)
        pixels = torch.as_tensor(square, dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1.0
        if not self.mode.sd_crops:
            return self._sd_pass(pixels, self._seeded_noise), box
        crop = min(cfg.sd_crop, cfg.sd_size)
        offsets = slide_offsets(cfg.sd_size, crop)
        crops = [((top, left), self._sd_pass(pixels[..., top : top + crop, left : left + crop], self._shared_noise))
                 for top in offsets for left in offsets]
        return average_crops(crops, cfg.sd_size, crop), box

    def _seeded_noise(self, shape: torch.Size) -> torch.Tensor:
        generator = torch.Generator("cpu").manual_seed(self.config.noise_seed)  # CPU: the same on every device
        return torch.randn(shape, generator=generator, dtype=torch.float32)

    def _shared_noise(self, shape: torch.Size) -> torch.Tensor:
        """The reference's noise: drawn once at SD1.5's native latent size from a seeded CPU generator,
        bicubic-resized when a crop's latent differs, the same for every crop."""
        noise = torch.randn((1, shape[1], SD_NATIVE_LATENT, SD_NATIVE_LATENT),
                            generator=torch.Generator().manual_seed(self.config.noise_seed))
        if tuple(shape[2:]) != noise.shape[2:]:
            noise = F.interpolate(noise, size=tuple(shape[2:]), mode="bicubic", align_corners=False)
        return noise.expand(shape)

    def _sd_pass(self, pixels: torch.Tensor, noise_for: Any) -> dict[str, torch.Tensor]:
        """VAE mean latent x scale, noised at ``sd_timestep`` with ``noise_for(latent shape)``, one hooked
        UNet pass with the empty prompt -> {"s5", "s4", "s3"} [1, C, m, m]."""
        cfg = self.config
        vae = self.hub.get("sd15_vae")
        device, dtype = device_dtype(vae)
        with torch.no_grad():
            latent = vae.encode(pixels.to(device=device, dtype=dtype)).latent_dist.mean * cfg.latent_scale
            timestep = torch.tensor([cfg.sd_timestep], dtype=torch.long, device=latent.device)
            noisy = self.scheduler().add_noise(latent.float(), noise_for(latent.shape).to(latent.device), timestep)
            embedding = self.empty_embedding()
            unet = self.hub.get("sd15_unet")  # asked for last: a memory budget may offload the others
            u_device, u_dtype = device_dtype(unet)
            with model_lock(unet):  # the hooks go on the shared UNet: no other engine runs it meanwhile
                return run_hooked_unet(unet, noisy.to(device=u_device, dtype=u_dtype), timestep.to(u_device),
                                       embedding.to(device=u_device, dtype=u_dtype))

    def scheduler(self) -> Any:
        """A DDPM scheduler with the hub's SD1.5 noise schedule (for ``add_noise``)."""
        if self._scheduler is None:
            from diffusers import DDPMScheduler

            self._scheduler = DDPMScheduler.from_config(self.hub.get("sd15_scheduler").config)
        return self._scheduler

    def empty_embedding(self) -> torch.Tensor:
        """The text encoder's output for the empty prompt, [1, 77, D] (computed once per encoder)."""
        encoder = self.hub.get("sd15_text_encoder")
        if self._embedding is None or self._embedding[0] is not encoder:
            tokenizer = self.hub.get("sd15_tokenizer")
            ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            device, _ = device_dtype(encoder)
            with torch.no_grad():
                self._embedding = (encoder, encoder(ids.to(device))[0].detach())
        return self._embedding[1]


# -------------------------------------------------------------------------------------- similarity
def prototype(feature: torch.Tensor, region: np.ndarray) -> torch.Tensor:
    """L2-normalised mean of the raw features [C, g, g] over the cells of ``region`` -> [C] (float32)."""
    sel = torch.as_tensor(np.asarray(region, dtype=bool), device=feature.device)
    return F.normalize(feature.float()[:, sel].mean(dim=1), dim=0)


def cosine_map(proto: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of prototype(s) [C] or [K, C] with every cell of [C, g, g] -> [g, g]
    (for several prototypes, the maximum over them)."""
    protos = proto.float().reshape(-1, proto.shape[-1])
    cells = F.normalize(feature.float().reshape(feature.shape[0], -1), dim=0)
    sims = protos.to(cells.device) @ cells
    return sims.max(dim=0).values.reshape(feature.shape[1:])


def fused_similarity(shots: Sequence[dict[str, torch.Tensor]], target: dict[str, torch.Tensor],
                     weights: dict[str, float], kshot: str) -> np.ndarray:
    """S = sum over features f of ``weights[f]`` x cos(p_f, target f) on the grid (float32 [g, g]), from
    each prompt shot's prototypes {f: [C]}: ``kshot="mean"`` averages the shots' prototypes (and
    re-normalises), ``"max"`` takes, per cell, the highest S over the shots."""
    def combined(protos: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(w * cosine_map(protos[f], target[f]) for f, w in weights.items())

    if kshot == "mean" or len(shots) == 1:
        sim = combined({f: F.normalize(torch.stack([s[f] for s in shots]).mean(0), dim=0) for f in weights})
    else:
        sim = torch.stack([combined(s) for s in shots]).max(dim=0).values
    return sim.float().cpu().numpy().astype(np.float32)


# ------------------------------------------------------------------------------------------ helpers
def device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters(), None)
    return (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)


__all__ = ["SD_FEATURES", "SD_HOOKS", "FeatureExtractor", "run_hooked_unet", "crop_to_grid", "to_grid",
           "reference_valid_region", "slide_offsets", "average_crops", "prototype", "cosine_map",
           "fused_similarity"]
