"""Weights registry: resolution, clear errors without weights or network, corrupt files detected."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vision import weights
from vision.hub import ModelHub

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
