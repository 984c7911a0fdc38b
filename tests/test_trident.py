"""Trident end to end with tiny models: shapes, label ranges, one SAM encoder pass, bad input, CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vision.classnames import CLASS_LISTS
from vision.engines.trident import MAX_CLASSES, PRESETS, TridentConfig, TridentEngine, parse_classes
from vision.engines.trident.config import presets_of
from vision.imaging import sample_image

FAST = PRESETS["open"].replace(refine=False)


@pytest.fixture(scope="module")
def engine(tiny_hub):
    return TridentEngine(hub=tiny_hub)


@pytest.fixture
def sam_encoder_calls(tiny_hub):
    calls = []
    handle = tiny_hub.get("sam_b").image_encoder.register_forward_hook(lambda *a: calls.append(1))
    yield calls
    handle.remove()


def test_presets_carry_the_papers_settings():
    assert set(presets_of("trident")) == {"voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff",
                                          "cityscapes", "ade20k", "open"}
    v = PRESETS["voc21"]
    assert (v.short_side, v.stride, v.prob_thd, v.coarse_thresh, v.cos_fac, v.refine_neg_cos) == \
        (448, 224, 0.2, 0.2, 1.2, True)
    c = PRESETS["cityscapes"]
    assert (c.short_side, c.coarse_thresh, c.cos_fac, c.refine_neg_cos, c.split_halves) == (688, 0.1, 3.0, False, True)
    assert (PRESETS["voc20"].short_side, PRESETS["voc20"].stride, PRESETS["voc20"].cos_fac) == (336, 112, 0.0)
    assert PRESETS["ade20k"].refine_neg_cos is False and PRESETS["coco_stuff"].coarse_thresh == 0.05
    assert all(PRESETS[p].logit_scale == 40 and PRESETS[p].window == 336 for p in presets_of("trident"))
    assert TridentConfig.from_preset("open", prob_thd=0.3).prob_thd == 0.3
    with pytest.raises(ValueError, match="unknown Trident preset"):
        TridentConfig.from_preset("nope")


def test_class_lists_have_the_benchmark_sizes():
    sizes = {k: len(v.names) for k, v in CLASS_LISTS.items()}
    assert sizes == {"voc21": 21, "context60": 60, "coco_object": 81, "voc20": 20, "context59": 59,
                     "coco_stuff": 171, "cityscapes": 19, "ade20k": 150}
    voc = parse_classes(CLASS_LISTS["voc21"])
    assert voc.background == 0 and len(voc.names[0]) == 26 and voc.display[0] == "background"
    assert len(voc.queries) == 26 + 20


def test_templates_are_openais_80():
    import open_clip.zero_shot_metadata as z

    from vision.templates import OPENAI_IMAGENET_TEMPLATES

    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert list(OPENAI_IMAGENET_TEMPLATES) == [t("{}") for t in z.OPENAI_IMAGENET_TEMPLATES]


@pytest.mark.parametrize("name", ["chelsea", "coffee", "astronaut"])
def test_end_to_end_on_photos(engine, sam_encoder_calls, name):
    image = sample_image(name)
    classes = ["cat", "cup|mug", "person", "background|sky|wall"]
    result = TridentEngine(PRESETS["voc21"], engine.hub)(image, classes)
    h, w = image.shape[:2]
    assert result.labels.shape == (h, w) and result.coarse.shape == (h, w)
    assert result.labels.min() >= 0 and result.labels.max() < len(classes)
    assert result.probs.shape == (len(classes), h, w)
    assert np.all(result.probs >= 0) and np.all(result.probs <= 1 + 1e-6)
    assert result.overlay.shape == (h, w, 3) and result.overlay.dtype == np.uint8
    assert len(sam_encoder_calls) == 1  # the SAM encoder runs once per image, refinement included
    assert result.info["sam_passes"] == 1
    assert set(result.timings) >= {"text", "dino", "clip", "sam_encoder", "aggregate", "refine", "total"}
    assert result.tiny


def test_window_count_and_background_threshold(engine):
    image = np.asarray(Image.fromarray(sample_image("chelsea")).resize((500, 375)))
    result = TridentEngine(PRESETS["voc21"].replace(prob_thd=1.0), engine.hub)(image, ["cat", "dog", "background"])
    # Reference mode (on in voc21): 597 -> 608 on the long side, the short side scaled alike -> 464.
    assert result.info["windows"] == 6 and result.info["resized"] == [464, 608]
    assert (result.coarse == 2).all()  # every max probability < 1.0: all background
    open_mode = TridentEngine(PRESETS["voc21"].replace(reference=False), engine.hub)(image, ["cat", "background"])
    assert open_mode.info["resized"] == [448, 608] and open_mode.to_record()["mode"] == "product"


def test_cityscapes_halves_get_their_own_sam_pass(engine, sam_encoder_calls):
    image = np.asarray(Image.fromarray(sample_image("astronaut")).resize((256, 128)))
    result = TridentEngine(PRESETS["cityscapes"].replace(reference=False), engine.hub)(image, None)
    assert len(sam_encoder_calls) == 2 and result.info["sam_passes"] == 2
    assert result.labels.shape == (128, 256) and result.labels.max() < 19


def test_text_embeddings_are_cached_per_model_and_class_list(engine, tiny_hub, monkeypatch):
    first = engine.text_embeddings(("cat", "dog"))
    calls = []
    clip = tiny_hub.get("clip_b16")
    original = clip.encode_text
    monkeypatch.setattr(clip, "encode_text", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert engine.text_embeddings(("cat", "dog")) is first
    assert calls == []
    other = engine.text_embeddings(("dog", "cat"))
    assert calls and torch.allclose(other[0], first[1])
    assert torch.allclose(first.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_result_files_and_record(engine):
    result = TridentEngine(FAST, engine.hub)(sample_image("chelsea"), ["cat", "background"])
    files = result.to_files()
    assert set(files) == {"labels.png", "coarse.png", "overlay.png"}
    assert files["labels.png"].mode == "P"
    assert np.array_equal(np.asarray(files["labels.png"]), result.labels)
    record = json.loads(json.dumps(result.to_record()))
    assert record["classes"] == ["cat", "background"] and record["tiny"] is True
    assert record["reference"] is False and record["mode"] == "product"  # the mode that ran
    assert "random-weight" in record["notice"]
    assert abs(sum(record["pixel_fraction"].values()) - 1.0) < 1e-3


# ------------------------------------------------------------------------------------------- bad input


def test_bad_class_lists_are_clear_errors(engine):
    image = sample_image("chelsea")
    cases = {
        "no class names": [],
        "at least two classes": ["cat"],
        "duplicate class name 'Cat'": ["cat", "dog|Cat"],
        "at most 255": [f"thing {i}" for i in range(500)],
        "class 1 has no name": ["cat", " | "],
        "class 1 .'dog; cat'. contains ';', which separates classes": ["cow", "dog; cat"],
        "at least two classes are needed to segment, got one: 'cat.kitten'": "cat|kitten",
        "no class is the background": None,
    }
    for message, classes in cases.items():
        with pytest.raises(ValueError, match=message):
            if classes is None:
                TridentEngine(FAST.replace(prob_thd=0.3), engine.hub)(image, ["cat", "dog"])
            else:
                TridentEngine(FAST, engine.hub)(image, classes)
    assert MAX_CLASSES == 255
    assert len(parse_classes([f"thing {i}" for i in range(255)]).names) == 255


def test_long_and_non_ascii_labels_work(engine):
    long_name = "a very long description of a fluffy striped cat " * 8
    result = TridentEngine(FAST, engine.hub)(sample_image("chelsea"), [long_name, "Katze|猫|čičák", "background"])
    assert result.info["truncated_names"] == [" ".join(long_name.split())]
    assert result.labels.max() < 3
    e = engine.text_embeddings(("猫", "čičák", "cat"))
    assert torch.isfinite(e).all() and not torch.allclose(e[0], e[1])


@pytest.mark.parametrize("size", [(8, 8), (8, 13), (40, 300), (120, 90)])  # below 8 px: refused (test_messages)
def test_tiny_images_are_upscaled(engine, size):
    h, w = size
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    result = TridentEngine(PRESETS["open"], engine.hub)(image, ["cat", "background"])
    assert result.labels.shape == (h, w) and result.info["resized"][0] >= 336 and result.info["resized"][1] >= 336


def test_not_an_image_is_a_clear_error(engine, tmp_path):
    from vision.imaging import ImageError

    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="not an image"):
        TridentEngine(FAST, engine.hub)(bad, ["cat", "background"])


def test_config_validation():
    with pytest.raises(ValueError, match="stride"):
        FAST.replace(stride=0).validate()
    with pytest.raises(ValueError, match="clip"):
        FAST.replace(clip="clip_l14").validate()
    with pytest.raises(ValueError, match="deviation"):
        FAST.replace(vfm="mae").validate()


def test_dinov2_option_runs(engine):
    result = TridentEngine(FAST.replace(vfm="dinov2_b14"), engine.hub)(sample_image("coffee"), ["cup", "background"])
    assert result.labels.shape == sample_image("coffee").shape[:2]


def test_h14_and_sam_h_options_run(engine, tiny_hub):
    # CLIP H/14's 24x24 window grid differs from DINO's 21x21: values and outputs are resized between them.
    cfg = FAST.replace(clip="clip_h14", sam="sam_h", refine=True)
    result = TridentEngine(cfg, engine.hub)(sample_image("chelsea"), ["cat", "background"])
    assert result.labels.shape == (300, 451) and result.info["resized"] == [448, 686]  # multiples of 14
    assert tiny_hub.dtype_for("sam_h") == torch.float32  # SAM-H never runs in fp16


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_writes_label_pngs_and_results(tiny_hub, tmp_path, capsys):
    from vision.cli import main

    photos = tmp_path / "in"
    photos.mkdir()
    for name in ("chelsea", "coffee"):
        Image.fromarray(sample_image(name)).save(photos / f"{name}.jpg")
    (photos / "broken.jpg").write_bytes(b"nope")
    out = tmp_path / "out"
    code = main(["--tiny", "trident", "--labels", "cat; cup|mug; background", "--input", str(photos),
                 "--output", str(out), "--no-refine"])
    assert code == 1  # one item failed
    labels = Image.open(out / "chelsea.labels.png")
    assert labels.mode == "P" and labels.size == (451, 300)
    assert np.asarray(labels).max() < 3
    assert (out / "coffee.overlay.png").is_file()
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ok = {line["id"]: line for line in lines if line["status"] == "ok"}
    assert set(ok) == {"chelsea.jpg", "coffee.jpg"}
    assert ok["chelsea.jpg"]["classes"] == ["cat", "cup", "background"] and ok["chelsea.jpg"]["tiny"]
    assert ok["chelsea.jpg"]["reference"] is False
    assert "broken.jpg" in (out / "errors.jsonl").read_text()


def test_cli_rejects_bad_labels(tiny_hub, tmp_path, capsys):
    from vision.cli import main

    image = tmp_path / "a.png"
    Image.fromarray(sample_image("chelsea")).save(image)
    out = str(tmp_path / "o")
    assert main(["--tiny", "trident", "--labels", "cat; cat", "--input", str(image), "--output", out]) == 2
    assert "duplicate" in capsys.readouterr().err
    assert main(["--tiny", "trident", "--input", str(image), "--output", out]) == 2
    assert "no classes" in capsys.readouterr().err


def test_cli_no_reference_switch():
    import argparse

    from vision.commands.trident import add_arguments, build_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert build_config(parser.parse_args(["--preset", "voc21"])).reference is True
    assert build_config(parser.parse_args(["--preset", "voc21", "--no-reference"])).reference is False
    assert build_config(parser.parse_args([])).reference is False  # the open preset


def test_one_class_syntax_for_text_lists_and_label_files(tmp_path):
    """';' separates classes and '|' synonyms in a text, in a list's entries and in a --labels-file
    (which once separated synonyms with ';')."""
    from vision.commands.trident import read_labels_file
    from vision.engines.trident.classes import parse_class_text

    text = "cat; dog|puppy ;; background|sky|wall"
    assert parse_class_text(text) == [["cat"], ["dog", "puppy"], ["background", "sky", "wall"]]
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("# classes\ncat\ndog|puppy\n\nbackground|sky|wall\n", encoding="utf-8")
    as_text, as_list, as_file = (parse_classes(text), parse_classes(["cat", "dog|puppy", "background|sky|wall"]),
                                 parse_classes(read_labels_file(str(labels_file))))
    assert as_text == as_list == as_file
    assert as_text.names[1] == ("dog", "puppy") and as_text.background == 2
