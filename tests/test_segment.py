"""Segment engine: prompts, masks best first, the embedding cache, everything mode, outputs, bad input,
the CLI; and with the real sam_t weights: one click per coin of coins(), the cat of chelsea()."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from vision.engines import segment as S
from vision.engines.segment import SegmentConfig, SegmentEngine, SegmentError
from vision.imaging import sample_image

ROOT = Path(__file__).resolve().parent.parent


class EncoderCounter:
    """Counts forward calls of SAM's image encoder (a forward hook)."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model.image_encoder.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def close(self):
        self.handle.remove()


@pytest.fixture(scope="module")
def chelsea():
    return sample_image("chelsea")  # 451 x 300


@pytest.fixture
def engine(tiny_hub, one_torch_thread):
    return SegmentEngine(SegmentConfig(backend="torch"), tiny_hub)


# ---------------------------------------------------------------------------------------- tiny models
@pytest.mark.parametrize("sam", ["sam_t", "sam_b", "sam_h"])
def test_a_click_gives_three_masks_best_first(tiny_hub, one_torch_thread, chelsea, sam):
    result = SegmentEngine(SegmentConfig(sam_model=sam, backend="torch"), tiny_hub)(chelsea, [(200, 150)])
    assert result.multimask and len(result.masks) == len(result.scores) == 3
    assert result.scores == sorted(result.scores, reverse=True)
    assert all(m.shape == (300, 451) and m.dtype == bool for m in result.masks)
    assert result.mask is result.masks[0] and result.sam_model == sam and result.tiny


def test_several_prompts_give_one_mask_unless_asked(engine, chelsea):
    assert len(engine(chelsea, [(200, 150), (50, 50, 0)]).masks) == 1
    assert len(engine(chelsea, box=(10, 10, 200, 200)).masks) == 1
    assert len(engine(chelsea, [(200, 150), (50, 50, 0)], multimask=True).masks) == 3
    assert len(engine(chelsea, [(200, 150)], multimask=False).masks) == 1


def test_embedding_is_cached_by_image_content(tiny_hub, one_torch_thread, chelsea):
    engine = SegmentEngine(SegmentConfig(cache_size=2, backend="torch"), tiny_hub)
    counter = EncoderCounter(tiny_hub.get("sam_t"))
    try:
        first = engine(chelsea, [(200, 150)])
        second = engine(chelsea.copy(), [(100, 100), (300, 200, 0)])  # another array, same pixels
        assert (counter.calls, first.embedding_cached, second.embedding_cached) == (1, False, True)
        assert second.timings["encoder"] == 0.0 and first.timings["encoder"] > 0
        # The cached embedding gives the same masks as a fresh one.
        again = SegmentEngine(SegmentConfig(backend="torch"), tiny_hub)(chelsea, [(200, 150)])
        assert all(np.array_equal(a, b) for a, b in zip(first.masks, again.masks))
        # LRU of 2: chelsea, other, chelsea (hit), third (evicts other), other (miss).
        other, third = np.flipud(chelsea).copy(), np.fliplr(chelsea).copy()
        counter.calls = 0
        for image in (other, chelsea, third, other):
            engine(image, [(10, 10)])
        assert counter.calls == 3 and engine.cache.misses == 4  # 1 before + 3 here
    finally:
        counter.close()


def test_everything_mode_caps_the_grid_on_cpu_and_says_so(tiny_hub, one_torch_thread, chelsea):
    # Thresholds at zero: random weights must still yield masks to check the outputs with.
    loose = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_side=8, cpu_points_per_side=4)
    capped = SegmentEngine(SegmentConfig(**loose, backend="torch"), tiny_hub).everything(chelsea)
    assert capped.task == "everything" and capped.points_per_side == 4
    assert any("capped at 4 on CPU" in n for n in capped.notes)
    areas = [int(m.sum()) for m in capped.masks]
    assert capped.masks and areas == sorted(areas, reverse=True)
    labels = capped.labels()
    assert labels.max() <= len(capped.masks) and np.array_equal(labels > 0, capped.mask)
    reference = SegmentEngine(SegmentConfig(**loose, reference=True, backend="torch"), tiny_hub)
    assert reference.grid_side(tiny_hub.get("sam_t")) == (8, [])
    files = capped.to_files()
    assert set(files) == {"mask.png", "overlay.png", "rle.json", "labels.png"}


def test_outputs_png_rle_and_record(engine, chelsea):
    from pycocotools import mask as coco_mask

    from vision.batch import encode_files

    result = engine(chelsea, [(200, 150)], name="cat.png")
    encoded = encode_files(result)
    png = np.asarray(Image.open(io.BytesIO(encoded["mask.png"])))
    assert set(np.unique(png)) <= {0, 255} and np.array_equal(png == 255, result.mask)
    rle = json.loads(encoded["rle.json"])
    assert rle["size"] == [300, 451] and [m["score"] for m in rle["masks"]] == [round(s, 6) for s in result.scores]
    for entry, mask in zip(rle["masks"], result.masks):
        code = {"size": entry["segmentation"]["size"], "counts": entry["segmentation"]["counts"].encode()}
        assert np.array_equal(coco_mask.decode(code).astype(bool), mask)
    record = json.loads(json.dumps(result.to_record()))
    assert record["task"] == "points" and record["score"] == record["scores"][0] and record["tiny"] is True
    assert record["points"] == [[200.0, 150.0, 1]] and record["areas"][0] == int(result.mask.sum())
    assert result.overlay().shape == chelsea.shape


def test_contract_config_record_and_progress(tiny_hub, one_torch_thread, chelsea):
    """Issue 21's contract: presets, validate() returns the config, the record starts with engine_record's
    fields; progress says encoder (not on a cache hit), decoder and each everything batch, ending at 1."""
    config = SegmentConfig.from_preset("sam", backend="torch")
    assert config.validate() == config and config.reference and config.preset == "sam" and config.mode == "reference"
    engine = SegmentEngine(config, tiny_hub)
    first, again = [], []
    record = engine(chelsea, [(200, 150)], progress=first.append).to_record()
    engine(chelsea, [(10, 10)], progress=again.append)
    assert list(record)[:8] == ["engine", "method", "preset", "mode", "reference", "models", "tiny", "timings"]
    assert record["engine"] == "segment" and record["preset"] == "sam" and record["models"] == {"sam": "sam_t"}
    assert record["backend"] == "torch" and record["task"] == "points"
    assert [e.message for e in first] == ["SAM image encoder", "SAM mask decoder", "done"]
    assert [e.message for e in again] == ["SAM mask decoder", "done"] and again[-1].fraction == 1.0
    batches = []
    engine.with_config(points_per_side=3, points_per_batch=4).everything(chelsea, progress=batches.append)
    assert [(e["batch"], e["batches"]) for e in batches if "batch" in e.position] == [(1, 3), (2, 3), (3, 3)]
    assert SegmentEngine(hub=tiny_hub).config == SegmentConfig.from_preset("default")


@pytest.mark.parametrize("kwargs, message", [
    ({"points": [(451, 10)]}, r"points\[0\]: \(451, 10\) is outside the 451x300 image"),
    ({"points": [(10, 10), (10, -1)]}, r"points\[1\]: .* is outside"),
    ({"points": [(10, 10, 2)]}, r"points\[0\]: label 2 must be 1 \(foreground\) or 0"),
    ({"points": [(10, "x")]}, r"points\[0\]: expected 3 finite numbers"),
    ({"points": [(1, 1)] * 65}, r"points: 65 given, at most 64"),
    ({"box": (10, 10, 10, 50)}, r"box: .* has zero area"),
    ({"box": (10, 10, 500, 50)}, r"box: .* extends outside the 451x300 image"),
    ({"box": (1, 2, 3)}, r"box: expected 4 finite numbers"),
    ({}, r"points/box: give at least one point or a box"),
])
def test_bad_prompts_are_refused_naming_the_field(engine, chelsea, kwargs, message):
    with pytest.raises(SegmentError, match=message):
        engine(chelsea, **kwargs)


def test_bad_images_are_refused(engine, monkeypatch, tmp_path):
    from vision.imaging import ImageError

    with pytest.raises(SegmentError, match=r"image: 1x1 pixels is too small"):
        engine(np.zeros((1, 1, 3), np.uint8), [(0, 0)])
    monkeypatch.setattr(S, "MAX_PIXELS", 100 * 100)
    with pytest.raises(SegmentError, match=r"image: 101x100 pixels exceeds the limit of 10000"):
        engine(np.zeros((100, 101, 3), np.uint8), [(0, 0)])
    with pytest.raises(SegmentError, match=r"image: 101x100 pixels exceeds"):
        engine.everything(np.zeros((100, 101, 3), np.uint8))
    with pytest.raises(ImageError, match="no such file"):
        engine(tmp_path / "missing.png", [(0, 0)])


def test_settings_are_checked():
    with pytest.raises(SegmentError, match="sam_model='sam_x' must be one of sam_t, sam_b, sam_h"):
        SegmentConfig(sam_model="sam_x").validate()
    assert S.PRESETS["sam"].reference and not S.PRESETS["default"].reference


# --------------------------------------------------------------------- the Segment tab's box corners
def test_the_first_box_corner_is_drawn_on_the_image(chelsea_file, chelsea):
    """#20.7: after the first of two box-corner clicks the tab showed nothing. Its view now marks the corner
    (a green cross in a ring) and the typed clicks on the plain image, nothing else (not the box the new one
    replaces), and asks for the opposite corner."""
    from vision.ui.segment_tab import pending_corner_view

    view, note = pending_corner_view(str(chelsea_file), "20, 30, 1", "10, 10, 50, 50", (200, 150))
    assert view.shape == chelsea.shape and view.dtype == np.uint8
    assert tuple(view[150, 200]) == (0, 255, 0) != tuple(chelsea[150, 200])  # the corner pixel itself
    ys, xs = np.nonzero(np.any(view != chelsea, axis=2))
    near_corner, near_click = np.hypot(xs - 200, ys - 150) <= 10, np.hypot(xs - 20, ys - 30) <= 5
    assert near_corner.sum() > 30 and near_click.sum() > 10 and np.all(near_corner | near_click)
    assert "first corner at 200, 150; click the opposite corner" in note
    assert "replaces the current one (10, 10, 50, 50)" in note


def test_two_box_corner_clicks_show_the_corner_then_make_the_box(chelsea_file):
    """The first corner click returns the corner view and summary note (and starts no run, even with typed
    clicks); the second returns the box, from either corner order, and leaves the view to the run."""
    import gradio as gr

    from vision.ui.segment_tab import add_click, segment_after_click

    def click(x, y, corner, kind="box corner"):
        return add_click(str(chelsea_file), "20, 30, 1", "", corner, kind, "prompts",
                         gr.SelectData(None, {"index": [x, y], "value": None}))

    points, box, corner, view, note = click(300, 200, None)
    assert (points, box, corner) == ("20, 30, 1", "", (300, 200)) and tuple(view[200, 300]) == (0, 255, 0)
    assert "first corner at 300, 200" in note
    assert segment_after_click(str(chelsea_file), points, box, corner, "sam_t", None, "prompts") == (gr.skip(),) * 5
    assert click(100, 50, corner) == ("20, 30, 1", "100, 50, 301, 201", None, gr.skip(), gr.skip())
    assert click(100, 50, None, "foreground point")[2:] == (None, gr.skip(), gr.skip())


def run_cli(*args, env_extra=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "vision", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def chelsea_file(tmp_path_factory, chelsea):
    path = tmp_path_factory.mktemp("in") / "chelsea.png"
    Image.fromarray(chelsea).save(path)
    return path


def test_cli_reports_bad_options_and_bad_points(tiny_hub, one_torch_thread, chelsea_file, tmp_path, monkeypatch,
                                               capsys):
    """In-process (``vision.cli.main``, as ``python -m vision`` runs it): one interpreter start saved per case."""
    from vision.cli import main
    from vision.hub import set_hub

    monkeypatch.setenv("VISION_TINY", "1")  # --tiny sets it; monkeypatch restores the original
    image = ["segment", "--tiny", "--image", str(chelsea_file)]
    try:
        assert main([*image, "--point", "1,2,3,4", "--output", str(tmp_path / "a")]) == 2
        assert "--point wants 2 or 3 comma-separated numbers" in capsys.readouterr().err
        assert main([*image, "--output", str(tmp_path / "b")]) == 2
        assert "give at least one --point" in capsys.readouterr().err
        out = tmp_path / "c"
        assert main([*image, "--point", "900,10", "--output", str(out), "--no-progress"]) == 1
    finally:
        set_hub(tiny_hub)  # --tiny made the CLI a hub of its own
    error = json.loads((out / "errors.jsonl").read_text().splitlines()[0])
    assert error["error"] == "SegmentError" and "points[0]: (900, 10) is outside" in error["reason"]


# -------------------------------------------------------------------------------------- real weights
@pytest.fixture(scope="module", params=["torch", "onnx", "openvino"])
def real(request, sam_t_hub):
    """The engine with the real weights on each backend (the ONNX export is made once, beside them)."""
    from vision.sam.backends import missing_package

    if missing_package(request.param):
        pytest.skip(missing_package(request.param))
    engine = SegmentEngine(SegmentConfig(backend=request.param), sam_t_hub)
    assert engine.runner.backend_name == request.param, engine.runner.notes
    return engine


def coin_regions() -> list[np.ndarray]:
    """Ground truth: Otsu threshold of coins(), opened, holes filled; components over 300 px (25)."""
    from skimage import data, filters, morphology

    coins = data.coins()
    foreground = coins > filters.threshold_otsu(coins)
    # A disk of radius 2 opens the thin bridges between touching coins (a square would cut coins up).
    foreground = ndi.binary_fill_holes(morphology.opening(foreground, morphology.disk(2)))
    labels, n = ndi.label(foreground)
    sizes = ndi.sum(foreground, labels, range(1, n + 1))
    return [labels == i + 1 for i in range(n) if sizes[i] > 300]


def deepest_point(region: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(np.argmax(ndi.distance_transform_edt(region)), region.shape)
    return int(x), int(y)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_one_click_per_coin_gives_that_coin(real):
    from skimage import data

    coins = data.coins()
    regions = coin_regions()
    assert len(regions) >= 20
    scores = [iou(real(coins, [deepest_point(r)]).mask, r) for r in regions]
    assert np.mean(np.array(scores) >= 0.85) >= 0.8, np.round(scores, 3)


def test_a_click_on_the_cats_face_gives_the_cat(real, chelsea):
    result = real(chelsea, [(240, 170)])
    assert result.mask.mean() >= 0.5 and result.mask[170, 240]
    assert not result.tiny and result.scores[0] > 0.9


def test_second_click_costs_the_decoder_only(sam_t_hub, chelsea):
    engine = SegmentEngine(SegmentConfig(backend="torch"), sam_t_hub)
    counter = EncoderCounter(sam_t_hub.get("sam_t"))
    try:
        first = engine(np.ascontiguousarray(chelsea[:, ::-1]), [(200, 150)])
        second = engine(np.ascontiguousarray(chelsea[:, ::-1]), [(200, 150), (20, 20, 0)])
    finally:
        counter.close()
    assert counter.calls == 1 and second.embedding_cached and second.timings["encoder"] == 0.0
    assert first.timings["encoder"] > second.timings["decoder"]


def test_cli_end_to_end_with_real_weights(sam_t_weights, sam_t_hub, chelsea_file, chelsea, tmp_path):
    out = tmp_path / "out"
    done = run_cli("segment", "--image", str(chelsea_file), "--point", "240,170", "--output", str(out),
                   "--no-progress", env_extra={"VISION_WEIGHTS_SAM_T": str(sam_t_weights),
                                               "VISION_TINY": "0"})  # whatever earlier tests set
    assert done.returncode == 0, done.stderr
    row = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert row["status"] == "ok" and row["sam_model"] == "sam_t" and row["tiny"] is False
    assert row["scores"] == sorted(row["scores"], reverse=True) and len(row["scores"]) == 3
    mask = np.asarray(Image.open(out / "chelsea.mask.png"))
    assert set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask == 255, SegmentEngine(SegmentConfig(), sam_t_hub)(chelsea, [(240, 170)]).mask)
