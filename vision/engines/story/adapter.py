"""The IP-Adapter on the shared UNet for the duration of a story, and the encoding of reference frames."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from vision.hub import model_lock

_MISSING = object()


@contextlib.contextmanager
def ip_adapter_on(unet: Any, state_dict: dict) -> Iterator[Any]:
    """Load an IP-Adapter (``{"image_proj": ..., "ip_adapter": ...}``) onto ``unet`` for the block.

    Uses diffusers' own loader (``unet._load_ip_adapter_weights``), which puts an
    ``IPAdapterAttnProcessor2_0`` on every cross-attention layer and an image projection in
    ``unet.encoder_hid_proj``. On exit the UNet gets back exactly what it had: the same attention
    processor objects, the same ``encoder_hid_proj`` and ``config.encoder_hid_dim_type``, so that the
    other engines sharing it see the plain UNet again. Yields the list of IP processors.

    Holds the UNet's :func:`vision.hub.model_lock` meanwhile: other engines running the shared UNet
    (generation, IPSeg's features) take the same lock, so none of them sees the adapter, and two story
    runs never save each other's adapter as "the original".
    """
    with model_lock(unet):
        yield from _ip_adapter_on(unet, state_dict)


def _ip_adapter_on(unet: Any, state_dict: dict) -> Iterator[Any]:
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from diffusers.utils import logging as diffusers_logging

    saved_procs = dict(unet.attn_processors)
    saved_proj = unet.encoder_hid_proj
    saved_type = unet.config.__dict__.get("encoder_hid_dim_type", _MISSING)
    saved_text_proj = getattr(unet, "text_encoder_hid_proj", _MISSING)
    verbosity = diffusers_logging.get_verbosity()
    try:
        diffusers_logging.set_verbosity_error()  # its `.to()` warns about fp32 modules it does not have
        try:
            unet._load_ip_adapter_weights([state_dict], low_cpu_mem_usage=False)
        finally:
            diffusers_logging.set_verbosity(verbosity)
        yield [p for p in unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]
    finally:
        unet.set_attn_processor(saved_procs)
        unet.encoder_hid_proj = saved_proj
        if saved_type is _MISSING:
            unet.config.__dict__.pop("encoder_hid_dim_type", None)
        else:
            object.__setattr__(unet.config, "encoder_hid_dim_type", saved_type)
        if saved_text_proj is _MISSING:
            if hasattr(unet, "text_encoder_hid_proj"):
                delattr(unet, "text_encoder_hid_proj")
        else:
            unet.text_encoder_hid_proj = saved_text_proj


def set_reference_scale(processors: Sequence[Any], scale: float) -> None:
    """Set lambda on every IP-Adapter attention processor (one adapter each)."""
    for proc in processors:
        proc.scale = [float(scale)] * len(proc.scale)


def reference_pixels(images: Sequence[np.ndarray], reference_size: int, encoder_size: int) -> torch.Tensor:
    """Previous-round frames -> CLIP pixel batch [B, 3, S, S].

    Each frame is resized to ``reference_size``^2 (bicubic, as the reference code does) and then given
    CLIP's own preprocessing (``CLIPImageProcessor``: shortest side to the encoder's size, centre crop,
    OpenAI mean/std).
    """
    from transformers import CLIPImageProcessor

    resized = [Image.fromarray(np.asarray(im, dtype=np.uint8)).resize((reference_size, reference_size),
                                                                      Image.BICUBIC) for im in images]
    processor = CLIPImageProcessor(size={"shortest_edge": encoder_size},
                                   crop_size={"height": encoder_size, "width": encoder_size})
    return processor(images=resized, return_tensors="pt").pixel_values
