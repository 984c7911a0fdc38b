"""Trident's reference mode (``TridentConfig.reference``) against hand-computed values and the reference's
own formulas: input sizes, positional embeddings, SAM's input, the dense mask prompt, the boxes, the
Cityscapes passes, the benchmark class strings, and the benchmark lists running end to end."""

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_trident_ops import FakeSamPredictor

from vision.classnames import CLASS_LISTS, REFERENCE_CLASS_LISTS
from vision.engines.trident import PRESETS, TridentConfig, TridentEngine, parse_classes, refine, splice
from vision.engines.trident.classes import class_probabilities
from vision.engines.trident.config import presets_of
from vision.engines.trident.modes import OPEN, REFERENCE, mode_for
from vision.imaging import sample_image

BENCHMARKS = [name for name in presets_of("trident") if name != "open"]


@pytest.fixture(scope="module")
def engine(tiny_hub):
    return TridentEngine(hub=tiny_hub)


def test_reference_is_on_in_every_benchmark_preset_and_off_in_open():
    assert all(PRESETS[name].reference for name in BENCHMARKS)
    assert PRESETS["open"].reference is False
    assert mode_for(PRESETS["voc21"]) is REFERENCE and mode_for(PRESETS["open"]) is OPEN
    assert mode_for(PRESETS["voc21"].replace(reference=False)) is OPEN


def test_sam_t_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"Trident needs a ViT SAM encoder \(sam_b or sam_h\).*TinyViT"):
        TridentConfig(sam="sam_t").validate()
    with pytest.raises(ValueError, match=r"Trident needs a ViT SAM encoder"):
        TridentConfig.from_preset("voc21", sam="sam_l").validate()


# ------------------------------------------------------------------------------------- R1: input size

# (height, width) of the original image -> the CLIP input size by the reference's rule, worked by hand:
# keep-ratio size (short side S, long side <= 2048, int(side * scale + 0.5)); unless both sides are
# multiples of 16, long side L -> L' (next multiple), short side int(short * L' / L) rounded up to a
# multiple; each side >= 336. E.g. 500x375 at S=448: 597x448 -> L' = 608, int(448 * 608 / 597) = 456 -> 464.
SIZES = [(375, 500), (500, 375), (333, 500), (500, 500), (281, 500), (480, 640), (427, 640), (512, 683),
         (1024, 2048), (448, 608), (100, 1000), (366, 500)]
REFERENCE_SIZES = {
    # S=448: 333x500 -> 448x673 -> L'=688, int(448*688/673)=457 -> 464; 427x640 -> 448x671 -> L'=672,
    # int(448*672/671)=448 (a multiple already); 100x1000 -> scale 2.048 (long-side cap) -> 205x2048 -> 208 -> 336.
    448: [(464, 608), (608, 464), (464, 688), (448, 448), (464, 800), (464, 608), (448, 672), (464, 608),
          (448, 896), (448, 608), (336, 2048), (464, 624)],
    # S=576: 375x500 -> 576x768, both multiples: unchanged; 448x608 -> 576x782 -> L'=784, int(576*784/782)=577 -> 592.
    576: [(576, 768), (768, 576), (592, 880), (576, 576), (592, 1040), (576, 768), (576, 864), (576, 768),
          (576, 1152), (592, 784), (336, 2048), (592, 800)],
    # S=336: 333x500 -> 336x505 -> L'=512, int(336*512/505)=340 -> 352; 448x608 -> 336x456 -> L'=464, 341 -> 352.
    336: [(336, 448), (448, 336), (352, 512), (336, 336), (352, 608), (336, 448), (352, 512), (336, 448),
          (336, 672), (352, 464), (336, 2048), (352, 464)],
    # S=688: 375x500 -> 688x917 -> L'=928, int(688*928/917)=696 -> 704; Cityscapes 1024x2048 -> 688x1376 unchanged.
    688: [(704, 928), (928, 704), (704, 1040), (688, 688), (704, 1232), (704, 928), (704, 1040), (704, 928),
          (688, 1376), (704, 944), (336, 2048), (704, 944)],
}
# The open rule (each side rounded up on its own) at the open preset's S=448.
OPEN_SIZES = [(448, 608), (608, 448), (448, 688), (448, 448), (448, 800), (448, 608), (448, 672), (448, 608),
              (448, 896), (448, 608), (336, 2048), (448, 624)]


@pytest.mark.parametrize("preset", presets_of("trident"))
def test_clip_input_size_rule_table(preset):
    cfg = PRESETS[preset]
    expected = OPEN_SIZES if preset == "open" else REFERENCE_SIZES[cfg.short_side]
    mode = mode_for(cfg)
    got = [mode.clip_input_shape(h, w, cfg.short_side, cfg.max_long_side, 16, cfg.window) for h, w in SIZES]
    assert got == expected



def test_reference_rounding_other_patch_and_window_minimum():
    assert splice.round_like_reference(448, 597, 14, 336) == (462, 602)  # H/14: L'=602, int(448*602/597)=451 -> 462
    assert splice.round_like_reference(448, 602, 14, 336) == (448, 602)  # multiples of 14: unchanged
    # Both sides multiples but one under the window: the reference would keep 256 (and pad its windows);
    # we raise it to 336 (the documented exception).
    assert splice.round_like_reference(256, 2048, 16, 336) == (336, 2048)


def test_reference_clip_pixels_resize_twice():
    import cv2

    rgb = np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)
    got = REFERENCE.clip_pixels(rgb, 448, 2048, 16, 336, torch.device("cpu"))
    keep_ratio = torch.from_numpy(cv2.resize(rgb, (597, 448), interpolation=cv2.INTER_LINEAR)).permute(2, 0, 1)
    want = F.interpolate(keep_ratio[None].float() / 255, size=(464, 608), mode="bilinear", align_corners=False)
    assert got.shape == (1, 3, 464, 608) and torch.allclose(got, want, atol=1e-6)
    assert OPEN.clip_pixels(rgb, 448, 2048, 16, 336, torch.device("cpu")).shape == (1, 3, 448, 608)
    square = np.zeros((500, 500, 3), np.uint8)  # 448x448 after the keep-ratio resize: no second resize
    assert REFERENCE.clip_pixels(square, 448, 2048, 16, 336, torch.device("cpu")).shape == (1, 3, 448, 448)


# ----------------------------------------------------------------------------- R2: positional embeddings


def test_positional_embedding_by_scale_factor():
    pos = torch.randn(1 + 14 * 14, 8)
    got = splice.resize_pos_embed_by_scale(pos, (21, 21))
    grid = pos[1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    want = F.interpolate(grid, scale_factor=(21.1 / 14, 21.1 / 14), mode="bicubic", align_corners=False)
    assert got.shape == (1 + 441, 8) and torch.equal(got[0], pos[0])
    assert torch.allclose(got[1:], want.permute(0, 2, 3, 1).reshape(441, 8), atol=1e-6)
    by_size = splice.resize_pos_embed(pos, (21, 21))
    assert (got[1:] - by_size[1:]).abs().max() > 1e-3  # the two conventions sample other positions
    assert splice.resize_pos_embed_by_scale(pos, (14, 14)) is pos


@pytest.mark.parametrize("name", ["dino_b16", "dinov2_b14"])
def test_vfm_tokens_equal_the_models_forward(tiny_hub, name):
    vfm = tiny_hub.get(name)
    pixels = torch.randn(2, 3, 336, 336)
    with torch.no_grad():
        ours = splice.vfm_tokens(vfm, pixels)
        theirs = vfm(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 1:]
        by_scale = splice.vfm_tokens(vfm, pixels, splice.resize_pos_embed_by_scale)
    assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5)
    assert by_scale.shape == ours.shape and not torch.allclose(by_scale, ours, atol=1e-5)


# ------------------------------------------------------------------------------------------ R3: SAM input


def test_sam_image_is_rounded_to_the_patch_in_reference_mode():
    rgb = np.zeros((375, 500, 3), np.uint8)
    assert REFERENCE.sam_image(rgb, 16).shape == (384, 512, 3)
    assert REFERENCE.sam_image(np.zeros((333, 500, 3), np.uint8), 14).shape == (336, 504, 3)
    exact = np.zeros((1024, 2048, 3), np.uint8)
    assert REFERENCE.sam_image(exact, 16) is exact and OPEN.sam_image(rgb, 16) is rgb


# ---------------------------------------------------------------------------------- R4: dense mask prompt


def test_reference_mask_prompt_is_3d_from_half_resolution():
    # A 375x500 image: its long side 256 gives 192x256 (the half-resolution map's own shape would give 191).
    prob = torch.zeros(375, 500)
    prob[:, :250] = 0.5
    half = torch.full((187, 250), 0.5)
    half[:, 125:] = 0.1
    ref = REFERENCE.prompts.mask_input(prob, half, 0.2, 0.005, n=3)
    assert ref.shape == (1, 256, 256)
    assert (ref[0, :192, :128] > 0).all() and (ref[0, 192:] == 0).all()  # 192 image rows, zero padding below
    assert torch.isclose(ref[0, 100, 10], torch.tensor(0.0025)) and (ref[0, :, 130:] == 0).all()  # 0.1 < 0.2
    opened = OPEN.prompts.mask_input(prob, half, 0.2, 0.005, n=3)
    assert opened.shape == (3, 1, 256, 256) and (opened[:, :, :192, :127] > 0).all()
    assert (opened[:, :, 192:] == 0).all() and (opened[:, :, :, 129:] == 0).all()


def test_3d_mask_prompt_normalises_over_rows_in_sams_mask_encoder(tiny_hub):
    # The consequence of the missing batch dimension: LayerNorm2d normalises over dim 1, which is the
    # rows of an unbatched [C, H, W] map instead of the channels of a [B, C, H, W] one.
    encoder = tiny_hub.get("sam_b").prompt_encoder
    prompt = 0.005 * torch.rand(1, 256, 256)
    with torch.no_grad():
        unbatched = encoder._embed_masks(prompt)
        batched = encoder._embed_masks(prompt[None])[0]
        x = prompt[None]
        for layer in encoder.mask_downscaling:
            if type(layer).__name__ == "LayerNorm2d":  # normalise over the rows (dim 2 of the batched map)
                u = x.mean(2, keepdim=True)
                x = (x - u) / ((x - u).pow(2).mean(2, keepdim=True) + layer.eps).sqrt()
                x = layer.weight[:, None, None] * x + layer.bias[:, None, None]
            else:
                x = layer(x)
    assert unbatched.shape == batched.shape == (encoder.embed_dim, 64, 64)
    assert torch.allclose(unbatched, x[0], atol=1e-5)
    assert not torch.allclose(unbatched, batched, atol=1e-3)


# ------------------------------------------------------------------------------- R5: boxes and the frame


class RecordingPredictor(FakeSamPredictor):
    """A SamPredictor stand-in that records the prompts it gets and answers every prompt with one mask
    (logits at ``original_size``, which may differ from the refined map's size) and IoU 0.95."""

    def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True,
                      return_logits=False):
        self.calls.append({"points": point_coords, "boxes": boxes, "mask_input": mask_input})
        h, w = self.original_size
        logits = torch.full((len(boxes), 1, h, w), -8.0)
        logits[:, :, h // 10:h // 2, w // 5:3 * w // 5] = 8.0
        return logits, torch.full((len(boxes), 1), 0.95), None


def square_maps():
    """100x100, class 1 on rows 10..49 x columns 20..59 (at half resolution rows 5..24 x columns 10..29,
    400 px) with its highest probability on the 2x2 block at rows 30-31, columns 40-41 (half: row 15,
    column 20); background elsewhere."""
    probs = torch.zeros(2, 100, 100)
    probs[0] = 0.9
    probs[1] = 0.1
    probs[:, 10:50, 20:60] = torch.tensor([0.2, 0.8])[:, None, None]
    probs[1, 30:32, 40:42] = 0.85
    return probs, probs.argmax(0)


def test_reference_prompts_are_inclusive_boxes_in_the_half_resolution_frame():
    probs, coarse = square_maps()
    stub = RecordingPredictor((112, 112))  # SAM holds the rounded image, larger than the 100x100 map
    labels, stats = refine.sam_refine(stub, probs, coarse, 0.2, 225, 0.005, 0.8, REFERENCE.prompts)
    call = stub.calls[1]  # class 1 (class 0, the frame around the square, comes first)
    s = 1024 / 50  # half-resolution 50x50 frame -> SAM's 1024 frame
    assert torch.allclose(call["points"][0, 0], torch.tensor([20 * s, 15 * s]))
    assert torch.allclose(call["boxes"][0], torch.tensor([10 * s, 5 * s, 29 * s, 24 * s]))  # inclusive
    assert call["mask_input"].shape == (1, 256, 256)
    assert labels.shape == (100, 100) and stats.kept == 2  # masks resized from 112x112 to the map
    assert (labels[10:50, 20:60] == 1).all() and (labels[60:, :] == 0).all()


def test_open_prompts_are_exclusive_boxes_in_the_full_resolution_frame():
    probs, coarse = square_maps()
    stub = RecordingPredictor((100, 100))
    refine.sam_refine(stub, probs, coarse, 0.2, 225, 0.005, 0.8, OPEN.prompts)
    call = stub.calls[1]
    s = 1024 / 100
    assert torch.allclose(call["points"][0, 0], torch.tensor([40 * s, 30 * s]))
    assert torch.allclose(call["boxes"][0], torch.tensor([20 * s, 10 * s, 60 * s, 50 * s]))  # exclusive x2, y2
    assert call["mask_input"].shape == (1, 1, 256, 256)


# ---------------------------------------------------------------------------------------- R6: Cityscapes


def test_cityscapes_views_split_at_the_middle_token_and_join_before_upsampling():
    spliced = torch.randn(4, 3, 7)
    left = REFERENCE.view_features(spliced, 0, 2, (0, 50), 100, (5, 4))
    right = REFERENCE.view_features(spliced, 1, 2, (50, 100), 100, (5, 4))
    assert torch.allclose(left, F.interpolate(spliced[None, :, :, :3], size=(5, 4), mode="bilinear")[0])
    assert torch.allclose(right, F.interpolate(spliced[None, :, :, 3:], size=(5, 4), mode="bilinear")[0])
    halves = [torch.randn(2, 3, 3), torch.randn(2, 3, 3)]
    joined = REFERENCE.join_logits(halves, [(0, 50), (50, 100)], 100, (30, 60))
    want = F.interpolate(torch.cat(halves, dim=2)[None], size=(30, 60), mode="bilinear")[0]
    assert torch.allclose(joined, want)
    separate = OPEN.join_logits(halves, [(0, 50), (50, 100)], 100, (30, 60))
    assert torch.allclose(separate[:, :, :30], F.interpolate(halves[0][None], size=(30, 30), mode="bilinear")[0])
    assert not torch.allclose(separate, joined)


def test_cityscapes_reference_runs_a_third_sam_pass_for_refinement(engine, tiny_hub):
    calls = []
    handle = tiny_hub.get("sam_b").image_encoder.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        image = np.asarray(Image.fromarray(sample_image("astronaut")).resize((256, 128)))
        result = TridentEngine(PRESETS["cityscapes"], engine.hub)(image, None)
    finally:
        handle.remove()
    assert len(calls) == 3 and result.info["sam_passes"] == 3  # two halves, then the whole image
    assert result.labels.shape == (128, 256) and result.labels.max() < 19


# ------------------------------------------------------------------------------ R7: class strings, lists

# sha256 of the reference's configs/cls_<name>.txt (YuHengsss/Trident a93b346; cls_city_scapes.txt for
# cityscapes), lines stripped and joined by "\n" (Context-60's last line is "wood " there: CLIP's
# tokenizer gives it the same tokens as "wood").
REFERENCE_FILE_SHA256 = {
    "voc21": "6a194e9134d44459bf8b86ba89a9cf06242848051e04d130011c017bca3e3c05",
    "voc20": "6b9a85ffb907e34ac920d704a520b45e1424bf96796ca7de5b1823ee202db119",
    "context60": "e29ff1a0eaea71eb3e090f0ff6abdbcc592fa17f74b4a17ecc6d33c5a9daea4e",
    "context59": "cd808465f06a16169edc25580073f0eda347e64f06cc1c2e24acd0b237f6497d",
    "coco_object": "87b6d3e1d3adf5202f4fe5a2a939cfc62224065f3a8e44a8f64fe1a81b751dc6",
    "coco_stuff": "fb98709b9ab1baff4fd930bac4a77772a0458c7d534911de545f9a4081e14a3e",
    "cityscapes": "6f6782fc1bf92bfd9f5562192e92045e0e093870e613f387f6c98fc66d4ceba4",
    "ade20k": "e53ded02c488bdb903ef000a2d207e4ac4f2bb4502a72572e4aab7c2504aef3a",
}


def test_reference_class_strings():
    assert {"trafficlight", "firehydrant", "stopsign", "hotdog", "teddybear"} <= set(
        REFERENCE_CLASS_LISTS["coco_stuff"].names)
    assert {"chestofdrawers", "pooltable", "swimmingpool", "crtscreen"} <= set(REFERENCE_CLASS_LISTS["ade20k"].names)
    assert {"trafficlight", "trafficsign"} <= set(REFERENCE_CLASS_LISTS["cityscapes"].names)
    for name in ("coco_stuff", "cityscapes", "ade20k"):
        assert not any(" " in n for n in REFERENCE_CLASS_LISTS[name].names)
        assert REFERENCE_CLASS_LISTS[name].display == CLASS_LISTS[name].display  # tables stay readable
    # The reference's COCO-Object file spells these with spaces (unlike its COCO-Stuff file).
    assert {"traffic light", "fire hydrant", "stop sign", "hot dog", "teddy bear"} <= set(
        REFERENCE_CLASS_LISTS["coco_object"].names)
    for name, classes in REFERENCE_CLASS_LISTS.items():
        # The reference's files separate synonyms with "; " (ours: "|", the project's one class syntax).
        text = "\n".join(n.strip().replace("|", "; ") for n in classes.names)
        assert hashlib.sha256(text.encode()).hexdigest() == REFERENCE_FILE_SHA256[name], name
    assert OPEN.class_list("cityscapes").names[6] == "traffic light"
    assert REFERENCE.class_list("cityscapes").names[6] == "trafficlight"


def test_benchmark_lists_keep_their_repeats_and_user_lists_do_not():
    coco = parse_classes(CLASS_LISTS["coco_object"])
    assert "bed" in coco.names[0] and coco.names[60] == ("bed",)
    assert len(coco.queries) == 97 and len(coco.unique_queries) == 96
    assert coco.query_index[11] == coco.query_index[17 + 59]  # both "bed"s: one text embedding
    with pytest.raises(ValueError, match=r"duplicate class name 'bed' \(classes 0 and 60\)"):
        parse_classes(list(CLASS_LISTS["coco_object"].names))  # the same strings as a user's list
    with pytest.raises(ValueError, match="duplicate class name"):
        parse_classes(["bed", "sky|bed"])


def reference_postprocess(query_logits, num_classes, logit_scale=40.0):
    """The reference's ``postprocess_result``: softmax over all queries; when there are more queries than
    classes, class 0 is the max over the first ``Q - K + 1`` queries and the others are the last K - 1."""
    p = (query_logits * logit_scale).softmax(0)
    if p.shape[0] != num_classes:
        p = torch.cat([p[:-num_classes + 1].max(0)[0][None], p[-num_classes + 1:]])
    return p


@pytest.mark.parametrize("name", BENCHMARKS)
def test_class_probabilities_equal_the_references_merge_on_benchmark_lists(name):
    classes = parse_classes(REFERENCE_CLASS_LISTS[name])
    torch.manual_seed(0)
    logits = torch.randn(len(classes.unique_queries), 6, 5) * 0.2
    ours = class_probabilities(logits, classes, 40.0)
    theirs = reference_postprocess(logits[classes.query_index], len(classes.names))
    assert torch.equal(ours, theirs)


def test_coco_objects_repeated_bed_ties_with_background_and_loses():
    classes = parse_classes(CLASS_LISTS["coco_object"])
    logits = torch.zeros(len(classes.unique_queries), 2, 2)
    logits[classes.unique_queries.index("bed")] = 1.0  # "bed" is the best name everywhere
    probs = class_probabilities(logits, classes, 40.0)
    assert torch.equal(probs[0], probs[60])  # an exact tie
    assert (probs.argmax(0) == 0).all() and (probs.max(0).indices == 0).all()  # the first class wins


# ------------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("preset", BENCHMARKS)
def test_every_benchmark_preset_runs_with_its_own_class_list(engine, preset):
    size = (128, 64) if preset == "cityscapes" else (64, 48)
    image = np.asarray(Image.fromarray(sample_image("astronaut")).resize(size))
    result = TridentEngine(PRESETS[preset], engine.hub)(image, None)
    k = len(CLASS_LISTS[preset].names)
    assert result.labels.shape == image.shape[:2] and 0 <= result.labels.min() and result.labels.max() < k
    assert result.probs.shape == (k, *image.shape[:2])
    assert result.class_names == CLASS_LISTS[preset].display
    assert result.classes.names == parse_classes(REFERENCE_CLASS_LISTS[preset]).names
    record = result.to_record()
    assert record["reference"] is True and record["mode"] == "reference" and record["config"]["reference"]
    if preset == "coco_object":
        assert (result.coarse != 60).all()  # the repeated "bed" never wins
