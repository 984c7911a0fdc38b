"""Trident's pure pieces against direct transcriptions of the spec's formulas."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vision.engines.trident import aggregate, refine, splice
from vision.engines.trident.modes import OPEN, REFERENCE


def n_windows(width, height, short_side, stride, patch=16, mode=OPEN):
    h, w = mode.clip_input_shape(height, width, short_side, 2048, patch, 336)
    return len(splice.window_boxes(h, w, 336, stride))


# ------------------------------------------------------------------------------------------- window grid


@pytest.mark.parametrize("mode", [OPEN, REFERENCE], ids=["open", "reference"])
def test_window_counts_of_the_spec(mode):
    assert n_windows(500, 375, 448, 224, mode=mode) == 6  # VOC image at S=448
    assert n_windows(640, 480, 576, 224, mode=mode) == 9  # a 4:3 image at S=576 (Context / ADE)
    assert n_windows(2048, 1024, 688, 224, mode=mode) == 18  # Cityscapes
    assert n_windows(500, 375, 336, 112, mode=mode) == 2  # VOC20 at S=336, stride 112


def test_open_input_size_rounds_each_side_up_to_patch_and_window():
    def shape(h, w, s, patch=16):
        return OPEN.clip_input_shape(h, w, s, 2048, patch, 336)

    assert shape(375, 500, 448) == (448, 608)  # 597 -> 608
    assert shape(1024, 2048, 688) == (688, 1376)
    assert shape(20, 30, 448) == (448, 672)  # small images are upscaled
    assert shape(10, 4000, 448) == (336, 2048)  # long side capped, short side >= 336
    assert shape(375, 500, 448, 14) == (448, 602)  # H/14: multiples of 14
    with pytest.raises(ValueError):
        shape(0, 10, 448)


def test_windows_are_full_size_flush_and_cover_the_image():
    h, w = 448, 608
    boxes = splice.window_boxes(h, w, 336, 224)
    cover = np.zeros((h, w), int)
    for y1, x1, y2, x2 in boxes:
        assert (y2 - y1, x2 - x1) == (336, 336)
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    assert max(b[2] for b in boxes) == h and max(b[3] for b in boxes) == w  # last window flush
    assert [b[:2] for b in boxes][:3] == [(0, 0), (0, 224), (0, 272)]


# -------------------------------------------------------------------------------------- proxy attention


def loop_proxy_weights(tokens, beta, gamma):
    """The spec, term by term: S = F F^T per window, mean over ALL windows, mask S' < 0, softmax."""
    b, n, _ = tokens.shape
    f = [[tokens[w, i] / tokens[w, i].norm() for i in range(n)] for w in range(b)]
    s = torch.zeros(b, n, n, dtype=torch.float64)
    for w in range(b):
        for i in range(n):
            for j in range(n):
                s[w, i, j] = float(f[w][i] @ f[w][j])
    mean = s.sum() / (b * n * n)
    out = torch.zeros_like(s)
    for w in range(b):
        for i in range(n):
            row = gamma * (s[w, i] - beta * mean)
            keep = row >= 0
            e = torch.where(keep, torch.exp(row), torch.zeros_like(row))
            out[w, i] = e / e.sum()
    return out


def test_proxy_attention_weights_equal_the_loop_with_the_batch_wide_mean():
    torch.manual_seed(0)
    tokens = torch.randn(3, 9, 8)
    tokens[0] += 2.0  # windows differ, so a per-window mean would give other weights
    got = splice.proxy_attention_weights(tokens, beta=1.2, gamma=3.0)
    want = loop_proxy_weights(tokens.double(), 1.2, 3.0)
    assert torch.allclose(got.double(), want, atol=1e-5)
    per_window = torch.cat([splice.proxy_attention_weights(tokens[i:i + 1]) for i in range(3)])
    assert not torch.allclose(per_window, got, atol=1e-3)
    assert torch.allclose(got.sum(-1), torch.ones(3, 9), atol=1e-5)
    assert (got[want == 0] == 0).all()  # masked entries really are zero


def test_proxy_block_equals_per_head_loop():
    from open_clip.transformer import ResidualAttentionBlock

    torch.manual_seed(1)
    width, heads = 16, 4
    block = ResidualAttentionBlock(width, heads).eval()
    clip_grid, vfm_grid = (5, 5), (4, 4)
    x = torch.randn(2, 1 + 25, width)
    weights = splice.proxy_attention_weights(torch.randn(2, 16, 8))
    with torch.no_grad():
        got = splice.proxy_block(block, x, clip_grid, weights, vfm_grid)
        hd = width // heads
        ln = block.ln_1(x[:, 1:])
        w_v, b_v = block.attn.in_proj_weight[2 * width:], block.attn.in_proj_bias[2 * width:]
        outs = []
        for w in range(2):
            per_head = []
            for h in range(heads):
                v = ln[w] @ w_v[h * hd:(h + 1) * hd].T + b_v[h * hd:(h + 1) * hd]  # [25, hd]
                v = F.interpolate(v.T.reshape(1, hd, 5, 5), size=vfm_grid, mode="bilinear", align_corners=False)
                per_head.append(weights[w] @ v.reshape(hd, 16).T)
            outs.append(block.attn.out_proj(torch.cat(per_head, dim=-1)))
        want = torch.stack(outs)
    assert got.shape == (2, 16, width)
    assert torch.allclose(got, want, atol=1e-5)


def test_clip_trunk_matches_open_clip_forward(tiny_hub):
    visual = tiny_hub.get("clip_b16").visual
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        x, grid = splice.clip_trunk(visual, pixels)
        ours = visual.transformer.resblocks[-1](x)
        theirs = visual.transformer(visual._embeds(pixels))
    assert grid == (14, 14)
    assert torch.allclose(ours, theirs, atol=1e-5)
    with torch.no_grad():
        x, grid = splice.clip_trunk(visual, torch.randn(1, 3, 336, 336))
    assert grid == (21, 21) and x.shape == (1, 1 + 21 * 21, visual.transformer.width)


def test_interpolated_pos_embed_keeps_class_token():
    pos = torch.randn(1 + 14 * 14, 8)
    out = splice.resize_pos_embed(pos, (21, 21))
    assert out.shape == (1 + 441, 8) and torch.equal(out[0], pos[0])
    assert splice.resize_pos_embed(pos, (14, 14)) is pos


def test_splice_averages_overlaps():
    maps = torch.stack([torch.full((2, 3, 3), 1.0), torch.full((2, 3, 3), 3.0)])
    out = splice.splice(maps, [(0, 0, 3, 3), (0, 2, 3, 5)], (3, 5))
    assert torch.equal(out[:, :, :2], torch.ones(2, 3, 2))
    assert torch.equal(out[:, :, 2], torch.full((2, 3), 2.0))
    assert torch.equal(out[:, :, 3:], torch.full((2, 3, 2), 3.0))
    with pytest.raises(ValueError, match="cover"):
        splice.splice(maps, [(0, 0, 3, 3), (0, 0, 3, 3)], (3, 5))


def test_crop_resize_of_whole_map_is_bilinear_interpolation():
    m = torch.randn(4, 6, 9)
    assert torch.allclose(aggregate.crop_resize(m, 0.0, 1.0, (10, 13)),
                          F.interpolate(m[None], size=(10, 13), mode="bilinear", align_corners=False)[0], atol=1e-5)
    left = aggregate.crop_resize(m, 0.0, 0.5, (6, 4))
    assert left.shape == (4, 6, 4)


# ----------------------------------------------------------------------------------------- SAM affinity


def loop_affinity(attn, values, k, refine_neg_cos, cap=0.9):
    h, n, _ = attn.shape
    cos = torch.zeros(h, n, n, dtype=torch.float64)
    for a in range(h):
        for i in range(n):
            for j in range(n):
                cos[a, i, j] = F.cosine_similarity(values[a, i], values[a, j], dim=0)
    out = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        e = k * cos[:, i, :].mean()
        if not refine_neg_cos and e < 0:
            e = 0.6
        e = min(e, cap)
        row = sum(attn[a, i] * (cos[a, i] > e) for a in range(h)) / h
        out[i] = row / row.sum()
    return out


@pytest.mark.parametrize("k,neg", [(1.2, True), (0.0, True), (3.0, False), (-1.2, False), (-1.2, True)])
def test_sam_affinity_equals_loop(k, neg):
    torch.manual_seed(2)
    attn = torch.randn(3, 12, 12).softmax(-1)
    values = torch.randn(3, 12, 5)
    got = aggregate.sam_affinity(attn, values, k, neg)
    want = loop_affinity(attn.double(), values.double(), k, neg)
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_sam_affinity_rows_sum_to_one_and_zero_below_threshold():
    torch.manual_seed(3)
    attn = torch.randn(4, 20, 20).softmax(-1)
    values = torch.randn(4, 20, 6)
    a = aggregate.sam_affinity(attn, values, 1.2, True)
    assert torch.allclose(a.sum(-1), torch.ones(20), atol=1e-5)
    vn = F.normalize(values, dim=-1)
    cos = vn @ vn.transpose(1, 2)
    e = (1.2 * cos.mean(dim=(0, 2))).clamp(max=0.9)
    below_in_every_head = (cos <= e[None, :, None]).all(dim=0)
    assert below_in_every_head.any()
    assert (a[below_in_every_head] == 0).all()


def test_sam_affinity_threshold_is_capped_at_0_9():
    # Nearly identical values: mean cos ~ 0.97, so k * mean = 1.16 > 1 would mask everything; the cap
    # at 0.9 keeps the pairs whose cosine is above 0.9.
    torch.manual_seed(4)
    values = torch.ones(2, 10, 8) + 0.12 * torch.randn(2, 10, 8)
    attn = torch.randn(2, 10, 10).softmax(-1)
    a = aggregate.sam_affinity(attn, values, 1.2, True)
    assert ((a > 0).sum(-1) > 1).all()  # more than the diagonal survives
    assert torch.allclose(a.sum(-1), torch.ones(10), atol=1e-5)
    vn = F.normalize(values, dim=-1)
    assert 1.2 * (vn @ vn.transpose(1, 2)).mean() > 1.0  # the uncapped threshold exceeds every cosine
    uncapped = aggregate.sam_affinity(attn, values, 1.2, True, cap=1.5)
    assert (uncapped == 0).all()  # without the cap nothing would survive


def test_capture_sam_attention_keeps_output_and_records_valid_tokens(tiny_hub):
    encoder = tiny_hub.get("sam_b").image_encoder
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        plain = encoder(x)
        with aggregate.capture_sam_attention(encoder, (48, 64)) as got:
            captured = encoder(x)
    assert torch.allclose(plain, captured, atol=1e-6)
    heads = encoder.blocks[-1].attn.num_heads
    assert got.attn.shape == (heads, 48 * 64, 48 * 64)
    assert got.values.shape[:2] == (heads, 48 * 64)
    assert float(got.attn.sum(-1).max()) <= 1.0 + 1e-5  # softmax over all 64x64 keys, cropped
    assert "forward" not in vars(encoder.blocks[-1].attn)  # the class's forward is back


# ---------------------------------------------------------------------------------------- refinement


def test_component_prompts_points_and_boxes():
    mask = np.zeros((40, 40), bool)
    mask[5:25, 10:30] = True  # 400 px
    mask[30:35, 30:35] = True  # 25 px: too small
    prob = np.zeros((40, 40))
    prob[12, 20] = 0.9
    p = refine.component_prompts(mask, prob, 225)
    assert p.points.tolist() == [[20.0, 12.0]]
    assert p.boxes.tolist() == [[10.0, 5.0, 30.0, 25.0]]  # exclusive: one past the last pixel
    inclusive = refine.component_prompts(mask, prob, 225, refine.inclusive_boxes)
    assert inclusive.points.tolist() == [[20.0, 12.0]]
    assert inclusive.boxes.tolist() == [[10.0, 5.0, 29.0, 24.0]]  # masks_to_boxes: the last pixel
    diagonal = np.eye(20, dtype=bool)  # 8-connected: one component of 20 px
    assert refine.component_prompts(diagonal, np.ones((20, 20)), 20).points.shape == (1, 2)


def test_dense_mask_prompt_layout():
    prob = torch.zeros(100, 200)
    prob[:, :100] = 0.5
    prob[:, 100:] = 0.1
    m = refine.dense_mask_prompt(prob, (100, 200), 0.2, 0.005)
    assert m.shape == (256, 256)
    assert torch.all(m[128:] == 0)  # padding below the 128-row image
    assert torch.isclose(m[10, 10], torch.tensor(0.0025))
    assert m[10, 200] == 0  # below the threshold


class FakeSamPredictor:
    """What refinement uses of a SamPredictor besides ``predict_torch``: the size of the image it holds,
    SAM's coordinate transform and the mask threshold."""

    def __init__(self, original_size):
        from segment_anything.utils.transforms import ResizeLongestSide

        self.original_size = tuple(original_size)
        self.transform = ResizeLongestSide(1024)
        self.calls = []

        class Model:
            mask_threshold = 0.0

        self.model = Model()


class StubPredictor(FakeSamPredictor):
    """A SamPredictor stand-in: each prompt's mask is its box grown by ``grow`` pixels, and its predicted
    IoU is looked up by the coarse class under the prompt point."""

    def __init__(self, coarse, iou_by_class, grow=4):
        super().__init__(coarse.shape)
        self.coarse, self.iou_by_class, self.grow = coarse, iou_by_class, grow

    def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True,
                      return_logits=False):
        assert not multimask_output and return_logits
        assert mask_input.shape == (len(boxes), 1, 256, 256)
        h, w = self.original_size
        scale = 1024 / max(h, w)
        points = point_coords[:, 0] / scale
        boxes = boxes / scale
        self.calls.append((points, boxes))
        logits = torch.full((len(boxes), 1, h, w), -8.0)
        ious = []
        for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            g = self.grow
            logits[i, 0, max(0, y1 - g):y2 + g, max(0, x1 - g):x2 + g] = 8.0
            x, y = points[i].round().long().tolist()
            ious.append(self.iou_by_class[int(self.coarse[min(y, h - 1), min(x, w - 1)])])
        return logits, torch.tensor(ious)[:, None], None


def synthetic_maps():
    """100x100 maps: background (0) everywhere, a 40x40 square of class 1 (400 px at half resolution),
    a 20x20 square of class 2 (100 px at half res: too small), a 40x40 square of class 3, and a 40x40
    square of class 4 whose probability is under coarse_thresh (uncertain)."""
    probs = torch.zeros(5, 100, 100)
    probs[0] = 0.9
    squares = {1: (5, 5, 40, 0.8), 2: (70, 5, 20, 0.8), 3: (5, 55, 40, 0.8), 4: (55, 55, 40, 0.15)}
    for c, (y, x, s, p) in squares.items():
        probs[:, y:y + s, x:x + s] = (1 - p) / 4 if p > 0.5 else p / 2
        probs[c, y:y + s, x:x + s] = p
    return probs, probs.argmax(0)


def test_refinement_merge_rules_with_stub_predictor():
    probs, coarse = synthetic_maps()
    stub = StubPredictor(coarse, {0: 0.5, 1: 0.95, 2: 0.95, 3: 0.8, 4: 0.95}, grow=4)
    labels, stats = refine.sam_refine(stub, probs, coarse, coarse_thresh=0.2, min_area=225, iou_thresh=0.8)
    prompted = {int(coarse[int(y), int(x)]) for points, _ in stub.calls for x, y in points.tolist()}
    assert prompted == {0, 1, 3}  # class 2 under 225 px, class 4 uncertain: never prompted
    assert stats.prompted == 3 and stats.kept == 1
    # Class 1's mask (IoU 0.95) is its box grown by 4 px: the ring around the square becomes class 1.
    assert (labels[5:45, 5:45] == 1).all()
    assert (labels[2:5, 6:46] == 1).all() and (labels[45:50, 6:46] == 1).all()
    # Class 3's mask (IoU exactly 0.8) and the background's (0.5) are rejected: coarse labels stay.
    assert torch.equal(labels[:, 50:], coarse[:, 50:])
    assert torch.equal(labels[60:, :50], coarse[60:, :50])


def test_refinement_prefers_higher_score_where_masks_overlap():
    probs, coarse = synthetic_maps()
    stub = StubPredictor(coarse, {0: 0.5, 1: 0.95, 2: 0.95, 3: 0.95, 4: 0.95}, grow=8)
    labels, stats = refine.sam_refine(stub, probs, coarse, coarse_thresh=0.2, min_area=225, iou_thresh=0.8)
    assert stats.kept == 2
    assert (labels[5:45, 5:45] == 1).all() and (labels[5:45, 55:95] == 3).all()
    # Between the squares both grown masks cover background pixels where P_1 = P_3 = 0: R ties, and
    # every covered pixel takes one of the two classes.
    assert set(labels[20, 45:55].tolist()) <= {1, 3}


def test_dino_v1_tokens_use_the_reference_layer_norm_eps(tmp_path):
    """#20.9: the Hub's DINO ViT-B/16 config says LayerNorm eps 1e-12; the DINO the reference loads with
    torch.hub (facebookresearch/dino vision_transformer.py: ``partial(nn.LayerNorm, eps=1e-6)``) uses 1e-6.
    A checkpoint saved with the Hub's config must give the tokens of the same weights at eps 1e-6."""
    from transformers import ViTConfig, ViTModel

    from vision import builders

    def vit(eps: float) -> ViTModel:
        config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           patch_size=16, image_size=224, layer_norm_eps=eps)
        return ViTModel(config, add_pooling_layer=False).eval()

    torch.manual_seed(0)
    as_on_the_hub = vit(1e-12)
    as_on_the_hub.save_pretrained(tmp_path)
    reference = vit(1e-6)
    reference.load_state_dict(as_on_the_hub.state_dict())
    loaded = builders.dino_v1(tmp_path, "cpu", torch.float32).eval()
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)) * 0.01  # low variance
    with torch.no_grad():
        tokens = splice.vfm_tokens(loaded, pixels)
        assert torch.equal(tokens, splice.vfm_tokens(reference, pixels))
        assert not torch.equal(tokens, splice.vfm_tokens(as_on_the_hub, pixels))  # the eps changes them
