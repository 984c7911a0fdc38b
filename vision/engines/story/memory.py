"""Memory options of a story run, so that SDXL at 1024x1024 fits a 16 GB GPU (issue 27).

Three switches (:class:`~vision.engines.story.config.StoryConfig` fields), each through diffusers' or the
hub's own API, each undone when the run ends (the models are shared with the other engines):

* ``vae_tiling``: the VAE decodes a 1024^2 frame in overlapping tiles (``AutoencoderKL.enable_tiling``):
  the decoder's full-resolution activations (128 channels x 1024^2, in fp32 since SDXL's VAE is upcast
  to decode) are what ran a T4 out of memory at the decode (story-iter #15). Tiles are blended at their
  seams, so frames differ slightly from an untiled decode: None (auto) turns it on for frames over 768 px
  in product mode and keeps it off in reference mode (the reference decodes whole frames). VAE
  *slicing* is not offered: it splits a batch into single images, and every decode here is one frame.
* ``offload_image_encoder``: the IP-Adapter's CLIP image encoder (ViT-H 2.5 GB, ViT-bigG 3.7 GB in fp16)
  runs once per round; between those calls it waits on the CPU (:meth:`vision.hub.ModelHub.offload`,
  brought back by the next ``hub.get``). Exact. None (auto): on with CUDA.
* ``model_offload``: diffusers' ``enable_model_cpu_offload`` keeps only the module that is computing on
  the GPU (text encoders, UNet, VAE in turn); exact but slower (each frame moves the UNet), for GPUs
  under 16 GB. CUDA only. Its hooks are removed afterwards and the modules go back to the hub's device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from vision.engines.story.config import StoryConfig, StoryError
from vision.hub import model_lock

TILING_ABOVE = 768  # frame side (px) above which auto VAE tiling is on: SDXL's 1024 is, SD1.5's 512 is not


def memory_options(config: StoryConfig, size: int, device: str) -> dict[str, bool]:
    """The switches as they apply to a run at ``size`` px on ``device`` (None resolved)."""
    cuda = str(device).startswith("cuda")
    tiling = config.vae_tiling
    if tiling is None:
        tiling = size > TILING_ABOVE and not config.reference
    encoder = cuda if config.offload_image_encoder is None else config.offload_image_encoder
    return {"vae_tiling": bool(tiling), "offload_image_encoder": bool(encoder), "model_offload": config.model_offload}


def describe_memory(options: dict[str, bool]) -> str:
    """One line for the Story tab and the CLI: which options are on."""
    words = {"vae_tiling": "VAE tiling", "offload_image_encoder": "image encoder on the CPU between rounds",
             "model_offload": "model CPU offload"}
    return "Memory options: " + ", ".join(f"{words[k]} {'on' if v else 'off'}" for k, v in options.items())


def check_memory_options(config: StoryConfig, device: str) -> None:
    """StoryError before a run when a switch cannot apply on ``device`` (model offload without CUDA)."""
    if config.model_offload and not str(device).startswith("cuda"):
        raise StoryError(f"model_offload: diffusers' model CPU offload moves modules to a CUDA GPU; this run is on "
                         f"{device} (turn it off)")


@contextlib.contextmanager
def vae_tiling(vae: Any, on: bool) -> Iterator[None]:
    """The shared VAE decodes in tiles for the block (under its model lock), as it was afterwards."""
    if not on:
        yield
        return
    with model_lock(vae):
        was_tiled = bool(getattr(vae, "use_tiling", False))
        vae.enable_tiling()
        try:
            yield
        finally:
            if not was_tiled:
                vae.disable_tiling()


@contextlib.contextmanager
def model_offload(pipe: Any, on: bool, device: str) -> Iterator[None]:
    """diffusers' model CPU offload on ``pipe`` for the block; afterwards its hooks are removed and every
    module is back on ``device`` (the hub's, a CUDA device: :func:`check_memory_options`)."""
    if not on:
        yield
        return
    modules = [m for m in pipe.components.values() if hasattr(m, "parameters") and hasattr(m, "to")]
    with contextlib.ExitStack() as locks:
        for module in modules:
            locks.enter_context(model_lock(module))
        pipe.enable_model_cpu_offload(device=device)
        try:
            yield
        finally:
            pipe.remove_all_hooks()
            for module in modules:
                module.to(device)
