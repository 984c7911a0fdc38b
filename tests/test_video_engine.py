"""The video engine on tiny random models: both tracks end to end, SAM 2's bounded streaming session,
resuming, instance ids, the prompt's checks, and the missing-weights message of SAM 2.1."""

import json

import numpy as np
import pytest
from PIL import Image

from vision import videoio
from vision.batch.video import run_video
from vision.engines.ipseg import Prompt
from vision.engines.video import VideoConfig, VideoEngine, VideoError, VideoPrompt
from vision.engines.video.exemplar import IdAssigner
from vision.evaluation.synthetic_video import synthetic_clip

SIZE = (96, 128)  # H, W: tiny models need no more


@pytest.fixture(scope="module")
def clip():
    return synthetic_clip(6, size=SIZE)


@pytest.fixture(scope="module")
def frames_dir(clip, tmp_path_factory):
    return clip.write_frames(tmp_path_factory.mktemp("clip") / "frames")


def exemplar(clip):
    return VideoPrompt(exemplar=Prompt(clip.exemplar, mask=clip.exemplar_mask))


def test_sam2_track_end_to_end(tiny_hub, one_torch_thread, frames_dir, clip):
    engine = VideoEngine(VideoConfig.from_preset("sam2"), hub=tiny_hub)
    events = []
    result = engine(frames_dir, VideoPrompt(mask=clip.masks[1], frame=1), progress=events.append)
    assert [f.index for f in result.frames] == [1, 2, 3, 4, 5]  # sam2 starts at the prompt's frame
    for frame in result.frames:
        assert frame.error is None and 0.0 <= frame.score <= 1.0
        assert all(m.shape == SIZE and m.dtype == bool for m in frame.masks())
    # A mask prompt is SAM 2's output on its own frame.
    assert np.array_equal(result.frames[0].masks()[0], clip.masks[1])
    assert [e.position.get("frame") for e in events] == [0, 1, 2, 3, 4, None] and events[-1].fraction == 1.0
    record = json.loads(json.dumps(result.to_record()))
    assert record["engine"] == "video" and record["track"] == "sam2" and record["sam2_model"] == "sam2_tiny"
    assert record["tiny"] and "notice" in record and record["models"]["sam2"] == "sam2_tiny"


def test_bounded_session_gives_the_same_masks(tiny_hub, one_torch_thread, clip):
    from vision.engines.video.sam2 import Sam2Tracker

    model = tiny_hub.get("sam2_tiny")
    frames = [f for f in synthetic_clip(10, size=SIZE).frames]
    runs = {}
    for bounded in (True, False):
        tracker = Sam2Tracker(model, bounded=bounded)
        masks = [tracker.condition(frames[0], mask=clip.masks[0])[0]]
        masks += [tracker.step(f)[0] for f in frames[1:]]
        runs[bounded] = (masks, tracker.session)
    assert all(np.array_equal(a, b) for a, b in zip(runs[True][0], runs[False][0], strict=True))
    bounded, full = runs[True][1], runs[False][1]
    assert len(full.processed_frames) == 10 and len(bounded.processed_frames) == 0  # pixels: none kept
    window = max(model.config.num_maskmem, model.config.max_object_pointers_in_encoder)
    kept = bounded.output_dict_per_obj[0]["non_cond_frame_outputs"]
    assert len(full.output_dict_per_obj[0]["non_cond_frame_outputs"]) == 9 and len(kept) == window


def test_sam2_run_is_resumable(tiny_hub, one_torch_thread, frames_dir, clip, tmp_path):
    engine = VideoEngine(VideoConfig.from_preset("sam2"), hub=tiny_hub)
    prompt = VideoPrompt(points=[(40, 48)], frame=0)
    out = tmp_path / "out"

    def killed_at_frame_3(progress):
        if progress.position.get("frame") == 3:
            raise KeyboardInterrupt  # as Ctrl-C (or a kill) between frames

    first = run_video(engine, frames_dir, prompt, out, progress=killed_at_frame_3, log=lambda _: None)
    assert first.interrupted and first.done == 3 and not (out / "overlay.mp4").exists()
    second = run_video(engine, frames_dir, prompt, out, log=lambda _: None)
    assert (second.skipped, second.done, second.failed) == (3, 3, 0)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["00000", "00001", "00002", "00003", "00004", "00005"]
    assert [r["prior"] for r in rows] == ["prompt", "memory", "memory", "resumed-mask", "memory", "memory"]
    for row in rows:
        assert Image.open(out / row["outputs"]["mask.png"]).size == (SIZE[1], SIZE[0])
    info = videoio.probe(out / "overlay.mp4")
    assert info.count == 6 and (info.width, info.height) == (SIZE[1], SIZE[0])


def test_exemplar_track_records_and_ids(tiny_hub, one_torch_thread, frames_dir, clip):
    config = VideoConfig.from_preset("fast", max_frames=3)
    result = VideoEngine(config, hub=tiny_hub)(frames_dir, exemplar(clip))
    assert [f.index for f in result.frames] == [0, 1, 2]
    frames = list(VideoEngine(config, hub=tiny_hub).track(videoio.probe(frames_dir), exemplar(clip)))
    assert frames[0].prior == "none"
    record = json.loads(json.dumps(frames[1].to_record()))
    assert record["track"] == "exemplar" and record["features"] == "sam" and record["frame"] == 1
    assert record["method"] == "ipseg" and record["preset"] == "fast" and record["mode"] == "product"
    assert frames[1].to_files()["mask.png"].shape == SIZE


def test_ids_follow_instances_by_overlap():
    ids = IdAssigner()
    a, b = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    a[:4, :4], b[6:, 6:] = True, True
    assert ids.assign([("cup", a), ("cup", b)]) == [1, 2]
    assert ids.assign([("cup", b), ("cup", a)]) == [2, 1]  # swapped order, same objects
    c = np.zeros((10, 10), bool)
    c[:4, 5:8] = True
    assert ids.assign([("cup", c)]) == [3]  # no overlap with either: a new object


def test_prompt_problems_name_the_video(tiny_hub, frames_dir):
    info = videoio.probe(frames_dir)
    engine = VideoEngine(VideoConfig.from_preset("sam2"), hub=tiny_hub)
    with pytest.raises(VideoError, match=r"point 500,20 is outside the frame of .*frames \(frame 0, 128x96"):
        next(engine.track(info, VideoPrompt(points=[(500, 20)])))
    with pytest.raises(VideoError, match=r"frames: prompt frame 9 does not exist \(frames 0\.\.5\)"):
        next(engine.track(info, VideoPrompt(points=[(5, 5)], frame=9)))
    with pytest.raises(VideoError, match="give one of exemplar, mask or points/box, not exemplar and points/box"):
        VideoPrompt(exemplar="x.png", points=[(1, 1)]).check(info)
    with pytest.raises(VideoError, match=r"box \[5, 5, 5, 9\] has no area"):
        VideoPrompt(box=[5, 5, 5, 9]).check(info)
    with pytest.raises(VideoError, match="prompt mask: 10x10 pixels, but the frames of"):
        VideoPrompt(mask=np.ones((10, 10), bool)).load_mask(info)


def test_settings_are_checked_by_field():
    with pytest.raises(VideoError, match=r"track='flow' must be one of exemplar, sam2"):
        VideoConfig(track="flow").validate()
    with pytest.raises(VideoError, match=r"every=0 must be an integer >= 1"):
        VideoConfig(every=0).validate()
    with pytest.raises(VideoError, match=r"image engine: method='nope' must be one of"):
        VideoConfig(method="nope").validate()
    with pytest.raises(VideoError, match="unknown video preset 'slow'"):
        VideoConfig.from_preset("slow")


def test_sam2_missing_weights_names_the_command_and_path(tmp_path, monkeypatch, frames_dir):
    from vision.hub import ModelHub
    from vision.weights import WeightsMissingError

    monkeypatch.setenv("VISION_WEIGHTS_DIR", str(tmp_path / "weights"))
    engine = VideoEngine(VideoConfig.from_preset("sam2"), hub=ModelHub(tiny=False, device="cpu"))
    with pytest.raises(WeightsMissingError) as err:
        next(engine.track(videoio.probe(frames_dir), VideoPrompt(points=[(40, 48)])))
    text = str(err.value)
    assert "sam2_tiny" in text and "weights download sam2_tiny" in text
    assert str(tmp_path / "weights" / "sam2_tiny" / "model.safetensors") in text
