"""vision.sam: the encoded-image state (SamImage) against SamPredictor, the everything mode against
SamAutomaticMaskGenerator, the cache, and the ONNX Runtime / OpenVINO backends (export, reuse, rebuild,
fallback, equality with torch on tiny and real weights)."""

import json

import numpy as np
import pytest
import torch

from vision.imaging import sample_image
from vision.sam import EverythingSettings, SamRunner, everything
from vision.sam.backends import PACKAGES, make_backend, missing_package
from vision.sam.export import exported

COMPILED = [b for b in PACKAGES if not missing_package(b)]


@pytest.fixture(scope="module")
def chelsea():
    return sample_image("chelsea")  # 451 x 300


def _predictor(sam, image):
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    predictor.set_image(image)
    return predictor


@pytest.mark.parametrize("name", ["sam_t", "sam_b"])
def test_sam_image_predicts_what_sam_predictor_predicts(tiny_hub, one_torch_thread, chelsea, name):
    """segment_anything/predictor.py SamPredictor.set_image/predict: the same embedding and outputs for
    points, a box, a mask input and both multimask settings."""
    sam = tiny_hub.get(name)
    predictor = _predictor(sam, chelsea)
    encoded, cached = SamRunner(sam).encode(chelsea)
    assert not cached and encoded.original_size == predictor.original_size
    assert encoded.input_size == predictor.input_size
    torch.testing.assert_close(encoded.features, predictor.features, rtol=0, atol=0)
    prompts = [dict(point_coords=np.array([[200.0, 150.0]]), point_labels=np.array([1])),
               dict(point_coords=np.array([[200.0, 150.0], [20, 30]]), point_labels=np.array([1, 0]),
                    box=np.array([10, 10, 300, 250])),
               dict(box=np.array([50, 40, 400, 280]), mask_input=np.random.default_rng(0).normal(size=(1, 256, 256)))]
    for prompt in prompts:
        for multimask in (True, False):
            for ours, theirs in zip(encoded.predict(**prompt, multimask_output=multimask),
                                    predictor.predict(**prompt, multimask_output=multimask)):
                np.testing.assert_array_equal(ours, theirs)


def test_cache_by_content_and_uncached_passes(tiny_hub, one_torch_thread, chelsea):
    runner = SamRunner(tiny_hub.get("sam_t"), cache_size=1)
    first, hit1 = runner.encode(chelsea)
    again, hit2 = runner.encode(chelsea.copy())
    assert (hit1, hit2) == (False, True) and again is first and runner.cache.misses == 1
    called = []
    fresh, hit3 = runner.encode(chelsea, cache=False, on_encode=lambda: called.append(1))
    assert not hit3 and fresh is not first and called == [1] and fresh.key == ""
    runner.encode(np.flipud(chelsea).copy())  # evicts chelsea (size 1)
    assert runner.encode(chelsea)[1] is False
    with pytest.raises(ValueError, match=r"image: SAM takes RGB uint8 \[H, W, 3\]"):
        runner.encode(chelsea.astype(np.float32))


def _same_records(ours, theirs):
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert set(a) == set(b)
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
        for key in ("area", "bbox", "point_coords", "crop_box"):
            assert a[key] == b[key], key
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=0)
        assert a["stability_score"] == pytest.approx(b["stability_score"], abs=0)


def test_everything_matches_the_automatic_mask_generator_tiny(tiny_hub, one_torch_thread, chelsea):
    """segment_anything/automatic_mask_generator.py SamAutomaticMaskGenerator.generate, one crop layer."""
    from segment_anything import SamAutomaticMaskGenerator

    sam = tiny_hub.get("sam_t")
    settings = dict(points_per_side=5, points_per_batch=7, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    theirs = SamAutomaticMaskGenerator(sam, **settings).generate(chelsea)
    ours = everything(SamRunner(sam).encode(chelsea)[0], EverythingSettings(**settings))
    _same_records(ours, theirs)


def test_everything_matches_the_automatic_mask_generator_real(sam_t_hub, chelsea):
    """The same with the real sam_t, SAM's thresholds and its small-region clean-up (many masks)."""
    from segment_anything import SamAutomaticMaskGenerator

    sam = sam_t_hub.get("sam_t")
    settings = dict(points_per_side=6, min_mask_region_area=200)
    theirs = SamAutomaticMaskGenerator(sam, **settings).generate(chelsea)
    ours = everything(SamRunner(sam).encode(chelsea)[0], EverythingSettings(**settings))
    _same_records(ours, theirs)


# ------------------------------------------------------------------------------------------ backends
@pytest.mark.parametrize("backend", COMPILED)
def test_compiled_backend_equals_torch_tiny(tiny_hub, one_torch_thread, chelsea, tmp_path, backend):
    sam = tiny_hub.get("sam_t")
    notes = []
    compiled = make_backend(sam, backend, tmp_path, notes)
    assert compiled.name == backend and any("exported encoder-" in n for n in notes), notes
    torch_image = SamRunner(sam).encode(chelsea)[0]
    runner = SamRunner(sam, backend, export_dir=tmp_path)
    assert runner.backend_name == backend
    image = runner.encode(chelsea)[0]
    assert (image.embedding - torch_image.embedding).abs().max() <= 1e-4
    coords = image.points_to_frame([[[200.0, 150.0], [20.0, 30.0]], [[100.0, 100.0], [5.0, 5.0]]])
    labels = torch.tensor([[1, 0], [1, 1]], dtype=torch.int)
    boxes = image.boxes_to_frame([[10, 10, 300, 250], [50, 40, 400, 280]])
    masks = torch.randn(2, 1, 256, 256)
    for prompt in [(coords, labels, None, None), (coords, labels, boxes, masks), (None, None, boxes, None)]:
        for multimask in (True, False):
            low, iou = image.decode(*prompt, multimask_output=multimask)
            low_t, iou_t = torch_image.decode(*prompt, multimask_output=multimask)
            assert low.shape == low_t.shape and (low - low_t).abs().max() < 1e-3
            assert (iou - iou_t).abs().max() < 1e-4


@pytest.mark.skipif(not COMPILED, reason="neither onnxruntime nor openvino is installed")
def test_export_is_reused_rebuilt_when_corrupt_and_failures_fall_back(tiny_hub, one_torch_thread, tmp_path,
                                                                       monkeypatch):
    from vision.sam import export

    sam = tiny_hub.get("sam_t")
    first = exported(sam, "decoder", tmp_path)
    assert "exported" in first.note and first.path.name == f"decoder-{first.checksum}-{export.graph_digest()}.onnx"
    manifest = json.loads(first.path.with_suffix(".json").read_text())
    assert manifest["weights_checksum"] == first.checksum and manifest["opset"] == export.OPSET
    assert manifest["graph"] == export.graph_digest()
    assert "reused" in exported(sam, "decoder", tmp_path).note
    first.path.write_bytes(first.path.read_bytes()[:1000])  # truncated
    rebuilt = exported(sam, "decoder", tmp_path)
    assert "exported" in rebuilt.note and "sha256 differs" in rebuilt.note
    first.path.unlink()
    assert "exported" in exported(sam, "decoder", tmp_path).note
    older = [tmp_path / f"decoder-{first.checksum}.onnx", tmp_path / f"decoder-{first.checksum}-0000beef.onnx"]
    for path in older:  # exports of the same weights by other code: replaced when this code exports
        path.write_bytes(b"old graph")
        path.with_suffix(".json").write_text("{}")
    first.path.unlink()
    note = exported(sam, "decoder", tmp_path).note
    assert note.endswith(f"; removed {', '.join(sorted(p.name for p in older))} (made by other code)"), note
    assert not any(p.exists() or p.with_suffix(".json").exists() for p in older) and first.path.exists()

    def broken(*_args, **_kwargs):
        raise RuntimeError("no exporter here")

    monkeypatch.setattr(export, "export_part", broken)
    notes = []
    fallback = make_backend(sam, COMPILED[0], tmp_path / "other", notes)
    assert fallback.name == "torch"
    assert any(f"{COMPILED[0]} unavailable, torch used: ONNX export of the SAM encoder failed (RuntimeError: no "
               "exporter here)" in n for n in notes), notes


def test_a_backend_not_installed_names_the_package(monkeypatch):
    from vision.engines.segment import SegmentConfig, SegmentError
    from vision.sam import backends

    monkeypatch.setattr(backends, "installed", lambda backend: backend == "torch")
    with pytest.raises(SegmentError, match=r"backend 'openvino' needs the package openvino \(pip install openvino\)"):
        SegmentConfig(backend="openvino").validate()
    with pytest.raises(SegmentError, match="backend='tensorrt' must be one of auto, torch, onnx, openvino"):
        SegmentConfig(backend="tensorrt").validate()
    assert backends.resolve_backend("auto", "cpu") == "torch"  # nothing compiled installed
    assert backends.resolve_backend("auto", "cuda") == "torch"


@pytest.mark.parametrize("backend", COMPILED)
def test_real_weights_embedding_and_masks_equal_torch(sam_t_hub, backend):
    """Issue 24's equality: embedding max abs diff <= 1e-4 and mask IoU >= 0.99 on the test photos."""
    from vision.engines.segment import SegmentConfig, SegmentEngine

    torch_engine = SegmentEngine(SegmentConfig(backend="torch"), sam_t_hub)
    engine = SegmentEngine(SegmentConfig(backend=backend), sam_t_hub)
    assert engine.runner.backend_name == backend, engine.runner.notes
    for name, click in (("coins", (200, 160)), ("chelsea", (240, 170)), ("coffee", (300, 235))):
        photo = sample_image(name)
        ours, theirs = engine(photo, [click]), torch_engine(photo, [click])
        embedding = engine.runner.encode(photo)[0].embedding
        assert (embedding - torch_engine.runner.encode(photo)[0].embedding).abs().max() <= 1e-4
        for a, b in zip(ours.masks, theirs.masks):
            assert (a & b).sum() / max((a | b).sum(), 1) >= 0.99, name
        assert ours.backend == backend and ours.to_record()["backend"] == backend


def test_the_page_says_which_backend_runs_and_uses_cpu_defaults(tiny_hub):
    from vision.hub import ModelHub
    from vision.sam.backends import resolve_backend
    from vision.ui.layout import CPU_NOTE, cpu_preset
    from vision.ui.models_tab import models_status

    summary = models_status(tiny_hub)[0]
    assert f"**SAM backend:** `{resolve_backend('auto', 'cpu')}` on `cpu`" in summary
    assert cpu_preset(ModelHub(device="cpu")) and not cpu_preset(ModelHub(device="cuda"))
    assert not cpu_preset(tiny_hub)  # tiny mode is for testing the app: no preset
    assert "Need a GPU to be pleasant" in CPU_NOTE and "Trident" in CPU_NOTE


def test_weights_export_command_writes_every_part(sam_t_weights, sam_exports_dir, capsys):
    from vision.cli import main

    assert main(["weights", "export", "sam_t"]) == 0
    out = capsys.readouterr().out
    assert all(f"sam_t: {part}: " in out for part in ("encoder", "decoder", "decoder_image", "decoder_prompts"))
    # the folder is the session's: tiny sam_t's exports (other weights, another checksum) may be there too
    written = sorted(p.name for p in (sam_exports_dir / "sam_t").glob("*-*.onnx") if p.name in out)
    assert [name.split("-")[0] for name in written] == ["decoder", "decoder_image", "decoder_prompts", "encoder"], out
    assert len({name.split("-", 1)[1] for name in written}) == 1  # all parts of the same weights and code
