"""Weights registry: resolution, clear errors without weights or network, corrupt files detected."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from vision import weights
from vision.hub import ModelHub
from vision.imaging import sample_image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def empty_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("VISION_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "weights"


def test_missing_real_model_names_model_and_download_command(empty_weights):
    with pytest.raises(weights.WeightsMissingError) as err:
        ModelHub(tiny=False, device="cpu").get("dinov2_b14")
    message = str(err.value)
    assert "dinov2_b14" in message
    assert "python -m vision weights download dinov2_b14" in message
    assert str(empty_weights / "dinov2_b14" / "model.safetensors") in message


def test_weights_found_in_project_folder(empty_weights):
    folder = empty_weights / "sam_b"
    folder.mkdir(parents=True)
    (folder / "sam_vit_b_01ec64.pth").write_bytes(b"x")
    assert weights.status("sam_b") == "present"
    assert weights.resolve("sam_b") == folder


def test_truncated_weight_file_is_reported_corrupt(empty_weights):
    from segment_anything import sam_model_registry

    folder = empty_weights / "sam_b"
    folder.mkdir(parents=True)
    full = folder / "full.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), full)
    data = full.read_bytes()
    full.unlink()
    (folder / "sam_vit_b_01ec64.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(weights.WeightsCorruptError, match="sam_b.*truncated or damaged"):
        ModelHub(tiny=False, device="cpu").get("sam_b")


def test_checksum_mismatch_is_reported(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"not the published file")
    with pytest.raises(weights.WeightsCorruptError, match="md5 checksum"):
        weights.verify_checksum(f, "md5:01ec64d29a2fca3f0661936605ae66f8", "sam_b")
    weights.verify_checksum(f, "md5:" + weights.file_digest(f, "md5"), "sam_b")  # a match passes


def test_url_download_without_network_fails_fast(empty_weights, monkeypatch):
    monkeypatch.delenv("VISION_OFFLINE", raising=False)
    closed_port = weights.WeightSpec("sam_b", "test", ("sam.pth",), 1, "x", url="http://127.0.0.1:9/sam.pth")
    monkeypatch.setitem(weights.REGISTRY, "sam_b", closed_port)
    start = time.monotonic()
    with pytest.raises(weights.WeightsMissingError, match="(?s)download failed.*weights download sam_b"):
        weights.resolve("sam_b")
    assert time.monotonic() - start < 15
    assert not list((empty_weights / "sam_b").glob(".part-*"))  # no half-written file left behind


def run_cli(*args, env_extra=None, timeout=60):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "vision", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def test_cli_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0 and "weights" in out.stdout


def test_cli_weights_list_shows_missing(tmp_path):
    out = run_cli("weights", "list", env_extra={"VISION_WEIGHTS_DIR": str(tmp_path), "HF_HUB_CACHE": str(tmp_path)})
    assert out.returncode == 0
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert set(weights.REGISTRY) <= set(rows)
    assert "missing" in rows["sam_b"] and "375 MB" in rows["sam_b"]


def test_cli_hub_download_without_network_fails_fast_with_advice(tmp_path):
    start = time.monotonic()
    out = run_cli("weights", "download", "dinov2_b14", env_extra={
        "VISION_WEIGHTS_DIR": str(tmp_path / "w"), "HF_HUB_CACHE": str(tmp_path / "c"),
        "HF_ENDPOINT": "http://127.0.0.1:9", "VISION_OFFLINE": "0"})
    assert time.monotonic() - start < 15
    assert out.returncode == 1
    assert "dinov2_b14" in out.stdout and "python -m vision weights download dinov2_b14" in out.stdout


STORY_MODELS = ("sd15_unet", "sd15_vae", "sd15_text_encoder", "ip_adapter_sd15", "ip_image_encoder_h")


def test_every_missing_model_of_a_request_is_reported_at_once(empty_weights, monkeypatch):
    """#20.5: Story needs five models and said so in five failed runs, one model each."""
    from vision.engines.story import StoryConfig, StoryEngine

    monkeypatch.setenv("VISION_OFFLINE", "1")
    assert sorted(weights.models_for("story")) == sorted(STORY_MODELS)
    with pytest.raises(weights.WeightsMissingError) as err:
        engine = StoryEngine(StoryConfig.from_preset("sd15"), hub=ModelHub(tiny=False, device="cpu"))
        engine(["a fox"], empty_weights.parent / "out")
    message = str(err.value)
    for name in STORY_MODELS:
        assert f"{name} (" in message and f"{weights.spec(name).size_mb} MB" in message
    total = sum(weights.spec(name).size_mb for name in STORY_MODELS)
    assert f"{total} MB in all" in message
    assert "python -m vision weights download --for story" in message
    assert message.count("Get them") == 1  # one message, not one per model


def test_each_engine_has_a_download_set_and_the_cli_fetches_it(tmp_path):
    for engine in weights.ENGINES:
        assert weights.models_for(engine) and set(weights.models_for(engine)) <= set(weights.REGISTRY)
    out = run_cli("weights", "download", "--for", "story", env_extra={
        "VISION_WEIGHTS_DIR": str(tmp_path / "w"), "HF_HUB_CACHE": str(tmp_path / "c"), "VISION_OFFLINE": "1"})
    assert out.returncode == 1
    for name in STORY_MODELS:
        assert f"{name}: not downloaded" in out.stdout
    assert "python -m vision weights download --for story" in out.stdout.splitlines()[-1]
    bad = run_cli("weights", "download", "--for", "nothing")
    assert bad.returncode == 2 and "invalid choice: 'nothing'" in bad.stderr and "'story'" in bad.stderr


def test_cli_story_without_weights_prints_the_message_not_a_traceback(empty_weights, monkeypatch, capsys):
    """#20.6: ``story`` printed a 60-line double traceback for missing weights (the others print the message)."""
    from vision.cli import main
    from vision.hub import get_hub, set_hub

    monkeypatch.setenv("VISION_OFFLINE", "1")
    story = empty_weights.parent / "story.txt"
    story.write_text("a fox\n")
    previous = get_hub()
    set_hub(ModelHub(tiny=False, device="cpu"))
    try:
        code = main(["story", "--story", str(story), "--output", str(empty_weights.parent / "out")])
    finally:
        set_hub(previous)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "--for story" in err and all(name in err for name in STORY_MODELS)


def test_batch_summary_keeps_the_whole_missing_weights_advice(tmp_path):
    """#20.6: the batch summary cut the advice at 'Get them one of these ways:'."""
    from vision.batch import Summary

    advice = weights.missing_models_message([weights.spec("sam_t")], "segment")
    summary = Summary(total=3, failed=3, output=str(tmp_path),
                      failures=[("a.png", advice), ("b.png", advice), ("c.png", advice)])
    text = summary.text()
    assert "python -m vision weights download --for segment" in text
    assert text.count("Get them") == 1 and "a.png, b.png, c.png" in text


@pytest.fixture
def only_sam_t(empty_weights, monkeypatch, sam_t_weights):
    """An offline machine whose weights folder holds sam_t alone (the real converted weights)."""
    monkeypatch.setenv("VISION_OFFLINE", "1")
    empty_weights.mkdir()
    (empty_weights / "sam_t").symlink_to(sam_t_weights)
    return empty_weights


@pytest.mark.parametrize("changes, missing", [({}, "dinov2_b14"), ({"features": "sam"}, "sam_b")])
def test_ipseg_without_its_models_names_the_installed_route(only_sam_t, changes, missing):
    """#20.4: IPSeg's default failed on dinov2_b14 with no hint that SAM features + sam_t work here; SAM
    features with the preset's SAM then failed on sam_b although sam_t is installed."""
    from vision.engines.ipseg import IPSegConfig, IPSegEngine
    from vision.imaging import sample_image

    engine = IPSegEngine(IPSegConfig.from_preset("default", **changes), hub=ModelHub(tiny=False, device="cpu"))
    with pytest.raises(weights.WeightsMissingError) as err:
        engine(sample_image("chelsea"), sample_image("coffee"))
    message = str(err.value)
    assert missing in message
    assert "--features sam --sam sam_t" in message and "Segmenter (SAM) 'sam_t'" in message


def test_ipseg_cli_without_its_models_names_the_installed_route(only_sam_t, tmp_path, capsys):
    from vision.cli import main
    from vision.hub import get_hub, set_hub

    photo = tmp_path / "cat.png"
    Image.fromarray(sample_image("chelsea")[::4, ::4]).save(photo)
    previous = get_hub()
    set_hub(ModelHub(tiny=False, device="cpu"))
    try:
        code = main(["ipseg", "--features", "sam", "--prompt", str(photo), "--input", str(photo),
                     "--output", str(tmp_path / "out"), "--no-progress"])
    finally:
        set_hub(previous)
    err = capsys.readouterr().err
    assert code != 0 and "sam_b" in err and "--features sam --sam sam_t" in err
