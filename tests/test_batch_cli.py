"""Batch mode end to end through the real engine CLIs (tiny models): ``trident`` and ``ipseg``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vision.imaging import array_to_rgb


def _folder(root: Path, names=("astronaut", "coffee")) -> Path:
    from skimage import data

    root.mkdir(parents=True)
    for name in names:
        arr = array_to_rgb(getattr(data, name)())[::8, ::8]
        Image.fromarray(np.ascontiguousarray(arr)).save(root / f"{name}.jpg")
    (root / "broken.png").write_text("not an image")
    return root


def _cli(argv: list[str]) -> int:
    """``python -m vision ...`` in-process, on the session's shared tiny hub (no new models built)."""
    from vision.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.run(args)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.skipif(importlib.util.find_spec("vision.commands.trident") is None, reason="no trident command yet")
def test_trident_cli_batch(tiny_hub, tmp_path):
    src = _folder(tmp_path / "in", names=("astronaut",))
    out = tmp_path / "out"
    argv = ["trident", "--labels", "cat; person; background", "--input", str(src), "--output", str(out),
            "--no-progress", "--coco-json"]
    assert _cli(argv) == 1  # broken.png
    rows = {r["id"]: r for r in _rows(out / "results.jsonl")}
    assert rows["broken.png"]["status"] == "error" and len(_rows(out / "errors.jsonl")) == 1
    for name in ("astronaut",):
        row = rows[f"{name}.jpg"]
        assert row["status"] == "ok" and row["classes"][:2] == ["cat", "person"]
        labels = Image.open(out / row["outputs"]["labels.png"])
        assert labels.mode == "P" and labels.size == Image.open(src / f"{name}.jpg").size
        assert (out / f"{name}.overlay.png").is_file()
    assert json.loads((out / "coco.json").read_text())["images"]
    # Rerun: nothing redone, still one line per item.
    assert _cli(argv) == 1
    assert len(_rows(out / "results.jsonl")) == 2
    # Other settings (classes) redo the items.
    argv[2] = "cat; dog; background"
    assert _cli(argv + ["--shard", "0/1"]) == 1
    assert {r["classes"][1] for r in _rows(out / "results.jsonl") if r["status"] == "ok"} == {"dog"}


@pytest.mark.skipif(importlib.util.find_spec("vision.commands.ipseg") is None, reason="no ipseg command yet")
def test_ipseg_cli_batch(tiny_hub, tmp_path):
    src = _folder(tmp_path / "in", names=("chelsea",))
    prompt = _folder(tmp_path / "prompt", names=("coffee",)) / "coffee.jpg"
    out = tmp_path / "out"
    argv = ["ipseg", "--fast", "--prompt", str(prompt), "--input", str(src), "--output", str(out), "--no-progress",
            "--coco-json", "--batch-size", "2"]
    assert _cli(argv) == 1
    rows = {r["id"]: r for r in _rows(out / "results.jsonl")}
    assert rows["chelsea.jpg"]["status"] == "ok" and rows["broken.png"]["status"] == "error"
    mask = np.asarray(Image.open(out / "chelsea.mask.png"))
    assert mask.shape == np.asarray(Image.open(src / "chelsea.jpg")).shape[:2] and set(np.unique(mask)) <= {0, 255}
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == 1 and coco["annotations"]
    assert _cli(["ipseg", "--fast", "--prompt", str(prompt), "--input", str(src), "--output", str(src / "o")]) == 2


def test_a_single_input_file_may_have_its_output_folder_beside_it(tiny_hub, tmp_path, monkeypatch):
    """``trident --input cat.jpg --output out`` from the image's own folder was refused: "the output
    folder ... is inside the input folder" (the file's folder was taken as the input folder)."""
    src = _folder(tmp_path / "photos", names=("astronaut",))
    monkeypatch.chdir(src)
    argv = ["trident", "--labels", "cat; background", "--input", "astronaut.jpg", "--output", "out", "--no-progress"]
    assert _cli(argv) == 0
    assert [r["id"] for r in _rows(src / "out" / "results.jsonl")] == ["astronaut.jpg"]
    assert _cli(["trident", "--labels", "cat; background", "--input", str(src), "--output", str(src / "out2"),
                 "--no-progress"]) == 2  # a folder input still keeps its outputs out of it
