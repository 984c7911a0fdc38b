"""IPSeg's pure helpers with injected features whose answer is known (no models)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from vision.engines.ipseg import cascade, features, points, prompts
from vision.imaging import Letterbox, letterbox


# ------------------------------------------------------------------------------------------ point choice
def _similarity_with_blob() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S: 0.5 everywhere, a high blob (0.9..1.0) and a low patch (0.0..0.1) at known cells."""
    rng = np.random.default_rng(0)
    s = np.full((60, 60), 0.5, dtype=np.float32) + rng.uniform(-0.02, 0.02, (60, 60)).astype(np.float32)
    high = np.zeros((60, 60), bool)
    high[10:20, 30:42] = True
    low = np.zeros((60, 60), bool)
    low[44:56, 4:14] = True
    s[high] = rng.uniform(0.9, 1.0, high.sum())
    s[low] = rng.uniform(0.0, 0.1, low.sum())
    return s, high, low


def test_points_inside_high_region_and_negatives_outside():
    s, high, low = _similarity_with_blob()
    sel = points.select_points(s, k=32, clusters=4, iters=20, seed=0)
    assert len(sel.top_cells) == 32 and high[sel.top_cells[:, 0], sel.top_cells[:, 1]].all()
    assert 1 <= len(sel.positive) <= 4 and 1 <= len(sel.negative) <= 4
    assert high[sel.positive[:, 0], sel.positive[:, 1]].all()
    assert low[sel.negative[:, 0], sel.negative[:, 1]].all()
    assert not high[sel.negative[:, 0], sel.negative[:, 1]].any()


def test_points_respect_allowed_cells():
    s, high, _ = _similarity_with_blob()
    allowed = ~high
    allowed[50, 50] = True
    s[50, 50] = 0.8  # best remaining cell
    sel = points.select_points(s, allowed=allowed)
    assert not high[sel.top_cells[:, 0], sel.top_cells[:, 1]].any()
    assert tuple(sel.top_cells[0]) == (50, 50)


def test_kmeans_is_seeded_and_deterministic():
    rng = np.random.default_rng(1)
    data = np.concatenate([rng.normal(c, 0.5, (8, 2)) for c in ((5, 5), (5, 40), (40, 5), (40, 40))])
    a = points.kmeans(data, 4, 20, seed=3)
    b = points.kmeans(data.copy(), 4, 20, seed=3)
    np.testing.assert_array_equal(a, b)
    found = sorted(tuple(np.round(c / 35).astype(int)) for c in a)  # each centre near one true centre
    assert found == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # A grid map gives the same positive points every time (and for a copy of it).
    s, _, _ = _similarity_with_blob()
    first = points.select_points(s, seed=7)
    again = points.select_points(s.copy(), seed=7)
    np.testing.assert_array_equal(first.positive, again.positive)
    np.testing.assert_array_equal(first.negative, again.negative)


def test_kmeans_drops_empty_clusters():
    data = np.repeat(np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0]]), 10, axis=0)
    centres = points.kmeans(data, 4, 20, seed=0)
    assert 1 <= len(centres) <= 3
    assert len(np.unique(centres, axis=0)) == len(centres)
    assert points.kmeans(np.zeros((0, 2)), 4).shape == (0, 2)
    assert len(points.kmeans(np.array([[1.0, 2.0], [3.0, 4.0]]), 4)) == 2  # fewer points than clusters


def test_top_k_ties_are_stable_and_top_k_mean():
    s = np.zeros((4, 4), np.float32)
    cells = points.top_k_cells(s, 3)
    np.testing.assert_array_equal(cells, [[0, 0], [0, 1], [0, 2]])
    s[1, 1], s[2, 2] = 4.0, 2.0
    assert points.top_k_mean(s, 2) == pytest.approx(3.0)
    assert points.top_k_mean(s, 2, allowed=s < 3) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------- grid & coordinates
class _PatchMeanDino(torch.nn.Module):
    """A stand-in for DINOv2 whose patch tokens are the patch's mean pixel value (4 channels)."""

    def forward(self, pixel_values, output_hidden_states=True):
        mean = F.avg_pool2d(pixel_values.mean(1, keepdim=True), 14)  # [1, 1, g, g]
        tokens = mean.flatten(2).transpose(1, 2).repeat(1, 1, 4)  # [1, g*g, 4]
        tokens = torch.cat([torch.zeros(1, 1, 4), tokens], dim=1)  # CLS first
        return type("Out", (), {"hidden_states": (tokens,)})()


def _image_with_rect(h, w, rows, cols):
    image = np.zeros((h, w, 3), np.uint8)
    image[rows[0] : rows[1], cols[0] : cols[1]] = 255
    return image


@pytest.mark.parametrize("h,w,rows,cols,cells", [
    # Image rows 98..210 of 420 are grid rows 14..30 (7 px per row); the 840 square puts them at 308..420,
    # DINOv2 patches 22..30 of the padded square, cells 7..15 of the 30 patch rows that cover the image.
    (420, 840, (98, 210), (420, 630), ((14, 30), (30, 45))),  # landscape: padded top and bottom
    (840, 420, (420, 630), (98, 210), ((30, 45), (14, 30))),  # portrait: padded left and right
])
def test_letterbox_feature_unletterbox_maps_region_to_cells(tiny_hub, h, w, rows, cols, cells):
    from vision.engines.ipseg import IPSegConfig, IPSegEngine
    from vision.hub import ModelHub

    hub = ModelHub(tiny=True, device="cpu")
    hub.put("dinov2_b14", _PatchMeanDino())
    engine = IPSegEngine(IPSegConfig.from_preset("fast"), hub=hub)
    fmap = engine.extractor.dino(_image_with_rect(h, w, rows, cols))
    assert fmap.shape == (4, 60, 60)
    expected = np.zeros((60, 60), bool)
    expected[cells[0][0] : cells[0][1], cells[1][0] : cells[1][1]] = True
    np.testing.assert_array_equal(fmap[0].numpy() > fmap[0].min().item() + 1e-3, expected)
    # The same region as a prompt mask lands on the same cells (before erosion).
    np.testing.assert_array_equal(prompts.mask_to_grid(_image_with_rect(h, w, rows, cols)[..., 0] > 0, 60), expected)


def test_sd_sized_maps_crop_to_the_same_cells():
    """A 480x960 image in SD's 960 square: a 60x60 map (s3) maps exactly, 30/15 maps nearly."""
    image = _image_with_rect(480, 960, (0, 240), (480, 960))
    square, box = letterbox(image, 960)
    expected = np.zeros((60, 60), bool)
    expected[0:30, 30:60] = True
    x = torch.as_tensor(square[..., 0], dtype=torch.float32)[None, None] / 255
    for n, min_iou in ((60, 1.0), (30, 0.85), (15, 0.6)):  # 30 and 15: 32/64-px cells straddle the edge
        fmap = F.adaptive_avg_pool2d(x, n)[0]  # [1, n, n] "feature": fraction of white pixels
        grid = features.crop_to_grid(fmap, box, 60)[0].numpy() >= 0.5
        iou = (grid & expected).sum() / (grid | expected).sum()
        assert iou >= min_iou, (n, iou)


def test_cells_to_sam_coordinates():
    cells = np.array([[22, 37], [0, 0], [59, 59]])
    pixels = points.cells_to_pixels(cells, (420, 840), 60)
    np.testing.assert_allclose(pixels[0], [525.0, 157.5])  # cell centre in image pixels
    ref = points.cells_to_pixels(cells, (1024, 1024), 60)  # the reference's stretched 1024 frame
    np.testing.assert_allclose(ref[0], [37 * 1024 / 60 + 1024 / 120, 22 * 1024 / 60 + 1024 / 120])
    # The reference's stretched-1024 frame and image pixels name the same points ...
    np.testing.assert_allclose(ref / 1024 * np.array([840, 420]), pixels, rtol=1e-5)
    # ... and SamPredictor's aspect-keeping frame is that point scaled by 1024 / long side.
    sam = ResizeLongestSide(1024).apply_coords(pixels.astype(np.float64), (420, 840))
    np.testing.assert_allclose(sam, pixels * 1024 / 840, rtol=1e-5)
    # For a square image both SAM frames coincide.
    square = ResizeLongestSide(1024).apply_coords(points.cells_to_pixels(cells, (500, 500), 60).astype(np.float64),
                                                  (500, 500))
    np.testing.assert_allclose(square, ref, rtol=1e-5)
    np.testing.assert_array_equal(points.flat_to_cells(np.array([0, 61, 3599]), 60), [[0, 0], [1, 1], [59, 59]])


def test_letterbox_valid_region_is_the_image():
    rows, cols = Letterbox(420, 840, 840).valid_region(60)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (15, 45, 0, 60)


# -------------------------------------------------------------------------------------------- regions
def test_region_erosion_and_fallbacks():
    mask = np.zeros((600, 600), bool)
    mask[100:400, 100:400] = True
    region, how = prompts.region_from_mask(mask, 60)
    assert how == "eroded" and region[11:39, 11:39].all() and region.sum() == 28 * 28
    thin = np.zeros((600, 600), bool)
    thin[100:120, 100:400] = True  # 2 cells high: erosion empties it
    region, how = prompts.region_from_mask(thin, 60)
    assert how == "uneroded" and region.sum() == 2 * 30
    dot = np.zeros((600, 600), bool)
    dot[101:103, 201:203] = True  # misses every cell centre
    region, how = prompts.region_from_mask(dot, 60)
    assert how == "touched" and region.sum() == 1 and region[10, 20]
    # The image border does not erode: a mask along the top edge keeps its first row.
    edge = np.zeros((60, 60), bool)
    edge[0:3, 10:20] = True
    assert prompts.erode3x3(edge)[0:2, 11:19].all()


def test_box_to_mask_clips_and_bbox():
    mask = prompts.box_to_mask((-10, 5, 30.2, 20), (50, 40))
    assert mask.shape == (50, 40) and mask[5:20, 0:31].all() and mask.sum() == 15 * 31
    np.testing.assert_array_equal(cascade.mask_bbox(mask), [0, 5, 30, 19])
    assert cascade.mask_bbox(np.zeros((5, 5), bool)) is None


def test_first_pc_foreground_finds_the_centre_object():
    rng = np.random.default_rng(0)
    centre = np.zeros((60, 60), bool)
    centre[20:40, 22:44] = True
    a, b = rng.normal(size=16), rng.normal(size=16)
    tokens = np.where(centre[..., None], a, b) + rng.normal(scale=0.05, size=(60, 60, 16))
    fg, proj = prompts.first_pc_foreground(torch.as_tensor(tokens, dtype=torch.float32).permute(2, 0, 1))
    np.testing.assert_array_equal(fg, centre)
    assert proj.shape == (60, 60) and proj[centre].mean() > proj[~centre].mean()


def test_prototype_and_cosine_map():
    feat = torch.zeros(3, 4, 4)
    feat[0, :2] = 2.0  # top half points along x
    feat[1, 2:] = 1.0  # bottom half along y
    region = np.zeros((4, 4), bool)
    region[0, 0] = True
    proto = features.prototype(feat, region)
    torch.testing.assert_close(proto, torch.tensor([1.0, 0.0, 0.0]))
    sim = features.cosine_map(proto, feat)
    assert torch.allclose(sim[:2], torch.ones(2, 4)) and torch.allclose(sim[2:], torch.zeros(2, 4))
    both = features.cosine_map(torch.stack([proto, torch.tensor([0.0, 1.0, 0.0])]), feat)
    assert torch.allclose(both, torch.ones(4, 4))  # max over prototypes


# --------------------------------------------------------------------------------------------- cascade
class RecordingPredictor:
    """Records every ``predict`` call; returns scripted masks, IoUs and logits."""

    def __init__(self, step2_masks, size=(40, 50)):
        self.calls = []
        self.size = size
        self.step2_masks = step2_masks

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output=True, return_logits=False):
        n = len(self.calls)
        self.calls.append({"point_coords": point_coords, "point_labels": point_labels, "box": box,
                           "mask_input": mask_input, "multimask_output": multimask_output})
        count = 3 if multimask_output else 1
        logits = np.full((count, 256, 256), float(n), np.float32) + np.arange(count)[:, None, None] * 0.1
        if n == 0:
            return np.ones((1, *self.size), bool), np.array([0.5]), logits
        if n == 1:
            return self.step2_masks, np.array([0.1, 0.9, 0.5]), logits
        masks = np.zeros((3, *self.size), bool)
        masks[2, 1:3, 1:4] = True
        return masks, np.array([0.3, 0.2, 0.8]), logits


def _step2_masks(empty: bool):
    masks = np.zeros((3, 40, 50), bool)
    if not empty:
        masks[1, 5:15, 10:30] = True  # the best (IoU 0.9) mask: box x 10..29, y 5..14
    masks[0, 0:2, 0:2] = True
    return masks


def test_cascade_makes_the_three_documented_calls():
    predictor = RecordingPredictor(_step2_masks(empty=False))
    coords = np.array([[10.0, 12.0], [30.0, 7.0], [1.0, 1.0]], np.float32)
    labels = np.array([1, 1, 0])
    out = cascade.sam_cascade(predictor, coords, labels)
    c1, c2, c3 = predictor.calls
    for call in predictor.calls:
        np.testing.assert_array_equal(call["point_coords"], coords)
        np.testing.assert_array_equal(call["point_labels"], labels)
    assert c1["multimask_output"] is False and c1["mask_input"] is None and c1["box"] is None
    assert c2["multimask_output"] is True and c2["box"] is None
    np.testing.assert_array_equal(c2["mask_input"], np.zeros((1, 256, 256)))  # step 1's logits L1
    assert c3["multimask_output"] is True
    np.testing.assert_array_equal(c3["box"], [10, 5, 29, 14])  # bbox of step 2's best (IoU) mask
    np.testing.assert_allclose(c3["mask_input"], np.full((1, 256, 256), 1.1, np.float32))  # its logits
    assert out.iou == pytest.approx(0.8) and out.mask.sum() == 6 and out.mask.dtype == bool
    assert out.box is not None and [s["kept"] for s in out.steps] == [0, 1, 2]


def test_cascade_skips_the_box_when_step2_is_empty():
    predictor = RecordingPredictor(_step2_masks(empty=True))
    out = cascade.sam_cascade(predictor, np.array([[3.0, 4.0]]), np.array([1]))
    assert len(predictor.calls) == 3
    assert predictor.calls[2]["box"] is None and out.box is None
    np.testing.assert_allclose(predictor.calls[2]["mask_input"], np.full((1, 256, 256), 1.1, np.float32))
