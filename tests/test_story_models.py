"""Story with the user's checkpoint and LoRAs (through the generation engine's loader), the fast preset
(LCM-LoRA + LCM sampler, 4 steps), and the memory options (#27 items 3-4). Tiny models; checkpoint and LoRA
files written by the test in the real formats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vision import tiny
from vision.engines import story as S
from vision.tiny_files import write_lora, write_sd_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cfg(**kw):
    return S.StoryConfig(**{"rounds": 1, "steps": 2, "size": 64, "seed": 5, **kw})


def _unet_fingerprint(unet):
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=text).sample


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny SD1.5 single-file checkpoint (original key layout), its UNet moved off the hub's weights."""
    unet = tiny.sd15_unet()
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    return write_sd_checkpoint(tmp_path_factory.mktemp("ckpt") / "mine.safetensors", unet, None, None)


def test_the_users_checkpoint_and_lora_run_through_the_generation_loader(tiny_hub, checkpoint, tmp_path):
    from vision.engines.generate import GenerateConfig, GenerateEngine

    hub_unet = tiny_hub.get("sd15_unet")
    before = _unet_fingerprint(hub_unet)
    lora = write_lora(tmp_path / "ink.safetensors", hub_unet, seed=3)
    result = S.StoryEngine(cfg(model=str(checkpoint), loras=(f"{lora}:0.8",)), tiny_hub)(["a fox"], tmp_path / "run")
    record = json.loads(json.dumps(result.to_record()))
    assert record["user_checkpoint"]["kind"] == "single-file" and record["user_checkpoint"]["parts"] == ["unet"]
    assert record["models"]["checkpoint"] == str(checkpoint)
    assert [(x["path"], x["scale"]) for x in record["loras"]] == [(str(lora), 0.8)]
    # round 0 is the generation engine's image of the same checkpoint and LoRA (one loader for both)
    plain = GenerateEngine(GenerateConfig(steps=2, seed=5, width=64, height=64, model=str(checkpoint),
                                          loras=(f"{lora}:0.8",), negative_prompt=S.DEFAULT_NEGATIVE, deepcache=3),
                           tiny_hub)(S.StoryConfig().styled("a fox")).images[0]
    assert np.array_equal(result.round_images(0)[0], np.asarray(plain))
    from vision.engines.generate.models import load_checkpoint

    user_unet = load_checkpoint(tiny_hub, str(checkpoint))["unet"]
    assert not any("lora" in name for name, _ in user_unet.named_modules())  # unloaded
    assert user_unet.encoder_hid_proj is None  # the IP-Adapter is off it again
    assert torch.equal(_unet_fingerprint(hub_unet), before)


def test_bad_models_are_named_and_nothing_stays_patched(tiny_hub, tmp_path):
    xl = write_sd_checkpoint(tmp_path / "xl.safetensors", tiny.sdxl_unet(), None, None)
    with pytest.raises(S.StoryError, match=r"model: .*xl.safetensors is an SDXL checkpoint but the story's family "
                                           r"is sd15 .*--family sdxl"):
        S.StoryEngine(cfg(model=str(xl)), tiny_hub)(["a fox"], tmp_path / "a")
    not_lora = tmp_path / "nolora.safetensors"
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(not_lora))
    with pytest.raises(S.StoryError, match=r"loras: LoRA .*nolora.safetensors: no LoRA tensors"):
        S.StoryEngine(cfg(loras=(str(not_lora),)), tiny_hub)(["a fox"], tmp_path / "b")
    unet = tiny_hub.get("sd15_unet")
    assert not any("lora" in name for name, _ in unet.named_modules()) and unet.encoder_hid_proj is None
    with pytest.raises(S.StoryError, match="loras: scale 3 of x.safetensors is out of range"):
        cfg(loras=("x.safetensors:3",)).validate()


def test_fast_preset_runs_4_lcm_steps_per_frame_with_the_registry_lcm_lora(tiny_hub, tmp_path):
    from diffusers import LCMScheduler

    config = S.StoryConfig.from_preset("fast", rounds=1, size=64)
    engine = S.StoryEngine(config, tiny_hub)
    assert isinstance(engine.pipeline().scheduler, LCMScheduler)
    events = []
    result = engine(["a fox", "the fox sleeps"], tmp_path / "fast", progress=events.append)
    steps = {(e["round"], e["frame"]): e["steps"] for e in events if e["steps"]}
    assert set(steps) == {(r, i) for r in (0, 1) for i in (0, 1)} and set(steps.values()) == {4}
    record = result.to_record()
    assert record["preset"] == "fast" and record["models"]["lcm_lora"] == "lcm_lora_sd15"
    assert [x["path"] for x in record["loras"]] == [str(tiny_hub.get("lcm_lora_sd15"))]
    assert record["config"]["guidance"] == 1.0 and record["config"]["deepcache"] == 0
    assert not any("lora" in name for name, _ in tiny_hub.get("sd15_unet").named_modules())
    with pytest.raises(S.StoryError, match="LCM-LoRA is distilled for 2-8 steps"):
        config.replace(steps=20).validate()
    with pytest.raises(S.StoryError, match="scheduler: 'lcm' needs LCM-distilled weights"):
        cfg(scheduler="lcm").validate()


def test_memory_options_resolve_and_are_undone(tiny_hub, tmp_path, monkeypatch):
    sdxl, reference = S.StoryConfig.from_preset("sdxl"), S.StoryConfig.from_preset("reference")
    assert S.memory_options(sdxl, 1024, "cuda") == {"vae_tiling": True, "offload_image_encoder": True,
                                                    "model_offload": False}
    assert S.memory_options(reference, 1024, "cuda")["vae_tiling"] is False  # the reference decodes whole frames
    assert S.memory_options(S.StoryConfig(), 512, "cpu") == {"vae_tiling": False, "offload_image_encoder": False,
                                                             "model_offload": False}
    assert S.describe_memory(S.memory_options(sdxl, 1024, "cuda")) == (
        "Memory options: VAE tiling on, image encoder on the CPU between rounds on, model CPU offload off")
    vae, seen = tiny_hub.get("sd15_vae"), []
    decode = type(vae).decode

    def spying_decode(self, *args, **kwargs):
        seen.append(self.use_tiling)
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(type(vae), "decode", spying_decode)
    result = S.StoryEngine(cfg(vae_tiling=True, offload_image_encoder=True), tiny_hub)(["a fox"], tmp_path / "m")
    assert seen and all(seen) and vae.use_tiling is False  # tiled decodes during the run only
    assert result.to_record()["memory"] == {"vae_tiling": True, "offload_image_encoder": True, "model_offload": False}
    status = {row["name"]: row for row in tiny_hub.status()}
    assert status["ip_image_encoder_h"]["device"] == "cpu (offloaded)"  # waits off the GPU between rounds
    tiny_hub.get("ip_image_encoder_h")
    assert {row["name"]: row for row in tiny_hub.status()}["ip_image_encoder_h"]["device"] == "cpu"
    with pytest.raises(S.StoryError, match="model_offload: diffusers' model CPU offload moves modules to a CUDA GPU; "
                                           "this run is on cpu"):
        S.StoryEngine(cfg(model_offload=True), tiny_hub)(["a fox"], tmp_path / "o")
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_offload_settings_do_not_change_the_run_so_it_resumes(tiny_hub, tmp_path):
    first = S.StoryEngine(cfg(rounds=1), tiny_hub)(["a fox"], tmp_path / "r", stop_after_round=0)
    again = S.StoryEngine(cfg(rounds=1, offload_image_encoder=True), tiny_hub)(["a fox"], tmp_path / "r")
    assert first.stopped_early and again.resumed_from == 0 and again.complete
