"""IPSeg's reference mode on hand-built inputs: SD crop geometry and overlap averaging (stub VAE and
UNet), the reference's border cells and nearest resampling, its k-means, the stretched SAM frame, the
layer-weight order, presets and the command line."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vision.engines.ipseg import IPSegConfig, IPSegEngine, IPSegError, find_instances, points
from vision.engines.ipseg.cascade import SamView
from vision.engines.ipseg.features import average_crops, crop_to_grid, reference_valid_region, slide_offsets
from vision.engines.ipseg.modes import PRODUCT, REFERENCE, mode_for
from vision.engines.ipseg.prompts import mask_to_grid
from vision.hub import ModelHub
from vision.imaging import Letterbox, letterbox, sample_image

PAPER_CROPS = [(0, 0), (0, 448), (448, 0), (448, 448)]  # (top, left) of the 2x2 512 crops of the 960 square


# ------------------------------------------------------------------------------ SD crops (stub models)
class StubVAE(torch.nn.Module):
    """Records what it encodes; the latent is the 8x8 mean of the pixels, on 4 channels."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def encode(self, x):
        self.seen.append(x.clone())
        mean = F.avg_pool2d(x.mean(1, keepdim=True), 8).repeat(1, 4, 1, 1)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean))


class StubUNet(torch.nn.Module):
    """Records its samples; the hooked layers see the sample pooled by 8 (s5), 4 (s4) and 2 (s3)."""

    def __init__(self):
        super().__init__()
        self.up_blocks = torch.nn.ModuleList([torch.nn.Module() for _ in range(3)])
        self.up_blocks[0].resnets = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
        self.up_blocks[1].attentions = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
        self.up_blocks[2].attentions = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
        self.samples = []

    def forward(self, sample, timestep, encoder_hidden_states=None):
        self.samples.append(sample.clone())
        self.up_blocks[0].resnets[1](F.avg_pool2d(sample, 8))
        self.up_blocks[1].attentions[1](F.avg_pool2d(sample, 4))
        self.up_blocks[2].attentions[1](F.avg_pool2d(sample, 2))


@pytest.fixture(scope="module")
def stub_engine():
    hub = ModelHub(tiny=True, device="cpu")
    vae, unet = StubVAE(), StubUNet()
    hub.put("sd15_vae", vae)
    hub.put("sd15_unet", unet)
    return IPSegEngine(IPSegConfig.from_preset("paper"), hub=hub), vae, unet


def test_slide_offsets():
    assert slide_offsets(960, 512) == [0, 448]  # the paper's 2x2 crops
    assert slide_offsets(512, 512) == [0]
    assert slide_offsets(640, 512) == [0, 128]
    assert slide_offsets(1536, 512) == [0, 512, 1024]


def test_average_crops_places_each_map_at_its_resolution_and_averages_overlaps():
    # Crop k's maps are the constant k + 1: the whole map shows which crops cover each cell.
    crops = [((top, left), {"s5": torch.full((1, 2, 8, 8), k + 1.0), "s3": torch.full((1, 2, 32, 32), k + 1.0)})
             for k, (top, left) in enumerate(PAPER_CROPS)]
    out = average_crops(crops, 960, 512)
    s5, s3 = out["s5"][0, 0], out["s3"][0, 0]
    assert out["s5"].shape == (1, 2, 15, 15) and out["s3"].shape == (1, 2, 60, 60)
    # s5: 64 px cells, crops at cells 0..7 and 7..14: row/column 7 is shared.
    assert s5[0, 0] == 1 and s5[0, 14] == 2 and s5[14, 0] == 3 and s5[14, 14] == 4
    assert s5[0, 7] == 1.5 and s5[7, 0] == 2.0 and s5[7, 7] == 2.5 and s5[7, 14] == 3.0
    # s3: 16 px cells, crops at 0..31 and 28..59: rows/columns 28..31 are shared.
    assert s3[27, 27] == 1 and s3[28, 27] == 2.0 and s3[31, 31] == 2.5 and s3[32, 32] == 4


def test_reference_sd_features_run_four_crops_with_one_noise(stub_engine):
    engine, vae, unet = stub_engine
    vae.seen.clear()
    unet.samples.clear()
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    raw, box = engine.extractor.sd_raw(image)
    square, _ = letterbox(image, 960)
    pixels = torch.as_tensor(square, dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1.0
    # The VAE saw the four 512 crops of the letterboxed square, in order.
    assert len(vae.seen) == 4
    for seen, (top, left) in zip(vae.seen, PAPER_CROPS):
        torch.testing.assert_close(seen, pixels[..., top : top + 512, left : left + 512])
    # Each UNet sample is the crop's latent (64x64) noised at t = 100 with the same noise: randn seeded 42.
    alpha = engine.extractor.scheduler().alphas_cumprod[100]
    noise = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(42))
    expected = []
    for seen, sample in zip(vae.seen, unet.samples):
        latent = F.avg_pool2d(seen.mean(1, keepdim=True), 8).repeat(1, 4, 1, 1) * 0.18215
        assert sample.shape == (1, 4, 64, 64)
        torch.testing.assert_close(sample, alpha.sqrt() * latent + (1 - alpha).sqrt() * noise)
        expected.append({"s5": F.avg_pool2d(sample, 8), "s3": F.avg_pool2d(sample, 2)})
    assert {k: tuple(v.shape) for k, v in raw.items()} == {"s5": (1, 4, 15, 15), "s4": (1, 4, 30, 30),
                                                          "s3": (1, 4, 60, 60)}
    c0, c1, c2, c3 = expected
    torch.testing.assert_close(raw["s5"][..., 0, 0], c0["s5"][..., 0, 0])
    torch.testing.assert_close(raw["s5"][..., 3, 7], (c0["s5"][..., 3, 7] + c1["s5"][..., 3, 0]) / 2)
    torch.testing.assert_close(raw["s5"][..., 7, 7], (c0["s5"][..., 7, 7] + c1["s5"][..., 7, 0] + c2["s5"][..., 0, 7]
                                                      + c3["s5"][..., 0, 0]) / 4)
    torch.testing.assert_close(raw["s3"][..., 30, 59], (c1["s3"][..., 30, 31] + c3["s3"][..., 2, 31]) / 2)
    # On the grid: 11 s5 rows of the 480x640 image (the reference's cells), resized to 60 with `nearest`.
    grid = engine.extractor.sd(image, 60)["s5"]
    torch.testing.assert_close(grid[:, 0, 0], raw["s5"][0, :, 2, 0])
    torch.testing.assert_close(grid[:, 59, 59], raw["s5"][0, :, 12, 14])


def test_default_sd_features_are_one_pass_on_the_square(stub_engine):
    _, vae, unet = stub_engine
    engine = IPSegEngine(IPSegConfig(), hub=stub_engine[0].hub)
    vae.seen.clear()
    unet.samples.clear()
    raw, _ = engine.extractor.sd_raw(np.zeros((480, 640, 3), np.uint8))
    assert [tuple(s.shape) for s in vae.seen] == [(1, 3, 960, 960)] and unet.samples[0].shape == (1, 4, 120, 120)
    assert raw["s5"].shape == (1, 4, 15, 15)


def test_reference_mode_end_to_end_with_small_overlapping_crops(tiny_hub):
    # 192 px crops of a 256 square: offsets 0 and 64, four crops, latent 24 (the shared 64x64 noise
    # bicubic-resized, as the reference does for other sizes); the tiny models keep this fast.
    config = IPSegConfig.from_preset("paper", sd_size=256, sd_crop=192, sam_model="sam_b")
    engine = IPSegEngine(config, hub=tiny_hub)
    raw, _ = engine.extractor.sd_raw(sample_image("coffee"))
    up = list(reversed(tiny_hub.get("sd15_unet").config.block_out_channels))
    assert {k: tuple(v.shape) for k, v in raw.items()} == {"s5": (1, up[0], 4, 4), "s4": (1, up[1], 8, 8),
                                                          "s3": (1, up[2], 16, 16)}
    a = engine(sample_image("chelsea"), sample_image("coffee"))
    b = IPSegEngine(config, hub=tiny_hub)(sample_image("chelsea"), sample_image("coffee"))
    np.testing.assert_array_equal(a.mask, b.mask)  # deterministic: fixed noise and k-means seeds
    record = a.to_record()
    assert record["reference"] and record["features"] == "dino+sd" and a.mask.shape == (400, 600)


# ------------------------------------------------------------------------------ border cells, resampling
@pytest.mark.parametrize("hw,reference,default", [
    # (H, W): cells kept across the short side for n = 15 (s5), 30 (s4), 60 (s3 and DINOv2).
    # Reference: kept = int(short / (long / n)), cut at (n - kept) // 2 from each end. Default: every
    # cell the letterboxed image touches.
    ((480, 640), ((2, 13), (4, 26), (7, 53)), ((1, 14), (3, 27), (7, 53))),   # 11/13, 22/24, 46/46
    ((640, 480), ((2, 13), (4, 26), (7, 53)), ((1, 14), (3, 27), (7, 53))),   # portrait: columns
    ((300, 451), ((3, 12), (5, 25), (10, 50)), ((2, 13), (5, 25), (10, 50))),  # 9 s5 rows, not 11
    ((400, 600), ((2, 13), (5, 25), (10, 50)), ((2, 13), (5, 25), (10, 50))),  # n - kept odd: one more
])
def test_reference_border_cells(hw, reference, default):
    h, w = hw
    for n, ref_span, default_span in zip((15, 30, 60), reference, default):
        rows, cols = reference_valid_region(h, w, n)
        short = rows if w > h else cols
        assert (short.start, short.stop) == ref_span, n
        assert ((cols if w > h else rows).start, (cols if w > h else rows).stop) == (0, n)
        rows, cols = Letterbox(h, w, 960).valid_region(n)
        short = rows if w > h else cols
        assert (short.start, short.stop) == default_span, n
    assert reference_valid_region(500, 500, 15) == (slice(0, 15), slice(0, 15))


def test_reference_resamples_with_pytorch_nearest():
    # An s5 map whose value is its row: the 480x640 image keeps rows 2..12 (11 rows); to 60 rows,
    # `nearest` takes row floor(i * 11 / 60) (grid row 5 -> kept row 0, i.e. row 2), nearest-exact takes
    # floor((i + 0.5) * 11 / 60) (grid row 5 -> kept row 1, i.e. row 3; default mode keeps rows 1..13).
    fmap = torch.arange(15, dtype=torch.float32)[None, :, None].repeat(1, 1, 15)
    box = Letterbox(480, 640, 960)
    ref = crop_to_grid(fmap, box, 60, REFERENCE)[0, :, 0]
    assert ref[0] == 2 and ref[5] == 2 and ref[6] == 3 and ref[59] == 12
    ours = crop_to_grid(fmap, box, 60)[0, :, 0]
    assert ours[0] == 1 and ours[59] == 13
    # The prompt mask too: a mask of the image's top 1/60 covers grid row 0 with `nearest` only when
    # that row's first pixel row is inside it.
    mask = np.zeros((600, 600), bool)
    mask[:4] = True  # 4 of the 10 pixel rows of grid row 0: the top-left sample is in, the centre is not
    assert mask_to_grid(mask, 60, "nearest")[0].all() and not mask_to_grid(mask, 60).any()


# ---------------------------------------------------------------------------------------------- k-means
def test_reference_kmeans_starts_from_a_seeded_random_subset():
    data = np.stack([np.arange(32) // 8, np.arange(32) % 8 * 3.0], axis=1)
    # torch.manual_seed(0); torch.randperm(32)[:4] is [12, 31, 25, 28]: the reference's draw.
    np.testing.assert_array_equal(points.kmeans_reference(data, 4, iters=0), data[[12, 31, 25, 28]])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        assert torch.randperm(32)[:4].tolist() == [12, 31, 25, 28]
    again = points.kmeans_reference(data, 4, 20, seed=0)
    np.testing.assert_array_equal(again, points.kmeans_reference(data.copy(), 4, 20, seed=0))


def test_reference_points_are_fractional_cells_on_floor_rows():
    sim = np.zeros((60, 60), np.float32)
    sim[10, 20:52] = np.linspace(1.0, 0.9, 32)  # the 32 top cells: row 10, columns 20..51
    sim[40:44, 5:13] = -1.0  # the 32 lowest
    ref = points.select_points_reference(sim)
    ours = points.select_points(sim)
    assert np.all(ref.positive[:, 0] == 10.0)  # floor rows (the reference's idx / 60 would add col / 60)
    assert not np.all(ref.positive[:, 1] == np.round(ref.positive[:, 1]))  # centres not rounded to cells
    assert ours.positive.dtype == np.int64 and np.all(ours.positive[:, 0] == 10)
    assert ((ref.negative[:, 0] >= 40) & (ref.negative[:, 0] <= 43)).all()


def test_reference_lloyd_emptied_cluster_collapses_to_one_centre():
    data = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    centres = points.lloyd_reference(data, torch.tensor([[0.0, 0.0], [100.0, 100.0]]), 20)
    assert torch.isnan(centres).any(dim=1).sum() == 1  # the far centre emptied: NaN, then the collapse
    torch.testing.assert_close(centres[~torch.isnan(centres).any(dim=1)], data.mean(0, keepdim=True))


# ------------------------------------------------------------------------------------ stretched SAM frame
class FramePredictor:
    """Records the points of each predict(); answers with a rectangle of its 1024 frame."""

    def __init__(self):
        self.calls = []

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True, **_):
        self.calls.append(np.array(point_coords))
        mask = np.zeros((1024, 1024), bool)
        mask[256:768, 512:1024] = True
        n = 3 if multimask_output else 1
        return np.repeat(mask[None], n, 0), np.linspace(0.9, 0.7, n), np.zeros((n, 256, 256), np.float32)


def test_stretched_frame_points_and_masks():
    sim = np.zeros((60, 60), np.float32)
    sim[20:30, 35:45] = 1.0
    predictor = FramePredictor()
    view = SamView(predictor, (400, 600), (1024, 1024))
    _, _, (inst,) = find_instances(sim, view, IPSegConfig(reference=True))
    cells = np.concatenate([inst.positive_cells, inst.negative_cells])
    sent = predictor.calls[0]
    np.testing.assert_allclose(sent[:, 0], cells[:, 1] * 1024 / 60 + 1024 / 120, rtol=1e-5)  # the reference's
    np.testing.assert_allclose(sent[:, 1], cells[:, 0] * 1024 / 60 + 1024 / 120, rtol=1e-5)  # mapping
    np.testing.assert_allclose(np.concatenate([inst.positive, inst.negative]), sent * [600 / 1024, 400 / 1024],
                               rtol=1e-5)  # the same points in image pixels
    expected = np.zeros((400, 600), bool)
    expected[100:300, 300:600] = True  # the frame's rectangle, back at the image's size
    np.testing.assert_array_equal(inst.mask, expected)


def test_sam_view_stretches_the_image_to_the_encoder_square(tiny_hub):
    import cv2
    from segment_anything import SamPredictor

    sam = tiny_hub.get("sam_b")
    image = sample_image("coffee")
    view = SamView.encode(sam, image, stretch=True)
    assert view.frame_hw == (1024, 1024) and view.image_hw == (400, 600) and view.stretched
    assert view.predictor.original_size == (1024, 1024) and view.valid_region(64) == (slice(0, 64), slice(0, 64))
    direct = SamPredictor(sam)
    with torch.no_grad():
        direct.set_image(cv2.resize(image, (1024, 1024), interpolation=cv2.INTER_LINEAR))
    torch.testing.assert_close(view.predictor.features, direct.features)
    kept = SamView.encode(sam, image, stretch=False)
    assert not kept.stretched and kept.valid_region(64) == (slice(0, 43), slice(0, 64))  # 683 of 1024 rows


# --------------------------------------------------------------------------------- config and presets
def test_presets_and_layer_weight_order():
    paper = IPSegConfig.from_preset("paper")
    assert paper.reference and paper.sam_model == "sam_h" and paper.features == "dino+sd"
    assert (paper.seed, paper.noise_seed) == (0, 42)
    assert mode_for(paper).feature_weights(paper) == pytest.approx({"dino": 1.0, "s3": 0.03, "s4": 0.02, "s5": 0.01})
    assert PRODUCT.feature_weights(IPSegConfig()) == pytest.approx({"dino": 1.0, "s5": 0.03, "s4": 0.02, "s3": 0.01})
    assert IPSegConfig.from_preset("fast") == IPSegConfig(preset="fast", features="dino")
    assert IPSegConfig(sd_weight=0.0).features == "dino" and not IPSegConfig(sd_weight=0.0).use_sd  # old spelling
    assert PRODUCT.feature_weights(IPSegConfig(features="sam")) == {"sam": 1.0}
    assert IPSegConfig.from_preset("default") == IPSegConfig()
    with pytest.raises(IPSegError, match="presets: default, paper, fast"):
        IPSegConfig.from_preset("best")
    with pytest.raises(IPSegError, match="features"):
        IPSegConfig(features="clip").validate()
    IPSegConfig(sam_model="sam_t").validate()  # MobileSAM-class hub model
    with pytest.raises(IPSegError, match="sam_t, sam_b, sam_h"):
        IPSegConfig(sam_model="sam_l").validate()
    described = paper.describe()
    assert described == {"features": "dino+sd", "feature_source": "dinov2+sd15", "sam_model": "sam_h",
                         "sam_backend": "auto", "sam_frame": "stretched-square"}
    assert paper.reference and paper.mode == "reference" and paper.preset == "paper"


def test_cli_paper_preset_says_which_mode_ran(tiny_hub, tmp_path, capsys):
    from vision.cli import main

    prompt, target = tmp_path / "cat.png", tmp_path / "in" / "coffee.png"
    target.parent.mkdir()
    Image.fromarray(sample_image("chelsea")).save(prompt)
    Image.fromarray(sample_image("coffee")).save(target)
    out = tmp_path / "out"
    # The paper preset without SD keeps the suite fast (the tiny SD crops run in the engine test above).
    code = main(["ipseg", "--tiny", "--preset", "paper", "--features", "dino", "--prompt", str(prompt),
                 "--prompt-box", "120,40,340,290", "--input", str(target), "--output", str(out), "--no-progress",
                 "--heatmap"])
    assert code == 0
    assert "preset paper, features dino (dinov2-only), reference mode on, SAM sam_h" in capsys.readouterr().out
    row = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert row["reference"] is True and row["features"] == "dino" and row["sam_model"] == "sam_h"
    assert row["sam_frame"] == "stretched-square" and row["feature_source"] == "dinov2-only" and row["tiny"]
    cells = row["concepts"][0]["instances"][0]["cells"]["positive"]
    assert any(c != round(c) for cell in cells for c in cell)  # fractional k-means centres
    assert Image.open(out / "coffee.mask.png").size == (600, 400)
    assert Image.open(out / "coffee.heatmap.png").size == (600, 400)
    args = ["ipseg", "--tiny", "--prompt", str(prompt), "--input", str(target), "--output", str(tmp_path / "o2"),
            "--no-progress"]
    assert main([*args, "--fast", "--features", "sam"]) == 2
    assert "contradicts --features sam" in capsys.readouterr().err
