"""``python -m vision video`` in tiny mode: outputs (zero-padded masks, results.jsonl, COCO RLE, overlay),
resuming, a frame failing mid-video, and every bad input of issue 23 as a message naming the file."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from vision import limits, videoio
from vision.cli import build_parser, main
from vision.evaluation.synthetic_video import synthetic_clip

SIZE = (96, 128)


@pytest.fixture(scope="module")
def clip():
    return synthetic_clip(5, size=SIZE)


@pytest.fixture
def frames_dir(clip, tmp_path):
    return clip.write_frames(tmp_path / "frames")


def video(*words: str) -> int:
    return main(["video", "--tiny", "--no-progress", *words])


def test_sam2_run_outputs(tiny_hub, one_torch_thread, frames_dir, tmp_path):
    out = tmp_path / "out"
    assert video("--preset", "sam2", "--point", "36,48", "--input", str(frames_dir), "--output", str(out),
                 "--coco-json") == 0
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert [n for n in names if n.endswith(".mask.png")] == [f"{k:05d}.mask.png" for k in range(5)]
    assert {"results.jsonl", "overlay.mp4", "video.json", "coco.json"} <= set(names)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(5)) and all(r["status"] == "ok" for r in rows)
    assert rows[0]["track"] == "sam2" and rows[0]["tiny"] and rows[0]["prior"] == "prompt"
    coco = json.loads((out / "coco.json").read_text())  # one image per frame, its mask's RLE area
    assert [i["file_name"] for i in coco["images"]] == [r["id"] for r in rows]
    areas = {a["image_id"]: a["area"] for a in coco["annotations"]}
    for image in coco["images"]:
        mask = np.asarray(Image.open(out / f"{image['file_name']}.mask.png")) > 0
        assert areas[image["id"]] == mask.sum()
    summary = json.loads((out / "video.json").read_text())
    assert len(summary["scores"]) == 5 and summary["failed"] == []
    # a rerun of the same command finds every frame done
    assert video("--preset", "sam2", "--point", "36,48", "--input", str(frames_dir), "--output", str(out)) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 5


def test_a_frame_failing_mid_video_is_logged_and_the_run_goes_on(tiny_hub, one_torch_thread, frames_dir, tmp_path,
                                                                 capsys):
    (frames_dir / "00002.png").write_bytes(b"\x89PNG cut short")
    out = tmp_path / "out"
    assert video("--preset", "sam2", "--point", "36,48", "--input", str(frames_dir), "--output", str(out)) == 1
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["00002"] and "00002.png" in errors[0]["reason"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "ok", "ok"]
    assert "1 failed of 5" in capsys.readouterr().err
    assert videoio.probe(out / "overlay.mp4").count == 5  # the failed frame is in the overlay, marked


def bad_inputs(tmp_path, clip):
    """(name, input path, extra words, expected message) for each bad input of issue 23."""
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    empty = tmp_path / "empty.mov"
    empty.write_bytes(b"")
    whole = videoio.write_video(clip.frames, tmp_path / "whole.mp4", fps=12)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:300])
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(clip.frames[0]).save(mixed / "0.png")
    Image.fromarray(clip.frames[1][:80]).save(mixed / "1.png")
    return [("not a video", text, [], r"notes\.mp4: not a video file"),
            ("zero length", empty, [], r"empty\.mov: empty file \(0 bytes\)"),
            ("truncated", cut, [], r"cut\.mp4: (not a video file, or truncated|no video stream|no decodable frame)"),
            ("mixed sizes", mixed, [], r"1\.png: 128x80 pixels, but 0\.png \(the first frame\) is 128x96"),
            ("click outside", whole, ["--point", "500,20"], r"point 500,20 is outside the frame of .*whole\.mp4"),
            ("frame beyond", whole, ["--point", "36,48", "--frame", "9"], r"whole\.mp4: prompt frame 9 does not exist")]


def test_bad_inputs_name_the_file(tiny_hub, clip, tmp_path, capsys):
    for name, path, extra, message in bad_inputs(tmp_path, clip):
        words = extra if extra else ["--point", "36,48"]
        assert video("--preset", "sam2", *words, "--input", str(path), "--output", str(tmp_path / "o")) == 2, name
        err = capsys.readouterr().err
        assert re.search(r"^video: .*" + message, err, flags=re.MULTILINE), (name, err)
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_over_the_limits(tiny_hub, clip, tmp_path, monkeypatch, capsys):
    path = videoio.write_video(clip.frames, tmp_path / "long.mp4", fps=12)
    monkeypatch.setattr(limits, "MAX_VIDEO_FRAMES", 3)
    assert video("--preset", "sam2", "--point", "36,48", "--input", str(path), "--output", str(tmp_path / "o")) == 2
    assert "long.mp4: 5 frames to process exceeds the limit of 3" in capsys.readouterr().err
    monkeypatch.setattr(limits, "MAX_VIDEO_SIDE", 100)
    assert video("--preset", "sam2", "--point", "36,48", "--input", str(path), "--output", str(tmp_path / "o")) == 2
    assert "long.mp4: 128x96 pixels per frame is outside the video limit" in capsys.readouterr().err


def test_option_errors_name_the_option(tiny_hub, frames_dir, tmp_path, capsys):
    out = str(tmp_path / "o")
    assert video("--point", "1,2,3", "--input", str(frames_dir), "--output", out) == 2
    assert "--point wants 2 comma-separated numbers" in capsys.readouterr().err
    assert video("--prompt", str(tmp_path / "missing.png"), "--input", str(frames_dir), "--output", out) == 2
    assert "missing.png: no such file" in capsys.readouterr().err
    assert video("--point", "3,3", "--every", "0", "--input", str(frames_dir), "--output", out) == 2
    assert "every=0 must be an integer >= 1" in capsys.readouterr().err
    assert video("--input", str(frames_dir), "--output", out) == 2
    assert "give an exemplar image, a mask, a click (point) or a box" in capsys.readouterr().err


def test_method_passes_through_to_the_image_engine(tiny_hub, frames_dir, tmp_path):
    from vision.commands import video as command
    from vision.engines.ipseg.config import METHODS

    words = ["video", "--point", "3,3", "--method", METHODS[-1], "--input", str(frames_dir), "--output", "o"]
    config = command.make_config(build_parser(words).parse_args(words))
    assert config.method == METHODS[-1] and config.image_config().method == METHODS[-1]
    assert config.image_config().features == "dino"  # the default preset's image engine: DINOv2 + SAM-B
