"""ControlNet input of a generation: the control map (``canny``, ``depth`` or the user's own ``image``) and
the ControlNet that reads it (a standard one from the weights registry, or the user's).

* ``canny``: OpenCV's Canny edges of the control image (``canny_low`` / ``canny_high`` thresholds), white
  on black, as the canny ControlNets were trained.
* ``depth``: Depth Anything V2 small (transformers, registry ``depth_anything_v2_small``): its relative
  inverse depth, scaled to 0..255 per image (near is bright), as the depth ControlNets were trained.
* ``image``: a control map the user already made (pose, scribble, lineart...), used as given; it needs
  the ControlNet trained on that kind of map (``controlnet``: a diffusers folder or a Hub repo id).

The control map is made at the output size: a control image of another size is resized first (LANCZOS),
and the result says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vision.engines.generate.config import GenerateConfig, GenerateError
from vision.engines.generate.models import ModelFileError

STANDARD_CONTROLNETS = {("canny", "sd15"): "controlnet_canny_sd15", ("depth", "sd15"): "controlnet_depth_sd15",
                        ("canny", "sdxl"): "controlnet_canny_sdxl", ("depth", "sdxl"): "controlnet_depth_sdxl"}
DEPTH_MODEL = "depth_anything_v2_small"
# Depth Anything V2's preprocessing (its preprocessor_config.json): shorter side to 518, a multiple of 14
DEPTH_PREPROCESSING = {"do_resize": True, "size": {"height": 518, "width": 518}, "keep_aspect_ratio": True,
                       "ensure_multiple_of": 14, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
                       "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
                       "do_pad": False}


def canny_map(rgb: np.ndarray, low: int, high: int) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` -> Canny edges of its grey image as RGB uint8 ``[H, W, 3]`` (255 = edge)."""
    import cv2

    edges = cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), int(low), int(high))
    return np.repeat(edges[:, :, None], 3, axis=2)


def depth_map(hub: Any, rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` -> Depth Anything V2's relative inverse depth at ``H x W``, min-max scaled to
    0..255 (near bright), as RGB uint8 ``[H, W, 3]``."""
    import torch
    from transformers import DPTImageProcessor

    model = hub.get(DEPTH_MODEL)
    processor = DPTImageProcessor(**DEPTH_PREPROCESSING)
    param = next(model.parameters())
    pixels = processor(images=rgb, return_tensors="pt")["pixel_values"].to(param.device, param.dtype)
    with torch.no_grad():
        out = model(pixel_values=pixels)
    depth = processor.post_process_depth_estimation(out, target_sizes=[rgb.shape[:2]])[0]["predicted_depth"]
    depth = depth.float().cpu().numpy()
    span = float(depth.max() - depth.min())
    scaled = (depth - depth.min()) / span if span > 0 else np.zeros_like(depth)
    return np.repeat((scaled * 255.0).round().astype(np.uint8)[:, :, None], 3, axis=2)


def control_image(hub: Any, config: GenerateConfig, image: Any, width: int, height: int) -> tuple[Any, list[str]]:
    """The control map of ``image`` (path, PIL, array) for ``config.control`` at ``width x height`` as a
    PIL image, and notes for the user (a resize)."""
    from PIL import Image

    from vision.imaging import load_image

    rgb = load_image(image)
    notes = []
    h0, w0 = rgb.shape[:2]
    if (w0, h0) != (width, height):
        rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS))
        notes.append(f"control image resized from {w0}x{h0} to {width}x{height} (the output size)")
    if config.control == "canny":
        rgb = canny_map(rgb, config.canny_low, config.canny_high)
    elif config.control == "depth":
        rgb = depth_map(hub, rgb)
    return Image.fromarray(rgb), notes


def load_controlnet(hub: Any, config: GenerateConfig, arch: str, unet: Any) -> tuple[Any, str]:
    """(the ControlNet module, its name for the record): ``config.controlnet`` (a registry name, a diffusers
    folder or a Hub repo id) or the registry's standard one for ``config.control`` and ``arch``. The
    ControlNet must fit ``unet`` (ModelFileError names it otherwise)."""
    from vision.hub import ENTRIES

    if config.controlnet and config.controlnet in ENTRIES:
        name, module = config.controlnet, hub.get(config.controlnet)
    elif config.controlnet:
        name = config.controlnet
        module = hub.get_user(f"controlnet:{_key(name)}", lambda: _load_user_controlnet(hub, name), name)
    elif (config.control, arch) in STANDARD_CONTROLNETS:
        name = STANDARD_CONTROLNETS[(config.control, arch)]
        module = hub.get(name)
    else:
        raise GenerateError(f"control: '{config.control}' needs the ControlNet that reads your map (controlnet: a "
                            "diffusers folder or Hub repo id of e.g. an openpose, scribble or lineart ControlNet)")
    _check_fits(module, unet, name, arch)
    return module, name


def _key(source: str) -> str:
    path = Path(source).expanduser()
    return f"{path.resolve()}@{path.stat().st_mtime_ns}" if path.exists() else source


def _load_user_controlnet(hub: Any, source: str) -> Any:
    from diffusers import ControlNetModel

    path = Path(source).expanduser()
    if path.is_file():
        raise ModelFileError(f"ControlNet {source}: give its diffusers folder (config.json and the weights file), "
                             "not a single file")
    if not path.is_dir() and "/" not in source:
        raise ModelFileError(f"ControlNet {source}: no such folder (and not a Hub repo id 'owner/name')")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelFileError(f"ControlNet {source}: not a diffusers folder (no config.json)")
    offline = not path.is_dir()
    try:
        model = ControlNetModel.from_pretrained(str(path) if path.is_dir() else source,
                                                torch_dtype=hub.dtype_for("sd15_unet"),
                                                local_files_only=offline and _offline())
    except Exception as err:  # missing files, a gated repo, no network: say which and why
        raise ModelFileError(f"ControlNet {source} does not load ({type(err).__name__}: {str(err)[:300]})") from None
    return model.to(hub.device).eval()


def _offline() -> bool:
    import os

    return os.environ.get("VISION_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"


def _check_fits(controlnet: Any, unet: Any, name: str, arch: str) -> None:
    """A ControlNet's residuals are added to the UNet's skips: its text width and block widths must match."""
    c, u = controlnet.config, unet.config
    if (c.cross_attention_dim != u.cross_attention_dim or tuple(c.block_out_channels) != tuple(u.block_out_channels)
            or c.addition_embed_type != u.addition_embed_type):
        raise ModelFileError(f"ControlNet {name} is for another base model than this {arch} one (text width "
                             f"{c.cross_attention_dim} vs {u.cross_attention_dim}, blocks {list(c.block_out_channels)} "
                             f"vs {list(u.block_out_channels)})")
