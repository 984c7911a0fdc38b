"""The user's own models in generation (#26): single-file SD1.5 / SDXL checkpoints in the original key layout,
diffusers folders, Hub repo ids and LoRAs, written as tiny files by the tests and loaded through the same
code path as real ones (vision/engines/generate/models.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vision import tiny
from vision.engines.generate import GenerateConfig, GenerateEngine, GenerateError, Lora, ModelFileError
from vision.engines.generate.models import classify_checkpoint, load_checkpoint
from vision.tiny_files import write_lora, write_sd_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = {"steps": 3, "guidance": 5.0, "seed": 3}


def _perturbed(module, seed):
    """The tiny module with its weights moved a little (so that a checkpoint differs from the hub's)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    return module


def _modules(arch, seed=1):
    if arch == "sd15":
        return {"unet": _perturbed(tiny.sd15_unet(), seed), "vae": _perturbed(tiny.sd15_vae(), seed + 1),
                "text_encoder": _perturbed(tiny.sd15_text_encoder(), seed + 2)}
    return {"unet": _perturbed(tiny.sdxl_unet(), seed), "vae": _perturbed(tiny.sdxl_vae(), seed + 1),
            "text_encoder": _perturbed(tiny.sdxl_text_encoder(), seed + 2),
            "text_encoder_2": _perturbed(tiny.sdxl_text_encoder_2(), seed + 3)}


def _run(hub, **settings):
    return GenerateEngine(GenerateConfig(**{**FAST, **settings}), hub)("a red fox")


def _direct(hub, arch, modules):
    """The same generation on a pipeline assembled from ``modules`` themselves (no file involved)."""
    from vision.engines.generate.pipelines import assemble_pipeline, family_parts, make_generator

    parts = {**family_parts(hub, arch, skip=tuple(modules)), **modules}
    pipe = assemble_pipeline(arch, parts, "ddim")
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red fox", num_inference_steps=FAST["steps"], guidance_scale=FAST["guidance"], width=64, height=64,
               generator=[make_generator(FAST["seed"])], output_type="pil")
    return np.asarray(out.images[0])


# ----------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_single_file_checkpoint_loads_detects_and_generates(tiny_hub, tmp_path, arch):
    from vision.weights import file_digest

    modules = _modules(arch)
    path = write_sd_checkpoint(tmp_path / f"my_{arch}.safetensors", **modules)
    loaded = load_checkpoint(tiny_hub, str(path))
    assert loaded.info.kind == "single-file" and loaded.info.arch == arch
    assert loaded.info.parts == tuple(modules) and "original key layout" in loaded.info.detected
    assert loaded.info.sha256 == file_digest(path, "sha256")[:16]
    for name, module in modules.items():  # every weight read back exactly
        got = loaded[name].state_dict()
        assert all(torch.equal(v, got[k]) for k, v in module.state_dict().items()), name
    result = _run(tiny_hub, family="sdxl" if arch == "sdxl" else "sd15", model=str(path), deepcache=0)
    assert np.array_equal(result.images[0], _direct(tiny_hub, arch, modules))
    record = json.loads(json.dumps(result.to_record()))
    assert record["checkpoint"]["sha256"] == loaded.info.sha256 and record["checkpoint"]["arch"] == arch
    assert record["models"]["unet"] == f"checkpoint {path}"
    assert load_checkpoint(tiny_hub, str(path)) is loaded  # loaded once, shared
    rows = {row["name"]: row for row in tiny_hub.status()}
    assert any(row["weights"] == f"user: {path}" for row in rows.values())


def test_an_sdxl_file_under_the_sd15_family_runs_as_sdxl_and_a_unet_only_file_takes_the_base_parts(tiny_hub,
                                                                                                  tmp_path):
    xl = write_sd_checkpoint(tmp_path / "xl.safetensors", **_modules("sdxl", 7))
    assert _run(tiny_hub, model=str(xl), deepcache=0).to_record()["checkpoint"]["arch"] == "sdxl"
    unet = _perturbed(tiny.sd15_unet(), 11)
    only = write_sd_checkpoint(tmp_path / "unet_only.safetensors", unet, None, None)
    result = _run(tiny_hub, model=str(only), deepcache=2)
    assert result.checkpoint["parts"] == ["unet"] and result.models["vae"] == "sd15_vae"
    assert np.array_equal(_run(tiny_hub, model=str(only), deepcache=1).images[0],
                          _run(tiny_hub, model=str(only), deepcache=0).images[0])  # DeepCache N=1 is exact on it


def test_diffusers_folder_and_hub_repo(tiny_hub, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    from vision.engines.generate.pipelines import assemble_pipeline, family_parts

    modules = _modules("sd15", 21)
    folder = tmp_path / "my-model"
    assemble_pipeline("sd15", {**family_parts(tiny_hub, "sd15"), **modules}, "ddim").save_pretrained(folder)
    result = _run(tiny_hub, model=str(folder), deepcache=0)
    assert result.checkpoint["kind"] == "diffusers-folder" and result.checkpoint["parts"] == list(modules)
    assert np.array_equal(result.images[0], _direct(tiny_hub, "sd15", modules))

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: calls.append(kw) or str(folder))
    repo = _run(tiny_hub, model="someone/my-model", deepcache=0)
    assert repo.checkpoint["kind"] == "hub-repo" and repo.checkpoint["source"] == "someone/my-model"
    assert calls[0]["local_files_only"] is True and np.array_equal(repo.images[0], result.images[0])

    def gated(repo, **kw):
        raise GatedRepoError("401 gated")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(ModelFileError, match=r"someone/gated is gated.*HF_TOKEN"):
        _run(tiny_hub, model="someone/gated")


def test_bad_checkpoints_name_the_file_and_leave_the_loaded_models_alone(tiny_hub, tmp_path):
    base = tiny_hub.get("sd15_unet")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    good = write_sd_checkpoint(tmp_path / "good.safetensors", **_modules("sd15", 31))
    first = _run(tiny_hub, model=str(good), deepcache=0).images[0]
    text = tmp_path / "notes.safetensors"
    text.write_text("these are my notes, not a model")
    with pytest.raises(ModelFileError, match=r"notes.safetensors: not a model file"):
        _run(tiny_hub, model=str(text))
    pickled = tmp_path / "old.ckpt"
    pickled.write_bytes(b"\x80\x04")
    with pytest.raises(ModelFileError, match=r"old.ckpt: single-file models are read as .safetensors only"):
        _run(tiny_hub, model=str(pickled))
    lora = write_lora(tmp_path / "style.safetensors", tiny.sd15_unet())
    with pytest.raises(ModelFileError, match=r"style.safetensors is a LoRA"):
        _run(tiny_hub, model=str(lora))
    with pytest.raises(ModelFileError, match=r"no-such.safetensors: no such file"):
        _run(tiny_hub, model=str(tmp_path / "no-such.safetensors"))
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())
    assert np.array_equal(_run(tiny_hub, model=str(good), deepcache=0).images[0], first)


@pytest.mark.parametrize("keys, message", [
    ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
      "cond_stage_model.model.token_embedding.weight": (49408, 1024)}, "SD2.x"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}, "9 input channels"),
    ({"model.diffusion_model.joint_blocks.0.x.weight": (1, 1)}, "SD3 / SD3.5"),
    ({"double_blocks.0.img_attn.qkv.weight": (1, 1)}, "Flux"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (384, 4, 3, 3), "model.diffusion_model.label_emb.0.0.weight":
      (1, 1), "conditioner.embedders.0.model.ln_final.weight": (1280,)}, "SDXL refiner"),
    ({"control_model.input_hint_block.0.weight": (16, 3, 3, 3)}, "is a ControlNet"),
    ({"conv_in.weight": (320, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": (1, 1)}, "diffusers-layout UNet"),
    ({"encoder.layer.0.weight": (2, 2)}, r"no Stable Diffusion checkpoint \(no model.diffusion_model"),
])
def test_unsupported_architectures_are_named(tmp_path, keys, message):
    with pytest.raises(ModelFileError, match=message):
        classify_checkpoint(keys, tmp_path / "x.safetensors")


def test_the_full_size_architecture_configs_build_the_real_models():
    """The configurations single files are loaded with (no Hub to fetch them): parameter counts of the
    real SD1.5 / SDXL modules, models built on the meta device."""
    import diffusers
    import transformers

    from vision.engines.generate.arch import REAL_CONFIGS

    def count(cls, config):
        with torch.device("meta"):
            model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
        return sum(p.numel() for p in model.parameters())

    assert count(diffusers.UNet2DConditionModel, REAL_CONFIGS["sd15"]["unet"]) == 859_520_964
    assert count(diffusers.UNet2DConditionModel, REAL_CONFIGS["sdxl"]["unet"]) == 2_567_463_684
    assert count(diffusers.AutoencoderKL, REAL_CONFIGS["sd15"]["vae"]) == 83_653_863
    text = transformers.CLIPTextConfig(**REAL_CONFIGS["sd15"]["text_encoder"])
    assert count(transformers.CLIPTextModel, text) == 123_060_480
    text2 = transformers.CLIPTextConfig(**REAL_CONFIGS["sdxl"]["text_encoder_2"])
    assert count(transformers.CLIPTextModelWithProjection, text2) == 694_659_840


# ---------------------------------------------------------------------------------------------- LoRAs


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_lora_changes_the_image_and_unloads_bit_identically(tiny_hub, tmp_path, layout):
    unet = tiny_hub.get("sd15_unet")
    keys = set(unet.state_dict())
    plain = _run(tiny_hub, deepcache=2).images[0]
    path = write_lora(tmp_path / f"ink_{layout}.safetensors", unet, layout=layout)
    result = _run(tiny_hub, deepcache=2, loras=(Lora(str(path), 0.8),))
    assert not np.array_equal(result.images[0], plain)
    (applied,) = result.to_record()["loras"]
    assert applied["path"] == str(path) and applied["scale"] == 0.8 and applied["modules"] == ["unet"]
    assert len(applied["sha256"]) == 16
    assert set(unet.state_dict()) == keys  # no LoRA layer left behind
    assert np.array_equal(_run(tiny_hub, deepcache=2).images[0], plain)  # as if it had never been loaded
    half = _run(tiny_hub, deepcache=2, loras=(f"{path}:0.4",))
    assert half.loras[0]["scale"] == 0.4 and not np.array_equal(half.images[0], result.images[0])


def test_two_loras_and_deepcache_n1_is_exact_with_them(tiny_hub, tmp_path):
    unet = tiny_hub.get("sd15_unet")
    a = write_lora(tmp_path / "a.safetensors", unet, seed=1)
    b = write_lora(tmp_path / "b.safetensors", unet, seed=2, layout="diffusers")
    loras = (Lora(str(a), 1.0), Lora(str(b), -0.5))
    off = _run(tiny_hub, deepcache=0, loras=loras)
    assert [x["adapter"] for x in off.loras] == ["lora0", "lora1"]
    assert np.array_equal(_run(tiny_hub, deepcache=1, loras=loras).images[0], off.images[0])


def test_bad_loras_are_named_and_nothing_stays_patched(tiny_hub, tmp_path):
    unet = tiny_hub.get("sd15_unet")
    plain = _run(tiny_hub, deepcache=0).images[0]
    good = write_lora(tmp_path / "good.safetensors", unet)
    other = write_lora(tmp_path / "for_sdxl.safetensors", tiny.sdxl_unet())
    with pytest.raises(ModelFileError, match=r"LoRA .*for_sdxl.safetensors does not fit this model"):
        _run(tiny_hub, deepcache=0, loras=(Lora(str(good)), Lora(str(other))))
    checkpoint = write_sd_checkpoint(tmp_path / "full.safetensors", **_modules("sd15", 41))
    with pytest.raises(ModelFileError, match=r"no LoRA tensors in it"):
        _run(tiny_hub, loras=(Lora(str(checkpoint)),))
    with pytest.raises(GenerateError, match=r"loras: scale 5 of .*good.safetensors is out of range -2..2"):
        GenerateConfig(loras=(Lora(str(good), 5.0),)).validate()
    assert np.array_equal(_run(tiny_hub, deepcache=0).images[0], plain)
    assert Lora.parse(r"C:\\loras\\ink.safetensors") == Lora(r"C:\\loras\\ink.safetensors", 1.0)
    assert Lora.parse("ink.safetensors:0.75") == Lora("ink.safetensors", 0.75)
