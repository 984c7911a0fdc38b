"""The IP-Adapter on the shared UNet for the duration of a story, and the encoding of reference frames."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from vision.hub import model_lock


@contextlib.contextmanager
def ip_adapter_on(pipe: Any, state_dict: dict, copies: int = 1) -> Iterator[None]:
    """Load an IP-Adapter (``{"image_proj": ..., "ip_adapter": ...}``) onto ``pipe``'s UNet for the block;
    ``copies`` = 2 loads it twice (the round's and the characters' adapters, :mod:`.conditioning`), so
    that each has its own scale and softmax.

    Uses diffusers' public loader (``pipe.load_ip_adapter`` with the state dict; no image encoder: the
    engine encodes reference frames itself and passes ``ip_adapter_image_embeds``), which puts an
    ``IPAdapterAttnProcessor2_0`` on every cross-attention layer and an image projection in
    ``unet.encoder_hid_proj``. On exit ``pipe.unload_ip_adapter()`` removes them and the UNet gets back
    the very attention processor objects it had (``set_attn_processor``), so that the other engines
    sharing it see the plain UNet again. Set lambda with ``pipe.set_ip_adapter_scale``.

    Holds the UNet's :func:`vision.hub.model_lock` meanwhile: other engines running the shared UNet
    (generation, IPSeg's features) take the same lock, so none of them sees the adapter, and two story
    runs never interleave their adapters.
    """
    from diffusers.utils import logging as diffusers_logging

    unet = pipe.unet
    with model_lock(unet):
        saved_processors = dict(unet.attn_processors)
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # "image_encoder is not loaded": we pass the embeddings
        try:
            pipe.load_ip_adapter([state_dict] * copies, subfolder=[""] * copies, weight_name=[""] * copies,
                                 image_encoder_folder=None, low_cpu_mem_usage=False)
        finally:
            diffusers_logging.set_verbosity(verbosity)
        try:
            yield
        finally:
            pipe.unload_ip_adapter()
            unet.set_attn_processor(saved_processors)


def clip_pixels(images: Sequence[np.ndarray | Image.Image], encoder_size: int) -> torch.Tensor:
    """RGB images -> CLIP pixel batch [N, 3, S, S] by ``CLIPImageProcessor`` (shortest side to the encoder's
    size S, centre crop, OpenAI mean/std): IP-Adapter's own preprocessing of an image prompt."""
    from transformers import CLIPImageProcessor

    pil = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, dtype=np.uint8)) for im in images]
    processor = CLIPImageProcessor(size={"shortest_edge": encoder_size},
                                   crop_size={"height": encoder_size, "width": encoder_size})
    return processor(images=pil, return_tensors="pt").pixel_values


def reference_pixels(images: Sequence[np.ndarray], reference_size: int, encoder_size: int) -> torch.Tensor:
    """Previous-round frames -> CLIP pixel batch [B, 3, S, S]: each frame resized to ``reference_size``^2
    (bicubic, as the reference code does), then :func:`clip_pixels`."""
    resized = [Image.fromarray(np.asarray(im, dtype=np.uint8)).resize((reference_size, reference_size),
                                                                      Image.BICUBIC) for im in images]
    return clip_pixels(resized, encoder_size)
