"""IPSeg engine: SD hooks, end to end in tiny mode on real photos, instances, bad inputs, CLI.

Tiny mode runs SD at 256 px (latent 32) instead of 960 to keep the suite fast; the 960 -> latent 120
hook shapes are checked directly on the tiny UNet.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vision.engines.ipseg import (
    SD_HOOKS,
    IPSegConfig,
    IPSegEngine,
    IPSegError,
    IPSegWarning,
    Prompt,
    find_instances,
    points,
    run_hooked_unet,
)
from vision.engines.ipseg.cascade import SamView
from vision.hub import ModelHub
from vision.imaging import sample_image

TINY = IPSegConfig(sd_size=256)


@pytest.fixture(scope="module")
def photos():
    return {n: sample_image(n) for n in ("chelsea", "coffee", "astronaut", "rocket")}


class EncoderCounter:
    """Counts forward calls of a module (SAM's image encoder) with a forward hook."""

    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def close(self):
        self.handle.remove()


def _hooked_modules(unet):
    modules = dict(unet.named_modules())
    return [modules[path] for path, _ in SD_HOOKS]


# ------------------------------------------------------------------------------------------------ SD hooks
def expected_sd_shapes(block_out_channels, latent):
    """Shapes of s5, s4, s3 for a UNet with SD1.5's layout: decoder widths are block_out_channels
    reversed; up_blocks[0] runs at latent/8, up_blocks[1] at latent/4, up_blocks[2] at latent/2."""
    up = list(reversed(block_out_channels))
    return {"s5": (1, up[0], latent // 8, latent // 8), "s4": (1, up[1], latent // 4, latent // 4),
            "s3": (1, up[2], latent // 2, latent // 2)}


def test_sd_hooks_give_the_spec_shapes_on_sd15_layout(tiny_hub):
    # With SD1.5's widths and a 960 px letterbox (latent 120) these are the spec's shapes.
    assert expected_sd_shapes((320, 640, 1280, 1280), 120) == {
        "s5": (1, 1280, 15, 15), "s4": (1, 1280, 30, 30), "s3": (1, 640, 60, 60)}
    unet = tiny_hub.get("sd15_unet")
    assert unet.config.down_block_types == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert unet.config.up_block_types == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    sample = torch.randn(1, 4, 120, 120)
    embedding = torch.randn(1, 77, unet.config.cross_attention_dim)
    out = run_hooked_unet(unet, sample, torch.tensor([100]), embedding)
    assert {k: tuple(v.shape) for k, v in out.items()} == expected_sd_shapes(unet.config.block_out_channels, 120)
    assert all(not m._forward_hooks for m in _hooked_modules(unet))  # the shared UNet is left clean


def test_early_stopped_pass_equals_full_pass_features(tiny_hub):
    unet = tiny_hub.get("sd15_unet")
    torch.manual_seed(0)
    sample, embedding = torch.randn(1, 4, 32, 32), torch.randn(1, 77, unet.config.cross_attention_dim)
    full = {}
    handles = [m.register_forward_hook(
                   lambda _m, _i, o, name=name: full.__setitem__(name, o[0] if isinstance(o, tuple) else o))
               for m, (_, name) in zip(_hooked_modules(unet), SD_HOOKS)]
    with torch.no_grad():
        unet(sample, torch.tensor([100]), encoder_hidden_states=embedding)
    for h in handles:
        h.remove()
    with torch.no_grad():
        early = run_hooked_unet(unet, sample, torch.tensor([100]), embedding)
    for name in ("s5", "s4", "s3"):
        torch.testing.assert_close(early[name], full[name])


def test_hooks_are_removed_when_the_pass_fails(tiny_hub):
    unet = tiny_hub.get("sd15_unet")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        run_hooked_unet(unet, torch.randn(1, 4, 32, 32), torch.tensor([100]), torch.randn(1, 77, 5))  # bad width
    assert all(not m._forward_hooks for m in _hooked_modules(unet))


def test_engine_sd_features_on_the_grid(tiny_hub, photos):
    engine = IPSegEngine(TINY, hub=tiny_hub)
    feats = engine.extractor.sd(photos["coffee"], 60)
    up = list(reversed(tiny_hub.get("sd15_unet").config.block_out_channels))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"s5": (up[0], 60, 60), "s4": (up[1], 60, 60),
                                                              "s3": (up[2], 60, 60)}
    assert all(torch.isfinite(v).all() for v in feats.values())
    assert engine.empty_embedding().shape == (1, 77, tiny_hub.get("sd15_unet").config.cross_attention_dim)


# -------------------------------------------------------------------------------------------- end to end
def test_end_to_end_tiny_batch(tiny_hub, photos):
    engine = IPSegEngine(TINY.replace(sam_backend="torch"), hub=tiny_hub)  # torch: the hook counts its encoder
    counter = EncoderCounter(tiny_hub.get("sam_b").image_encoder)
    try:
        results = engine.segment_batch(photos["chelsea"], [photos["coffee"], photos["astronaut"], photos["rocket"]])
    finally:
        counter.close()
    assert counter.calls == 3  # SAM's image encoder: exactly once per target
    assert engine.prompt_cache.misses == 1 and engine.prompt_cache.hits == 2  # one prompt pass for the batch
    assert [r.prompt_cached for r in results] == [False, True, True]
    for result, name in zip(results, ("coffee", "astronaut", "rocket")):
        target = photos[name]
        assert result.mask.shape == target.shape[:2] and result.mask.dtype == bool
        assert len(result.masks) == 1 and result.masks[0].shape == target.shape[:2] and result.masks[0].dtype == bool
        assert np.isfinite(result.presence) and result.concepts[0].present
        assert result.similarity.shape == (60, 60) and np.isfinite(result.similarity).all()
        inst = result.concepts[0].instances[0]
        assert 1 <= len(inst.positive) <= 4 and 1 <= len(inst.negative) <= 4
        h, w = target.shape[:2]
        for pts in (inst.positive, inst.negative):
            assert ((pts >= 0) & (pts <= [w, h])).all()
        assert result.concepts[0].prompt_regions == [{"source": "auto-pca", "grid": "auto-eroded"}]
        for stage in ("prompt", "dino", "sd", "sam_encode", "similarity", "points", "sam_decode", "total"):
            assert result.timings[stage] >= 0
        record = json.loads(json.dumps(result.to_record()))
        assert record["feature_source"] == "dinov2+sd15" and record["mode"] == "product"
        assert record["tiny"] and record["width"] == w
        files = result.to_files()
        assert set(files) == {"mask.png", "overlay.png"} and files["overlay.png"].shape == target.shape


def test_deterministic_for_a_fixed_seed(tiny_hub, photos):
    a = IPSegEngine(TINY, hub=tiny_hub)(photos["chelsea"], photos["coffee"])
    b = IPSegEngine(TINY, hub=tiny_hub)(photos["chelsea"], photos["coffee"])
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.similarity, b.similarity)
    assert a.to_record()["concepts"] == b.to_record()["concepts"]


def test_cached_prompt_gives_the_fresh_result(tiny_hub, photos, tmp_path):
    engine = IPSegEngine(TINY, hub=tiny_hub)
    engine(photos["chelsea"], photos["coffee"])
    path = tmp_path / "prompt.png"
    Image.fromarray(photos["chelsea"]).save(path)
    cached = engine(str(path), photos["astronaut"])  # same pixels, given as a file: a cache hit
    fresh = IPSegEngine(TINY, hub=tiny_hub)(photos["chelsea"], photos["astronaut"])
    assert cached.prompt_cached and not fresh.prompt_cached
    np.testing.assert_array_equal(cached.mask, fresh.mask)
    np.testing.assert_array_equal(cached.similarity, fresh.similarity)
    assert cached.to_record()["concepts"] == fresh.to_record()["concepts"]
    prepared = engine.prepare(str(path))  # what a batch worker does: decode once, then only hash pixels
    assert isinstance(prepared[0].prompts[0].image, np.ndarray) and engine.prompt_cache.misses == 1
    np.testing.assert_array_equal(engine(prepared, photos["astronaut"]).mask, fresh.mask)
    # Another region or other feature settings are other cache entries.
    boxed = engine(Prompt(photos["chelsea"], box=(100, 50, 300, 250)), photos["astronaut"])
    assert not boxed.prompt_cached and boxed.concepts[0].prompt_regions[0]["source"] == "box"


def test_fast_mode_never_loads_sd(photos):
    hub = ModelHub(tiny=True, device="cpu")
    result = IPSegEngine(IPSegConfig.from_preset("fast"), hub=hub)(photos["chelsea"], photos["coffee"])
    assert result.mask.shape == photos["coffee"].shape[:2] and "sd" not in result.timings
    assert not any(hub.is_loaded(n) for n in ("sd15_unet", "sd15_vae", "sd15_text_encoder", "sd15_tokenizer"))
    assert result.to_record()["feature_source"] == "dinov2-only"


def test_several_concepts_kshot_and_instances_share_one_encoding(tiny_hub, photos):
    engine = IPSegEngine(IPSegConfig(sd_size=256, max_instances=3, sam_backend="torch"), hub=tiny_hub)
    mask = np.zeros(photos["chelsea"].shape[:2], bool)
    mask[60:240, 120:330] = True
    scribble = np.zeros(photos["rocket"].shape[:2], bool)
    scribble[200:204, 200:320] = True
    concepts = {"cat": [Prompt(photos["chelsea"], mask=mask), Prompt(photos["chelsea"][:, ::-1].copy())],
                "cup": Prompt(photos["coffee"], box=(180, 20, 420, 200)),
                "rocket": Prompt(photos["rocket"], scribble=scribble)}
    counter = EncoderCounter(tiny_hub.get("sam_b").image_encoder)
    try:
        result = engine(concepts, photos["astronaut"])
    finally:
        counter.close()
    assert counter.calls == 1
    assert [c.name for c in result.concepts] == ["cat", "cup", "rocket"]
    assert [r["source"] for r in result.concepts[0].prompt_regions] == ["mask", "auto-pca"]
    assert result.concepts[1].prompt_regions[0]["source"] == "box"
    assert result.concepts[2].prompt_regions[0] == {"source": "scribble", "grid": "touched"}
    for concept in result.concepts:
        assert 1 <= len(concept.instances) <= 3
    files = result.to_files()
    assert {"mask.png", "overlay.png"} <= set(files)
    assert len(result.masks) == 1 or sum(k.endswith(".inst.png") for k in files) == len(result.masks)
    assert json.dumps(result.to_record())


def test_kshot_mean_and_max(tiny_hub, photos):
    mean_engine = IPSegEngine(TINY, hub=tiny_hub)
    max_engine = IPSegEngine(IPSegConfig(sd_size=256, kshot="max"), hub=tiny_hub)
    a, _ = mean_engine.prompt_features(Prompt(photos["chelsea"]))
    b, _ = mean_engine.prompt_features(Prompt(photos["rocket"]))
    target = mean_engine.features(photos["coffee"])
    sim_a, sim_b = mean_engine.similarity([a], target), mean_engine.similarity([b], target)
    np.testing.assert_allclose(max_engine.similarity([a, b], target), np.maximum(sim_a, sim_b), atol=1e-5)
    np.testing.assert_allclose(mean_engine.similarity([a, a], target), sim_a, atol=1e-5)  # identical shots
    mean_ab = mean_engine.similarity([a, b], target)
    assert not np.allclose(mean_ab, sim_a) and not np.allclose(mean_ab, sim_b)


class BlobPredictor:
    """A stand-in SAM predictor for a known scene: returns the blob that holds the first positive point."""

    def __init__(self, blobs):
        self.blobs = blobs  # list of bool [H, W]
        self.calls = 0

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True, **_):
        self.calls += 1
        x, y = point_coords[np.asarray(point_labels) == 1][0]
        mask = np.zeros_like(self.blobs[0])
        for blob in self.blobs:
            if blob[int(y), int(x)]:
                mask = blob
        n = 3 if multimask_output else 1
        return np.repeat(mask[None], n, 0), np.linspace(0.9, 0.7, n), np.zeros((n, 256, 256), np.float32)


def _view(predictor, hw=(300, 300)):
    return SamView(predictor, hw, hw)


def _two_blob_scene():
    sim = np.full((60, 60), 0.1, np.float32)
    sim[5:20, 5:20] = 0.9
    sim[35:55, 30:50] = 0.8
    blobs = [np.zeros((300, 300), bool), np.zeros((300, 300), bool)]
    blobs[0][25:100, 25:100] = True  # cells 5..20 at 5 px per cell
    blobs[1][175:275, 150:250] = True
    return sim, blobs


def test_several_instances_then_stop():
    sim, blobs = _two_blob_scene()
    presence, present, instances = find_instances(sim, _view(BlobPredictor(blobs)), IPSegConfig(max_instances=5))
    assert present and presence == pytest.approx(0.9)
    assert len(instances) == 2  # the background (0.1) is below 0.8 x the first score
    np.testing.assert_array_equal(instances[0].mask, blobs[0])
    np.testing.assert_array_equal(instances[1].mask, blobs[1])
    assert instances[0].score == pytest.approx(0.9) and instances[1].score == pytest.approx(0.8)
    _, _, one = find_instances(sim, _view(BlobPredictor(blobs)), IPSegConfig())
    assert len(one) == 1  # the paper's default: one mask
    _, _, strict = find_instances(sim, _view(BlobPredictor(blobs)),
                                  IPSegConfig(max_instances=5, presence_threshold=0.85))
    assert len(strict) == 1  # the second blob's 0.8 is below the threshold


def test_a_calibrated_presence_is_what_the_threshold_bounds():
    """With a calibrated presence the threshold applies to it, for instance 1 and each further one: the
    second blob's S (0.8) passes 0.5, its calibrated margin does not."""
    from scipy.special import expit

    from vision.engines.ipseg.presence import Calibration, Presence

    sim, blobs = _two_blob_scene()
    margin = np.full_like(sim, -0.5)
    margin[5:20, 5:20], margin[35:55, 30:50] = 0.4, 0.1
    config = IPSegConfig(max_instances=5, presence_threshold=0.5)
    for centre, count in ((0.2, 1), (0.0, 2)):
        presence = Presence(sim, config.top_k, margin, Calibration(centre, 0.05))
        score, present, instances = find_instances(sim, _view(BlobPredictor(blobs)), config, presence=presence)
        assert present and score == pytest.approx(expit((0.4 - centre) / 0.05)) and len(instances) == count
        assert [i.score for i in instances] == pytest.approx([expit((m - centre) / 0.05) for m in (0.4, 0.1)][:count])
    absent = Presence(sim, config.top_k, margin, Calibration(0.5, 0.05))
    assert find_instances(sim, _view(BlobPredictor(blobs)), config, presence=absent)[1:] == (False, [])


def test_absent_below_the_presence_threshold(tiny_hub, photos):
    sim, blobs = _two_blob_scene()
    predictor = BlobPredictor(blobs)
    presence, present, instances = find_instances(sim, _view(predictor), IPSegConfig(presence_threshold=0.95))
    assert not present and instances == [] and predictor.calls == 0
    result = IPSegEngine(IPSegConfig.from_preset("fast", presence_threshold=2.0), hub=tiny_hub)(photos["chelsea"],
                                                                                  photos["coffee"])
    assert not result.concepts[0].present and result.masks == [] and not result.mask.any()
    assert result.mask.shape == photos["coffee"].shape[:2]
    assert result.to_record()["present"] is False and not result.to_files()["mask.png"].any()


# -------------------------------------------------------------------------------------------- bad inputs
def test_prompt_mask_of_another_size_is_resized_with_a_warning(tiny_hub, photos):
    engine = IPSegEngine(IPSegConfig.from_preset("fast"), hub=tiny_hub)
    half = np.zeros((150, 225), bool)  # chelsea is 300x451: the same shape at half size
    half[30:120, 60:165] = True
    with pytest.warns(IPSegWarning, match="resized"):
        result = engine(Prompt(photos["chelsea"], mask=half), photos["coffee"])
    assert any("resized" in note for note in result.notes) and "resized" in json.dumps(result.to_record())
    with pytest.raises(IPSegError, match="differ too much"):
        engine(Prompt(photos["chelsea"], mask=np.ones((300, 100), bool)), photos["coffee"])


@pytest.mark.parametrize("prompt,match", [
    (lambda im: Prompt(im, mask=np.zeros(im.shape[:2], bool)), "empty"),
    (lambda im: Prompt(np.full((200, 300, 3), 128, np.uint8)), "no salient region"),
    (lambda im: Prompt(im, box=(5000, 5000, 6000, 6000)), "covers no pixel"),
    (lambda im: Prompt(im, box=(1, 2, 3)), r"\(x0, y0, x1, y1\)"),
    (lambda im: Prompt(im, mask=np.ones(im.shape[:2], bool), box=(0, 0, 10, 10)), "at most one"),
    (lambda im: Prompt(np.zeros((10, 300, 3), np.uint8)), "smaller than one"),
    (lambda im: Prompt(b"not an image"), "prompt image"),
])
def test_bad_prompts_raise_clear_errors(tiny_hub, photos, prompt, match):
    with pytest.raises(IPSegError, match=match):
        IPSegEngine(IPSegConfig.from_preset("fast"), hub=tiny_hub)(prompt(photos["chelsea"]), photos["coffee"])


def test_target_smaller_than_one_patch(tiny_hub, photos):
    engine = IPSegEngine(IPSegConfig.from_preset("fast"), hub=tiny_hub)
    with pytest.raises(IPSegError, match="smaller than one 14-pixel"):
        engine(photos["chelsea"], np.zeros((10, 10, 3), np.uint8))
    ok = engine(photos["chelsea"], photos["coffee"][:20, :30])  # just above one patch: works
    assert ok.mask.shape == (20, 30)


def test_bad_settings():
    with pytest.raises(IPSegError, match="dino_size"):
        IPSegConfig(dino_size=500).validate()
    with pytest.raises(IPSegError, match="kshot"):
        IPSegEngine(IPSegConfig(kshot="median"), hub=ModelHub(tiny=True, device="cpu"))


def test_grid_to_pixels_of_the_engine_points(tiny_hub, photos):
    """The engine's points are the cell centres of its positive/negative cells (documented mapping)."""
    result = IPSegEngine(IPSegConfig.from_preset("fast"), hub=tiny_hub)(photos["chelsea"], photos["coffee"])
    inst = result.concepts[0].instances[0]
    np.testing.assert_allclose(inst.positive, points.cells_to_pixels(inst.positive_cells, (400, 600), 60))
    np.testing.assert_allclose(inst.negative, points.cells_to_pixels(inst.negative_cells, (400, 600), 60))


# -------------------------------------------------------------------------------------------------- CLI
def test_cli_writes_masks_overlays_and_results(tiny_hub, photos, tmp_path, capsys):
    from vision.cli import main

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("coffee", "astronaut"):
        Image.fromarray(photos[name]).save(inputs / f"{name}.jpg")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(inputs / "speck.png")
    (inputs / "broken.jpg").write_bytes(b"nope")
    prompt, mask = tmp_path / "cat.png", tmp_path / "cat_mask.png"
    Image.fromarray(photos["chelsea"]).save(prompt)
    m = np.zeros(photos["chelsea"].shape[:2], np.uint8)
    m[60:240, 120:330] = 255
    Image.fromarray(m).save(mask)
    out = tmp_path / "out"
    code = main(["ipseg", "--tiny", "--fast", "--prompt", str(prompt), "--prompt-mask", str(mask),
                 "--input", str(inputs), "--output", str(out), "--no-progress"])
    assert code == 1  # two inputs failed, the others were written
    for name in ("coffee", "astronaut"):
        mask_png = Image.open(out / f"{name}.mask.png")
        assert mask_png.size == Image.open(inputs / f"{name}.jpg").size and mask_png.mode == "L"
        assert (out / f"{name}.overlay.png").is_file()
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ok = {line["id"]: line for line in lines if line["status"] == "ok"}
    assert set(ok) == {"coffee.jpg", "astronaut.jpg"}
    row = ok["coffee.jpg"]
    assert row["tiny"] and row["feature_source"] == "dinov2-only" and np.isfinite(row["score"])
    assert row["concepts"][0]["prompt_regions"][0]["source"] == "mask" and row["timings"]["sam_encode"] >= 0
    assert row["concepts"][0]["instances"][0]["points"]["positive"]
    errors = {json.loads(line)["id"]: json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()}
    assert set(errors) == {"broken.jpg", "speck.png"} and "smaller than one" in errors["speck.png"]["reason"]


def test_cli_bad_prompt_is_a_message_not_a_traceback(tiny_hub, photos, tmp_path, capsys):
    from vision.cli import main

    prompt, empty = tmp_path / "p.png", tmp_path / "empty.png"
    Image.fromarray(photos["chelsea"]).save(prompt)
    Image.fromarray(np.zeros(photos["chelsea"].shape[:2], np.uint8)).save(empty)
    (tmp_path / "in").mkdir()
    target = tmp_path / "in" / "t.png"
    Image.fromarray(photos["coffee"]).save(target)
    args = ["ipseg", "--tiny", "--fast", "--input", str(target), "--output", str(tmp_path / "o"), "--no-progress"]
    assert main([*args, "--prompt", str(prompt), "--prompt-mask", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "empty" in err and "Traceback" not in err
    assert main([*args, "--prompt", str(tmp_path / "missing.png")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([*args, "--prompt", str(prompt), "--prompt-box", "1,2,3"]) == 2
    assert "X0,Y0,X1,Y1" in capsys.readouterr().err
