"""CorrCLIP's stages on their own (corrclip.py) and its region masks (regions.py): the product mode's
rules (C1-C3), shapes, the semantic branch's isolation, map correction, the generators and the cache.
The equality with the reference code is in test_corrclip_reference.py."""

import corrclip_models as cm
import numpy as np
import pytest
import torch

from vision import weights
from vision.engines.trident import corrclip, regions, splice
from vision.hub import ModelHub
from vision.imaging import sample_image

PRODUCT, REFERENCE = corrclip.PRODUCT_RULES, corrclip.REFERENCE_RULES


# -------------------------------------------------------------------------------------------- scope


def test_scope_mask_allows_own_region_and_above_mean_pairs_of_the_unsegmented_area():
    ids = torch.tensor([0, 0, 1, 1, 2])
    similarity = torch.tensor([[1.0, 0.9, 0.1, 0.8, 0.0],
                               [0.9, 1.0, 0.0, 0.1, 0.0],
                               [0.1, 0.0, 1.0, 0.9, 0.9],
                               [0.8, 0.1, 0.9, 1.0, 0.0],
                               [0.0, 0.0, 0.9, 0.0, 1.0]])  # mean 0.46
    allowed = corrclip.scope_mask(ids, similarity, unsegmented=0)
    expected = torch.tensor([[1, 1, 0, 1, 0],  # unsegmented: any patch above the mean
                             [1, 1, 0, 0, 0],
                             [0, 0, 1, 1, 0],  # region 1: its own patches (and 0's above the mean: none)
                             [1, 0, 1, 1, 0],  # patch 3 and unsegmented patch 0: 0.8 > mean
                             [0, 0, 0, 0, 1]], dtype=torch.bool)  # region 2: itself only, 0.9 to patch 2 ignored
    assert torch.equal(allowed, expected)
    assert torch.equal(corrclip.scope_mask(ids, similarity, None), ids[:, None] == ids[None, :])


def test_reconstructed_attention_is_a_softmax_at_temperature_4_over_the_allowed_pairs():
    features = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(3)), dim=-1)
    ids = torch.tensor([1, 1, 2, 2, 2, 3])
    attention = corrclip.reconstructed_attention(features, ids, None)
    s = features @ features.T
    row = torch.softmax(4 * s[2, 2:5], dim=0)
    torch.testing.assert_close(attention[2, 2:5], row)
    assert attention[2, [0, 1, 5]].eq(0).all() and attention[5, 5] == 1
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(6))


def test_product_rules_read_id_0_as_unsegmented_and_padding_as_its_own_region():
    covered = torch.tensor([[3, 3], [5, 5]])
    assert REFERENCE.unsegmented(covered) == 3 and PRODUCT.unsegmented(covered) is None  # C1
    assert PRODUCT.unsegmented(torch.tensor([0, 4])) == 0 and REFERENCE.unsegmented(torch.tensor([0, 4])) == 0
    assert (REFERENCE.pad_id, PRODUCT.pad_id) == (10000, -1)  # C2
    assert (REFERENCE.pad_multiple(16, 8), PRODUCT.pad_multiple(16, 8), PRODUCT.pad_multiple(14, 8)) == (56, 16, 56)


def test_product_merge_keeps_the_smallest_member_id_and_leaves_0_and_padding_alone():
    ids = torch.tensor([[0, 4, 4, 7], [-1, 4, 9, 7]])
    base = torch.eye(3, 8)  # three orthogonal unit features
    features = torch.stack([base[0], base[1], base[1], base[1], base[2], base[1], base[2], base[1]])
    features[4] = base[0]  # padding looks like the unsegmented patch: still never merged
    merged = corrclip.merge_regions(ids, features, PRODUCT)
    # 4 and 7 (same feature) merge into 4; 9 stays; 0 and -1 untouched
    assert merged.tolist() == [[0, 4, 4, 4], [-1, 4, 9, 4]]
    # the reference leaves the smallest id (-1) out and clusters the rest, 0 included, into 10000 + c
    reference = corrclip.merge_regions(ids, features, REFERENCE)
    assert reference[1, 0] == -1 and (reference[reference != -1] >= corrclip.REFERENCE_PAD).all()


def test_two_regions_or_fewer_are_never_merged():
    ids = torch.tensor([[0, 1], [1, 0]])
    features = torch.nn.functional.normalize(torch.ones(4, 3), dim=-1)
    assert torch.equal(corrclip.merge_regions(ids, features, PRODUCT), ids)
    assert torch.equal(corrclip.merge_regions(ids, features, REFERENCE), ids)


# -------------------------------------------------------------------------------------------- branches


@pytest.mark.parametrize("depth, expected", [(12, [5, 6, 7, 8, 9]), (24, list(range(10, 22))),
                                             (32, list(range(2, 30))), (6, [2, 3]), (5, [2]), (4, [2]), (2, [0])])
def test_spatial_blocks_per_depth(depth, expected):
    assert corrclip.spatial_block_indices(depth) == expected


def test_mask_class_tokens_see_the_class_token_and_their_region_only():
    regions = torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    mask = corrclip.mask_class_token_mask(regions)
    assert mask.shape == (6, 6)
    allowed = mask == 0
    assert allowed[2:, 2:].all() and not allowed[2:, :2].any()  # the originals never see the MCTs
    assert allowed[0].tolist() == [False, False, True, True, True, False]
    assert allowed[1].tolist() == [False, False, True, False, False, True]


def test_mask_class_tokens_leave_the_clip_tokens_unchanged():
    """The originals attend only to one another, so the main branch equals CLIP's own trunk."""
    clip = cm.build_clip()
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        x, grid = splice.clip_embed(clip.visual, pixels)
        regions = torch.zeros(3, grid[0] * grid[1], dtype=torch.bool)
        regions[0, :5], regions[1, 5:11], regions[2, 11:] = True, True, True
        main, spatial, semantic = corrclip.clip_branches(clip.visual, x, regions)
        trunk, _ = splice.clip_trunk(clip.visual, pixels)
    torch.testing.assert_close(main, trunk, atol=1e-5, rtol=1e-5)
    assert spatial.shape == main.shape and semantic.shape == (3, cm.CLIP_WIDTH)


# -------------------------------------------------------------------------------------------- windows


def test_centred_padding_is_the_references_compute_padsize():
    assert corrclip.centred_padding(40, 56, 56) == (0, 0, 8, 8)
    assert corrclip.centred_padding(41, 60, 56) == (26, 26, 7, 8)
    assert corrclip.centred_padding(112, 112, 56) == (0, 0, 0, 0)


def test_padding_is_zero_after_clips_normalisation_and_gets_the_pad_id():
    pixels, ids = torch.rand(1, 3, 40, 56), torch.ones(40, 56, dtype=torch.long)
    padded, padded_ids = corrclip.pad_window(pixels, ids, (0, 0, 8, 8), -1)
    normalised = splice.normalise(padded, splice.CLIP_MEAN, splice.CLIP_STD)
    assert padded.shape == (1, 3, 56, 56) and normalised[:, :, :8].abs().max() < 1e-6
    assert (padded_ids[:8] == -1).all() and (padded_ids[8:48] == 1).all()


@pytest.mark.parametrize("rules", [PRODUCT, REFERENCE], ids=["product", "reference"])
def test_slide_logits_cover_images_smaller_and_larger_than_the_window(rules, tiny_hub):
    clip, dino = tiny_hub.get("clip_b16"), tiny_hub.get("dino_b8")
    text = torch.nn.functional.normalize(torch.randn(4, clip.visual.proj.shape[1]), dim=-1)
    for size in [(40, 70), (120, 200)]:
        ids = torch.zeros(size, dtype=torch.long)
        ids[: size[0] // 2] = 3
        with torch.no_grad():
            logits = corrclip.slide_logits(clip.visual, dino, torch.rand(1, 3, *size), ids, text, 112, 56, rules,
                                           splice.resize_pos_embed)
        assert logits.shape == (4, *size) and logits.isfinite().all()


# -------------------------------------------------------------------------------------------- correction


def test_map_correction_takes_each_regions_majority_ties_to_the_smallest_label():
    labels = torch.tensor([[1, 1, 2, 3], [2, 0, 3, 3], [5, 4, 4, 5]])
    ids = torch.tensor([[7, 7, 7, 8], [7, 0, 8, 8], [9, 9, 9, 9]])
    corrected = corrclip.map_correction(labels, ids, skip=0)
    assert corrected.tolist() == [[1, 1, 1, 3], [1, 0, 3, 3], [4, 4, 4, 4]]  # region 9: 4 and 5 tie -> 4
    assert corrclip.map_correction(labels, ids, skip=None)[1, 1] == 0  # id 0 then is a region of its own


def test_map_correction_votes_like_torch_mode():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (30, 30), generator=generator)
    ids = torch.randint(1, 12, (30, 30), generator=generator)
    corrected = corrclip.map_correction(labels, ids, skip=None)
    for region in ids.unique():
        inside = ids == region
        assert (corrected[inside] == torch.mode(labels[inside])[0]).all()


# -------------------------------------------------------------------------------------------- regions


def test_paint_by_area_lets_larger_masks_cover_smaller_ones():
    small = np.zeros((4, 4), bool)
    small[0, 0] = True
    large = np.zeros((4, 4), bool)
    large[:2, :2] = True
    other = np.zeros((4, 4), bool)
    other[3, 3] = True
    ids = regions.paint_by_area([large, small, other], (4, 4))
    assert ids.dtype == np.int32
    assert ids[0, 0] == 3 and ids[1, 1] == 3 and ids[3, 3] in (1, 2) and ids[2, 2] == 0


def test_region_cache_makes_each_image_once_per_setting(monkeypatch):
    made = []

    def fake(hub, rgb, spec):
        made.append(spec.key)
        return np.full(rgb.shape[:2], len(made), np.int32), "torch"

    class Hub:
        def __init__(self):
            self.sam = torch.nn.Linear(1, 1)

        def get(self, name):
            return self.sam

    monkeypatch.setattr(regions, "make_region_ids", fake)
    cache, hub = regions.RegionCache(size=4), Hub()
    image = np.zeros((8, 8, 3), np.uint8)
    first = cache.get(hub, image, regions.RegionSpec("sam_b", 8))
    again = cache.get(hub, image.copy(), regions.RegionSpec("sam_b", 8))
    other = cache.get(hub, image, regions.RegionSpec("sam_b", 16))
    assert not first.cached and again.cached and again.seconds == 0.0 and np.array_equal(first.ids, again.ids)
    assert not other.cached and len(made) == 2 and cache.hits == 1
    hub.sam = torch.nn.Linear(1, 1)  # another model (a reload): its own masks
    assert not cache.get(hub, image, regions.RegionSpec("sam_b", 8)).cached and len(made) == 3


def test_region_spec_problems_name_the_field():
    bad = regions.RegionSpec("sam_x", points_per_side=0, pred_iou_thresh=1.5)
    problems = " ".join(bad.problems())
    assert "mask_generator" in problems and "points_per_side" in problems and "pred_iou_thresh" in problems
    assert regions.RegionSpec().problems() == []


def test_caller_region_ids_are_checked_against_the_image():
    assert regions.check_region_ids(np.zeros((3, 4), np.int64), (3, 4)).dtype == np.int32
    with pytest.raises(ValueError, match=r"regions has shape \(4, 3\), the image \(3, 4\)"):
        regions.check_region_ids(np.zeros((4, 3), np.int64), (3, 4))
    with pytest.raises(ValueError, match="regions must be an integer id map"):
        regions.check_region_ids(np.zeros((3, 4), np.float32), (3, 4))


def test_mask2former_ids_in_tiny_mode(tiny_hub):
    rgb = sample_image("chelsea")[:60, :90]
    ids, backend = regions.make_region_ids(tiny_hub, rgb, regions.RegionSpec("mask2former"))
    assert backend == "torch"
    assert ids.shape == rgb.shape[:2] and ids.dtype == np.int32 and ids.min() >= 0


def test_missing_mask2former_weights_name_the_command_and_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("VISION_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(weights.WeightsMissingError) as err:
        ModelHub(tiny=False, device="cpu").get("mask2former")
    message = str(err.value)
    assert "python -m vision weights download mask2former" in message
    assert str(tmp_path / "weights" / "mask2former" / "pytorch_model.bin") in message


def test_sam_t_region_masks_of_a_real_photo(sam_t_hub):
    """Real sam_t weights, 2 points per side: the cat photo gets regions, the largest most of the image."""
    rgb = sample_image("chelsea")
    ids, backend = regions.make_region_ids(sam_t_hub, rgb, regions.RegionSpec("sam_t", points_per_side=2))
    assert backend in ("torch", "onnx", "openvino")
    values, counts = np.unique(ids, return_counts=True)
    assert ids.shape == rgb.shape[:2] and (values > 0).sum() >= 1
    assert counts[values > 0].max() > 0.3 * ids.size


# -------------------------------------------------------------------------------------------- image level


def test_corrclip_reference_class_strings():
    """CorrCLIP's configs/cls_*.txt: "people" for "person" everywhere, COCO-Object's 16 background words
    (no "bed"); otherwise Trident's reference strings (run-together multi-word names included)."""
    from vision.classnames import CORRCLIP_REFERENCE_CLASS_LISTS, REFERENCE_CLASS_LISTS

    for preset, classes in CORRCLIP_REFERENCE_CLASS_LISTS.items():
        trident = REFERENCE_CLASS_LISTS[preset]
        changed = [(a, b) for a, b in zip(trident.names, classes.names, strict=True) if a != b]
        assert ("person", "people") in changed and classes.display == trident.display
        assert len(changed) == (2 if preset == "coco_object" else 1)
    background = CORRCLIP_REFERENCE_CLASS_LISTS["coco_object"].names[0].split("|")
    assert len(background) == 16 and "bed" not in background and background[:3] == ["sky", "wall", "tree"]
    assert "trafficlight" in CORRCLIP_REFERENCE_CLASS_LISTS["cityscapes"].names


@pytest.mark.parametrize("shape", [(37, 250), (300, 451)])
def test_image_logits_have_the_images_size(tiny_hub, shape):
    clip, dino = tiny_hub.get("clip_b16"), tiny_hub.get("dino_b8")
    rgb = sample_image("chelsea")[: shape[0], : shape[1]]
    ids = np.zeros(shape, np.int32)
    ids[:, : shape[1] // 3] = 2
    text = torch.nn.functional.normalize(torch.randn(3, clip.visual.proj.shape[1]), dim=-1)
    calls = []
    with torch.no_grad():
        logits = corrclip.image_logits(clip.visual, dino, rgb, ids, text, 336, 2048, 336, 112, PRODUCT,
                                       splice.resize_pos_embed, on_window=lambda i, n, out: calls.append((i, n)))
    assert logits.shape == (3, *shape) and logits.isfinite().all()
    assert calls[-1][0] == calls[-1][1] - 1 >= 1  # every window reported, several for a wide image
