"""The Video tab: the ``/video`` API on the session's tiny server, and in Chromium: upload the synthetic
mp4 and the exemplar, run, the overlay video plays (a duration, and time advancing) and the per-frame
score plot shows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from app_harness import open_tab
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from vision import videoio
from vision.evaluation.synthetic_video import synthetic_clip

FRAMES = 6


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """The synthetic clip (6 frames, 96x128, 12 fps) as an mp4, and its exemplar with its mask."""
    folder = tmp_path_factory.mktemp("video")
    clip = synthetic_clip(FRAMES, size=(96, 128))
    mp4 = videoio.write_video(clip.frames, folder / "clip.mp4", fps=12)
    Image.fromarray(clip.exemplar).save(folder / "cup.png")
    Image.fromarray(clip.exemplar_mask.astype(np.uint8) * 255).save(folder / "cup_mask.png")
    return {"video": str(mp4), "exemplar": str(folder / "cup.png"), "mask": str(folder / "cup_mask.png")}


def _video(client, files, kind="exemplar image", clicks="", **options):
    return client.predict(handle_file(files["video"]), kind, handle_file(files["exemplar"]),
                          handle_file(files["mask"]), "", clicks, 0, options.get("preset", "fast"), "preset",
                          "preset", "preset", "preset", options.get("every", 1), 0, True, api_name="/video")


def test_video_api_outputs_agree(client, clip_files):
    overlay, plot, frame, slider, downloads, summary = _video(client, clip_files, every=2)
    info = videoio.probe(overlay)
    assert info.count == FRAMES // 2 and (info.width, info.height) == (128, 96)
    assert np.asarray(Image.open(frame)).shape == (96, 128, 3)  # the first frame with its mask
    rows = plot["data"]
    assert [r[0] for r in rows] == [0, 2, 4]  # frame indices of the processed frames
    assert slider["maximum"] == 2  # the slider walks the 3 processed frames
    names = sorted(p.rsplit("/", 1)[-1] for p in downloads)
    assert names == ["coco.json", "masks.zip", "overlay.mp4", "results.jsonl"]
    results = Path(next(p for p in downloads if p.endswith(".jsonl")))
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["00000", "00002", "00004"]
    assert [r["score"] for r in lines] == [pytest.approx(r[1]) for r in rows]
    assert "TINY MODE" in summary and "track **exemplar**" in summary and "How to read this" in summary


def test_video_api_bad_inputs_name_the_file(client, clip_files, tmp_path):
    text = tmp_path / "holiday.mp4"
    text.write_text("not a video\n" * 40)
    with pytest.raises(AppError, match=r"holiday\.mp4: not a video file"):
        _video(client, {**clip_files, "video": str(text)})
    with pytest.raises(AppError, match=r"point 900,5 is outside the frame of clip\.mp4 \(frame 0, 128x96"):
        _video(client, clip_files, kind="clicks on a frame", clicks="900, 5, 1")


def test_video_tab_overlay_plays_and_the_plot_shows(page, clip_files):
    from playwright.sync_api import expect

    open_tab(page, "Video")
    page.locator("#video-input input[type=file]").set_input_files(clip_files["video"])
    page.locator("#video-exemplar input[type=file]").set_input_files(clip_files["exemplar"])
    page.locator("#video-exemplar-mask input[type=file]").set_input_files(clip_files["mask"])
    expect(page.locator("#video-input video")).to_have_count(1)
    page.locator("#video-run").click(no_wait_after=True)
    video = page.locator("#video-overlay video")
    expect(video).to_have_count(1, timeout=600_000)
    duration = video.evaluate("""v => new Promise(done => {
        if (v.readyState >= 1) done(v.duration); else v.addEventListener('loadedmetadata', () => done(v.duration));
    })""")
    assert duration == pytest.approx(FRAMES / 12, abs=0.1)
    advanced = video.evaluate("""v => new Promise(done => {
        v.muted = true; const start = v.currentTime;
        v.play().then(() => setTimeout(() => done([start, v.currentTime, v.error && v.error.code]), 300));
    })""")
    assert advanced[2] is None and advanced[1] > advanced[0]  # Chromium decodes the H.264 and plays it
    plot = page.locator("#video-scores")
    expect(plot.locator("canvas, svg").first).to_be_visible()
    expect(page.locator("#video-summary")).to_contain_text("track exemplar")
