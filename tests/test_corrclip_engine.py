"""CorrCLIP through the class-name engine (``TridentEngine`` with ``method="corrclip"``), tiny models:
the eight benchmark presets, the region-mask cache, the record and files, progress, and bad inputs."""

import numpy as np
import pytest
import torch

from vision.classnames import CLASS_LISTS
from vision.engines.trident import PRESETS, TridentConfig, TridentEngine, parse_classes
from vision.engines.trident.config import TridentError, preset_for, presets_of
from vision.engines.trident.regions import REGION_CACHE
from vision.imaging import sample_image
from vision.tiny import TINY_NOTICE

BENCHMARKS = [name for name in presets_of("corrclip") if name != "corrclip"]
FAST = {"points_per_side": 2}  # tiny SAM's automatic generator at 4 points (the presets' 32 take minutes)


@pytest.fixture(scope="module")
def cat():
    return sample_image("chelsea")[::2, ::2].copy()  # 150 x 226


@pytest.fixture(scope="module")
def engine(tiny_hub):
    return TridentEngine(TridentConfig.from_preset("corrclip", **FAST), tiny_hub)


def test_corrclip_presets_are_the_references_configs():
    assert BENCHMARKS == [f"corrclip_{name}" for name in presets_of("trident") if name != "open"]
    for name in BENCHMARKS:
        p = PRESETS[name]
        assert p.method == "corrclip" and p.reference and p.stride == 112 and p.logit_scale == 40
        assert (p.clip, p.vfm, p.mask_generator, p.points_per_side) == ("metaclip_b16", "dino_b8", "sam_h", 32)
    sizes = {name: (PRESETS[name].short_side, PRESETS[name].window) for name in BENCHMARKS}
    assert sizes["corrclip_cityscapes"] == (448, 224) and sizes["corrclip_ade20k"] == (448, 336)
    assert all(sizes[n] == (336, 336) for n in BENCHMARKS if n not in ("corrclip_cityscapes", "corrclip_ade20k"))
    thresholds = {n: PRESETS[n].prob_thd for n in BENCHMARKS if PRESETS[n].prob_thd}
    assert thresholds == {"corrclip_voc21": 0.2, "corrclip_context60": 0.15, "corrclip_coco_object": 0.25}
    assert PRESETS["corrclip"].reference is False and PRESETS["corrclip"].mask_generator == "sam_b"
    assert (preset_for("corrclip", "voc21"), preset_for("corrclip", "open"), preset_for("trident", "voc21")) == \
        ("corrclip_voc21", "corrclip", "voc21")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_preset_writes_a_label_map_of_the_images_size(tiny_hub, cat, name):
    """Each preset with its own class list (CorrCLIP's strings) on the cat photo (SAM at 4 points). The
    text encoder runs for VOC21's list; the other lists get seeded random unit embeddings (noise either
    way in tiny mode; ADE20K's and COCO-Stuff's 12-14k templated prompts would take a minute each)."""
    engine = TridentEngine(TridentConfig.from_preset(name, **FAST), tiny_hub)
    if name != "corrclip_voc21":
        queries = parse_classes(engine.config.class_list()).unique_queries
        width = tiny_hub.get(engine.config.clip).text_projection.shape[1]
        random = torch.randn(len(queries), width, generator=torch.Generator().manual_seed(0))
        engine.set_text_embeddings(queries, random)
    result = engine(cat)
    benchmark = name.removeprefix("corrclip_")
    assert result.labels.shape == cat.shape[:2] and result.regions.shape == cat.shape[:2]
    assert result.labels.max() < len(CLASS_LISTS[benchmark].names)
    assert result.classes.display == CLASS_LISTS[benchmark].display
    assert "people" in [n for names in result.classes.names for n in names]  # CorrCLIP's spelling
    record = result.to_record()
    assert (record["method"], record["preset"], record["mode"]) == ("corrclip", name, "reference")
    assert record["windows"] >= 1 and "labels.png" in result.to_files()


def test_a_second_class_list_on_the_same_image_makes_no_new_masks(tiny_hub, engine, cat):
    REGION_CACHE.clear()
    first = engine(cat, "cat; grass; background")
    other_settings = TridentEngine(TridentConfig.from_preset("corrclip", prob_thd=0.3, **FAST), tiny_hub)
    second = other_settings(cat, "kitten; lawn; sky; background")
    assert not first.info["regions_cached"] and second.info["regions_cached"]
    assert np.array_equal(first.regions, second.regions)
    assert second.timings["masks"] < 0.05 < first.timings["masks"]


def test_given_region_masks_are_used_as_they_are(engine, cat):
    ids = np.zeros(cat.shape[:2], np.int32)
    ids[:, 100:] = 5
    result = engine(cat, "cat; grass; background", regions=ids)
    assert result.info["mask_generator"] == "given" and result.info["regions"] == 1
    assert len(np.unique(result.labels[:, 100:])) == 1  # map correction: one label per region
    with pytest.raises(ValueError, match=r"regions has shape"):
        engine(cat, "cat; background", regions=ids[:, :50])


def test_record_files_and_progress(engine, cat):
    events = []
    result = engine(cat, "cat|kitten; grass; background", progress=events.append)
    record = result.to_record()
    assert record["engine"] == "trident" and record["method"] == "corrclip" and record["mode"] == "product"
    assert record["models"] == {"clip": "metaclip_b16", "vfm": "dino_b8", "mask_generator": "sam_b"}
    assert record["tiny"] and record["notice"] == TINY_NOTICE and record["regions"] == result.info["regions"]
    assert {"text", "masks", "windows", "labels", "total"} <= set(record["timings"])
    files = result.to_files()
    assert {"labels.png", "coarse.png", "overlay.png", "regions.png", "regions_overlay.png"} <= set(files)
    assert files["regions.png"].mode == "I;16" and files["regions_overlay.png"].shape == (*cat.shape[:2], 3)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    windows = [e.position for e in events if "window" in e.position]
    assert windows and windows[-1]["window"] == windows[-1]["windows"] == result.info["windows"]


def test_an_image_smaller_than_one_window(engine):
    tiny_image = sample_image("coffee")[:20, :30].copy()
    result = engine(tiny_image, "cup; table; background")
    assert result.labels.shape == (20, 30) and result.info["resized"] == [336, 504]


@pytest.mark.parametrize("classes, message", [
    ("", "no class names given"),
    ("cat", "at least two classes"),
    ([f"class {i}" for i in range(500)], "500 classes given; at most 255"),
    ("cat; dog; Cat", "duplicate class name 'Cat'"),
])
def test_bad_class_lists_say_why(engine, cat, classes, message):
    with pytest.raises(ValueError, match=message):
        engine(cat, classes)


def test_open_preset_needs_class_names_and_regions_need_corrclip(tiny_hub, cat):
    with pytest.raises(TridentError, match="the 'corrclip' preset has no default class list"):
        TridentEngine(TridentConfig.from_preset("corrclip"), tiny_hub)(cat)
    with pytest.raises(TridentError, match="regions= .* applies to method='corrclip'"):
        TridentEngine(TridentConfig.from_preset("open"), tiny_hub)(cat, "cat; dog", regions=np.zeros((2, 2), int))


def test_bad_corrclip_settings_name_the_field():
    with pytest.raises(TridentError) as err:
        TridentConfig.from_preset("corrclip", vfm="dinov2_b14", mask_generator="sam_x", points_per_side=0,
                                  sam_backend="tpu").validate()
    message = str(err.value)
    assert "sam_backend='tpu' must be one of auto, torch, onnx, openvino" in message
    assert "vfm must be one of dino_b8, dino_b16" in message and "mask_generator must be one of" in message
    assert "points_per_side must be in 1..128" in message
    with pytest.raises(TridentError, match="method='segformer' must be one of trident, corrclip"):
        TridentConfig(method="segformer").validate()


def test_missing_weights_are_named_at_once_and_given_regions_need_no_generator(tmp_path, monkeypatch, cat):
    from vision import weights
    from vision.hub import ModelHub

    monkeypatch.setenv("VISION_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    engine = TridentEngine(TridentConfig.from_preset("corrclip"), ModelHub(tiny=False, device="cpu"))
    with pytest.raises(weights.WeightsMissingError) as err:
        engine(cat, "cat; background")
    message = str(err.value)
    assert "metaclip_b16" in message and "dino_b8" in message and "sam_b" in message
    with pytest.raises(weights.WeightsMissingError) as err:
        engine(cat, "cat; background", regions=np.zeros(cat.shape[:2], np.int32))
    assert "dino_b8" in str(err.value) and "sam_b" not in str(err.value)
    assert weights.models_for("trident", PRESETS["corrclip_voc21"]) == ["metaclip_b16", "dino_b8", "sam_h"]
