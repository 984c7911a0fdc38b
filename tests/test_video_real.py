"""The video engine with the real ``sam_t`` weights (SAM features): the acceptance clip (24 frames of a cup
cut from ``coffee()`` with its exact mask, moving over ``astronaut()``, growing to 1.5x and partly hidden
by a bar cut from ``rocket()``), found from the cup pasted on ``hubble_deep_field()``.

* mean IoU over the frames >= 0.8 with ``track="exemplar"``, and the temporal prior helps (both printed);
* the same clip as an mp4 and as a folder of frames gives the same masks (the mp4 is lossless H.264,
  libx264rgb at crf 0, so both decode to the same pixels; every 6th frame, to keep the test short).
"""

import numpy as np
import pytest

from vision import videoio
from vision.batch.video import run_video
from vision.engines.ipseg import Prompt
from vision.engines.video import VideoConfig, VideoEngine, VideoPrompt
from vision.evaluation.synthetic_video import synthetic_clip
from vision.imaging import load_mask


@pytest.fixture(scope="module")
def clip():
    return synthetic_clip(24)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_exemplar_track_follows_the_cup_and_the_prior_helps(sam_t_hub, clip, tmp_path):
    frames = clip.write_frames(tmp_path / "frames")
    prompt = VideoPrompt(exemplar=Prompt(clip.exemplar, mask=clip.exemplar_mask))
    means = {}
    for prior in (True, False):
        engine = VideoEngine(VideoConfig.from_preset("fast", prior=prior), hub=sam_t_hub)
        result = engine(frames, prompt)
        assert [f.index for f in result.frames] == list(range(24)) and all(f.error is None for f in result.frames)
        ious = [iou(np.logical_or.reduce(f.masks()) if f.rles else np.zeros(clip.masks[0].shape, bool), gt)
                for f, gt in zip(result.frames, clip.masks, strict=True)]
        means[prior] = float(np.mean(ious))
        print(f"prior={'search-region' if prior else 'none'}: mean IoU {means[prior]:.4f}; per frame "
              f"{np.round(ious, 2).tolist()}")
    assert means[True] >= 0.8
    assert means[True] > means[False]


def test_mp4_and_frame_folder_give_the_same_masks(sam_t_hub, clip, tmp_path):
    folder = clip.write_frames(tmp_path / "frames")
    mp4 = videoio.write_video(clip.frames, tmp_path / "clip.mp4", fps=clip.fps, lossless=True)
    engine = VideoEngine(VideoConfig.from_preset("fast", every=6), hub=sam_t_hub)
    prompt = VideoPrompt(exemplar=Prompt(clip.exemplar, mask=clip.exemplar_mask))
    for source, out in ((folder, tmp_path / "from_frames"), (mp4, tmp_path / "from_mp4")):
        summary = run_video(engine, source, prompt, out, overlay=False, log=lambda _: None)
        assert (summary.done, summary.failed) == (4, 0)
    ious = []
    for name in ("00000", "00006", "00012", "00018"):
        a = load_mask(tmp_path / "from_frames" / f"{name}.mask.png")
        b = load_mask(tmp_path / "from_mp4" / f"{name}.mask.png")
        assert np.array_equal(a, b), name
        ious.append(iou(a, clip.masks[int(name)]))
    print(f"every 6th frame: IoU {np.round(ious, 3).tolist()}")
    assert np.mean(ious) >= 0.8  # and they are the cup (frame 12, the bar across it, is the hardest)
