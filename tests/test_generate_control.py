"""ControlNet in generation (#26 item 3): canny (OpenCV), depth (Depth Anything V2, tiny), the user's own map
and ControlNet (a tiny diffusers folder written by the test), and DeepCache computing only the part of the
ControlNet a retrieval step consumes (vision/deepcache/controlnet.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vision import tiny
from vision.deepcache import DeepCache
from vision.engines.generate import GenerateConfig, GenerateEngine, GenerateError, Lora, ModelFileError
from vision.engines.generate.control import canny_map, depth_map
from vision.tiny_files import write_controlnet, write_lora

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = {"steps": 6, "guidance": 5.0, "seed": 2}
PHOTO = (np.random.RandomState(0).rand(48, 80, 3) * 255).astype(np.uint8)
PHOTO[10:40, 20:60] = 255  # a bright box: edges for Canny


def _run(hub, control_image=PHOTO, image=None, **settings):
    return GenerateEngine(GenerateConfig(**{**FAST, **settings}), hub)("a house", image=image,
                                                                       control_image=control_image)


def test_control_maps():
    import cv2

    edges = canny_map(PHOTO, 100, 200)
    assert edges.shape == (48, 80, 3) and edges.dtype == np.uint8 and set(np.unique(edges)) <= {0, 255}
    assert np.array_equal(edges[:, :, 0], cv2.Canny(cv2.cvtColor(PHOTO, cv2.COLOR_RGB2GRAY), 100, 200))
    assert edges[8:12, 30, 0].max() == 255 and edges[25, 40, 0] == 0  # the box's border, not its inside


def test_depth_map_is_the_depth_models_output_scaled(tiny_hub):
    depth = depth_map(tiny_hub, PHOTO)
    assert depth.shape == (48, 80, 3) and depth.dtype == np.uint8
    assert depth.min() == 0 and depth.max() == 255 and np.array_equal(depth[:, :, 0], depth[:, :, 2])


@pytest.mark.parametrize("control", ["canny", "depth"])
def test_controlnet_generation_and_record(tiny_hub, control):
    plain = _run(tiny_hub, control_image=None, deepcache=0).images[0]
    result = _run(tiny_hub, deepcache=0, control=control, control_scale=0.8, control_end=0.9)
    assert result.images[0].shape == (64, 64, 3) and not np.array_equal(result.images[0], plain)
    record = json.loads(json.dumps(result.to_record()))
    assert record["control"]["type"] == control and record["control"]["scale"] == 0.8
    assert record["control"]["controlnet"] == f"controlnet_{control}_sd15"
    assert record["models"]["controlnet"] == f"controlnet_{control}_sd15"
    assert ("depth" in record["models"]) == (control == "depth")
    assert "control image resized from 80x48 to 64x64 (the output size)" in record["notes"]
    files = result.to_files()
    assert set(files) == {"png", "control.png"} and files["control.png"].shape == (64, 64, 3)
    if control == "canny":
        assert record["control"]["canny"] == {"low": 100, "high": 200}
        resized = np.asarray(Image.fromarray(PHOTO).resize((64, 64), Image.Resampling.LANCZOS))
        assert np.array_equal(files["control.png"], canny_map(resized, 100, 200))


def test_sdxl_controlnet_and_img2img_control_from_the_start_image(tiny_hub):
    xl = _run(tiny_hub, family="sdxl", control="canny", deepcache=2)
    assert xl.control["controlnet"] == "controlnet_canny_sdxl" and xl.deepcache["partial_calls"] > 0
    start = np.full((64, 64, 3), 90, np.uint8)
    start[16:48, 16:48] = 230
    i2i = _run(tiny_hub, control_image=None, image=start, control="canny", steps=8, strength=0.5, deepcache=0)
    assert i2i.img2img and "control map made from the start image" in i2i.notes
    assert np.array_equal(i2i.control_image, canny_map(start, 100, 200))


# ------------------------------------------------------------------------------ DeepCache + ControlNet


def _pipe(hub, family="sd15"):
    from vision.engines.generate.pipelines import assemble_pipeline, family_parts

    controlnet = hub.get(f"controlnet_canny_{family}")
    arch = "sdxl" if family == "sdxl" else "sd15"
    pipe = assemble_pipeline(arch, family_parts(hub, family), "ddim", controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(pipe, steps=8, seed=0):
    from vision.engines.generate import make_generator

    with torch.no_grad():
        return pipe("a house", image=Image.fromarray(canny_map(PHOTO[:, :64], 100, 200)).resize((64, 64)),
                    num_inference_steps=steps, guidance_scale=5.0, width=64, height=64,
                    generator=[make_generator(seed)], output_type="latent").images


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_deepcache_with_controlnet_n1_is_exact_and_the_partial_controlnet_equals_the_full_one(tiny_hub, family):
    pipe = _pipe(tiny_hub, family)
    plain = _latents(pipe)
    with DeepCache(pipe, interval=1, branch=1) as cache:
        assert torch.equal(_latents(pipe), plain)  # N = 1: bit for bit
    assert cache.last_generation()["controlnet_full_calls"] == 8
    outs = {}
    for partial in (True, False):
        with DeepCache(pipe, interval=3, branch=1, partial_controlnet=partial) as cache:
            outs[partial] = _latents(pipe)
        gen = cache.last_generation()
        assert gen["full_steps"] == [0, 3, 6] and gen["partial_calls"] == 5
        assert gen["controlnet_partial_calls"] == (5 if partial else 0)
    assert (outs[True] - outs[False]).abs().max() <= 1e-5
    assert not torch.equal(outs[True], plain)


def test_partial_controlnet_residuals_are_the_full_runs_first_ones_and_full_steps_are_plain(tiny_hub):
    """At one step, on identical inputs: the full step (whole ControlNet + whole UNet under DeepCache)
    equals the plain UNet, and the retrieval step fed the partial residuals equals the retrieval step fed
    the full ControlNet's residuals; the partial residuals are the full run's first b + 1."""
    from vision.deepcache.controlnet import shallow_residuals

    pipe = _pipe(tiny_hub)
    cn, unet = pipe.controlnet, pipe.unet
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    hint = torch.rand(2, 3, 64, 64, generator=g)
    t = torch.tensor(501)
    with torch.no_grad():
        down, mid = cn(x, t, text, controlnet_cond=hint, conditioning_scale=0.7, return_dict=False)
        plain = unet(x, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        for b in (0, 1, 4, 11):
            cache = DeepCache(pipe, interval=2, branch=b)
            full, feature = cache._unet_forward(None, sample=x, timestep=t, encoder_hidden_states=text,
                                                down_block_additional_residuals=down, mid_block_additional_residual=mid)
            assert torch.equal(full, plain), b
            part = shallow_residuals(cn, cache.layout, b, x, t, text, hint, 0.7)
            assert len(part) == b + 1 and all(torch.equal(p, d) for p, d in zip(part, down)), b
            with_full, _ = cache._unet_forward(feature, sample=x, timestep=t, encoder_hidden_states=text,
                                               down_block_additional_residuals=down,
                                               mid_block_additional_residual=mid)
            with_part, _ = cache._unet_forward(feature, sample=x, timestep=t, encoder_hidden_states=text,
                                               down_block_additional_residuals=part,
                                               mid_block_additional_residual=mid.new_zeros(0))
            assert (with_full - with_part).abs().max() <= 1e-5, b


def test_deepcache_with_controlnet_and_lora_n1_is_exact(tiny_hub, tmp_path):
    lora = write_lora(tmp_path / "ink.safetensors", tiny_hub.get("sd15_unet"))
    settings = {"control": "canny", "loras": (Lora(str(lora), 0.7),)}
    assert np.array_equal(_run(tiny_hub, deepcache=1, **settings).images[0],
                          _run(tiny_hub, deepcache=0, **settings).images[0])


# ---------------------------------------------------------------------------------------- user input


def test_the_users_map_and_controlnet_folder(tiny_hub, tmp_path):
    folder = write_controlnet(tmp_path / "my-pose-controlnet", tiny.sd15_unet(), seed=9)
    pose = np.zeros((64, 64, 3), np.uint8)
    pose[20:44, 30:34] = (255, 0, 0)
    result = _run(tiny_hub, control_image=pose, control="image", controlnet=str(folder), deepcache=2)
    assert result.control["controlnet"] == str(folder) and np.array_equal(result.control_image, pose)
    assert result.deepcache["controlnet_partial_calls"] == result.deepcache["partial_calls"] > 0
    assert any(row["weights"] == f"user: {folder}" for row in tiny_hub.status())


def test_bad_control_input_is_named(tiny_hub, tmp_path):
    with pytest.raises(GenerateError, match="control_image: a control image was given but no control type"):
        _run(tiny_hub)
    with pytest.raises(GenerateError, match="control: 'canny' needs a control image"):
        _run(tiny_hub, control_image=None, control="canny")
    with pytest.raises(GenerateError, match="'image' needs the ControlNet that reads your map"):
        _run(tiny_hub, control="image")
    with pytest.raises(GenerateError, match="unknown ControlNet type 'pose'"):
        GenerateConfig(control="pose").validate()
    with pytest.raises(GenerateError, match="a ControlNet is given .* but no control type"):
        GenerateConfig(controlnet="x/y").validate()
    with pytest.raises(ModelFileError, match="ControlNet controlnet_canny_sdxl is for another base model"):
        _run(tiny_hub, control="canny", controlnet="controlnet_canny_sdxl")
    single = tmp_path / "cn.safetensors"
    single.write_bytes(b"x")
    with pytest.raises(ModelFileError, match="give its diffusers folder"):
        _run(tiny_hub, control="image", controlnet=str(single))
    with pytest.raises(GenerateError, match="control_scale must be in 0..2"):
        GenerateConfig(control="canny", control_scale=3).validate()
