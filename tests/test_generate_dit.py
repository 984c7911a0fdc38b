"""SD3.5 (DiT) in generation (#26 item 4): Medium / Large tiny transformers, diffusers' own DiT caches
(TaylorSeer, PAB; vision/engines/generate/dit.py) behind the one ``cache`` switch, and a tiny SD3
transformer written in the diffusers layout and loaded through the hub's real loading code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vision import tiny
from vision.engines.generate import GenerateConfig, GenerateEngine, GenerateError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = {"family": "sd35_medium", "steps": 8, "guidance": 5.0, "seed": 4}


def _run(hub, prompt="a lighthouse", **settings):
    return GenerateEngine(GenerateConfig(**{**FAST, **settings}), hub)(prompt)


def _hooks(module):
    from diffusers.hooks import HookRegistry

    return sum(len(HookRegistry.check_if_exists_or_initialize(m).hooks) for m in module.modules())


@pytest.mark.parametrize("family", ["sd35_medium", "sd35_large"])
def test_sd35_generates_with_flow_matching_and_says_so(tiny_hub, family):
    result = _run(tiny_hub, family=family, cache="none")
    assert result.images[0].shape == (64, 64, 3) and result.config.scheduler == "flow"  # "ddim" default -> flow
    record = json.loads(json.dumps(result.to_record()))
    assert record["models"]["transformer"] == f"{family}_transformer"
    assert record["models"]["text_encoder_3"] == "sd35_text_encoder_3" and record["method"] == "none"


@pytest.mark.parametrize("method", ["taylorseer", "pab"])
def test_dit_caches_compare_and_leave_the_transformer_as_it_was(tiny_hub, method):
    transformer = tiny_hub.get("sd35_medium_transformer")
    plain = _run(tiny_hub, cache="none").images[0]
    result = _run(tiny_hub, cache=method, compare=True)
    assert np.array_equal(result.baseline_images[0], plain)  # the compare run's plain half is the plain pipeline
    assert result.cache["method"] == method and result.to_record()["method"] == method
    diff = result.difference()
    assert 0 < diff["max_abs"] and diff["psnr_db"] > 20  # the cache changed the image, a little
    assert result.speedup > 0 and _hooks(transformer) == 0  # every hook removed again
    again = _run(tiny_hub, cache=method)
    assert np.array_equal(again.images[0], result.images[0])  # no state carried across generations
    assert np.array_equal(_run(tiny_hub, cache="none").images[0], plain)


def test_auto_cache_is_deepcache_for_unets_and_taylorseer_for_dits(tiny_hub):
    assert GenerateConfig(family="sd35_large").cache_method == "taylorseer"
    assert GenerateConfig().cache_method == "deepcache" and GenerateConfig(deepcache=0).cache_method == "none"
    assert _run(tiny_hub, steps=4).cache["method"] == "taylorseer"


@pytest.mark.parametrize("settings, message", [
    ({"cache": "deepcache"}, "DeepCache needs a UNet"),
    ({"family": "sd15", "cache": "pab"}, "pab is a DiT cache"),
    ({"scheduler": "pndm"}, "'pndm' does not fit sd35_medium"),
    ({"family": "sd15", "scheduler": "flow"}, "'flow' does not fit sd15"),
    ({"model": "x.safetensors"}, "custom checkpoints are SD1.5 / SDXL ones"),
    ({"loras": ("ink.safetensors",)}, "LoRAs are for SD1.5 / SDXL"),
    ({"control": "canny"}, "ControlNet is for SD1.5 / SDXL"),
    ({"cache": "fastercache"}, "unknown cache method 'fastercache'"),
])
def test_settings_that_do_not_fit_a_dit_are_named(settings, message):
    with pytest.raises(GenerateError, match=message):
        GenerateConfig(**{**FAST, **settings}).validate()


def test_a_tiny_sd3_transformer_file_loads_through_the_hubs_real_loader(tiny_hub, tmp_path):
    """The transformer saved in SD3.5's repo layout (transformer/config.json + safetensors) is loaded by
    the registry's builder (not tiny mode); the other modules are the tiny ones, put in the hub."""
    from vision.hub import ModelHub

    written = tiny.sd35_transformer()
    with torch.no_grad():
        for p in written.parameters():
            p.add_(0.01)
    written.save_pretrained(tmp_path / "transformer")
    hub = ModelHub(tiny=False, device="cpu", weight_paths={"sd35_medium_transformer": str(tmp_path)})
    for name in ("sd35_vae", "sd35_text_encoder", "sd35_text_encoder_2", "sd35_text_encoder_3", "sdxl_tokenizer",
                 "sdxl_tokenizer_2", "sd35_tokenizer_3", "sd35_scheduler"):
        hub.put(name, tiny_hub.get(name))
    result = GenerateEngine(GenerateConfig(**{**FAST, "width": 64, "height": 64, "cache": "taylorseer"}), hub)("a boat")
    loaded = hub.get("sd35_medium_transformer")
    assert loaded is not written and result.images[0].shape == (64, 64, 3) and not result.tiny
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in written.state_dict().items())
