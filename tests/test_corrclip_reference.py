"""CorrCLIP's reference mode equals the reference code stage by stage (zdk258/CorrCLIP @ 103bc18,
``CorrCLIPv1/``) on identical inputs: the small seeded models and the two cases of
``corrclip_models.py``, whose reference outputs are ``fixtures/corrclip/*.npz`` (see its README for
how they were made). Values to float precision (fp32 on both sides), ids and labels exactly."""

from pathlib import Path

import corrclip_models as cm
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vision.engines.trident import corrclip, splice
from vision.engines.trident.classes import parse_classes
from vision.engines.trident.engine import TridentEngine
from vision.hub import ModelHub

FIXTURES = Path(__file__).parent / "fixtures" / "corrclip"
RULES = corrclip.REFERENCE_RULES
RESIZE_POS = splice.resize_pos_embed_by_scale  # the reference's pos-embedding rule (C4)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return cm.build_clip(), cm.build_dino()


@pytest.fixture(scope="module", params=list(cm.CASES))
def run(request, models):
    """Our reference-mode pipeline on one case: the fixture, the windows' stages and the outputs."""
    case = cm.CASES[request.param]
    ref = dict(np.load(FIXTURES / f"{case.name}.npz"))
    clip, dino = models
    pixels = torch.from_numpy(cm.case_resized(case)).permute(2, 0, 1)[None].float() / 255.0
    ids = torch.from_numpy(cm.case_ids(case)).long()
    windows = []
    with torch.no_grad():
        slide = corrclip.slide_logits(clip.visual, dino, pixels, corrclip.region_masks_at(ids, case.size),
                                      torch.from_numpy(ref["text"]), cm.WINDOW, cm.STRIDE, RULES, RESIZE_POS,
                                      on_window=lambda index, count, out: windows.append(out))
    logits = F.interpolate(slide[None], size=case.original, mode="bilinear", align_corners=False)[0]
    classes = parse_classes(cm.CLASS_NAMES, background=0)
    probs, _, labels = corrclip.classify(logits, classes, cm.LOGIT_SCALE, case.prob_thd, ids, RULES)
    return {"case": case, "ref": ref, "windows": windows, "logits": logits, "probs": probs, "labels": labels,
            "pixels": pixels, "ids": ids}


def close(ours: torch.Tensor, theirs: np.ndarray, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    np.testing.assert_allclose(ours.detach().float().numpy(), theirs, atol=atol, rtol=rtol)


def test_text_embeddings(models):
    """corrclip_segmentor.py ``CorrCLIPSegmentation.generate_category_embeddings``: each name through the
    80 ImageNet templates, normalised, averaged, normalised (Trident's ``text_embeddings``)."""
    hub = ModelHub(tiny=True, device="cpu")
    hub.put("clip_b16", models[0])
    ref = np.load(FIXTURES / "regions.npz")["text"]
    queries = [name for names in cm.CLASS_NAMES for name in names]
    close(TridentEngine(hub=hub).text_embeddings(queries), ref, atol=2e-6)  # the "open" preset: clip_b16


def test_dino_value_features(run):
    """corrclip_segmentor.py ``forward_feature``: q + k of DINO's last block (its ``qkv`` hook), class token
    dropped, L2-normalised. (Ours normalises the 0..1 window for DINO, the reference un-normalises
    CLIP's input first: equal to float rounding.)"""
    close(run["windows"][0].dino_features, run["ref"]["dino_feats"])


def test_dino_value_features_of_the_models_forward(models):
    """The same features read from the model's own forward with hooks on the last block's query and key."""
    _, dino = models
    pixels = torch.rand(1, 3, 56, 56)
    captured = {}
    attention = dino.encoder.layer[-1].attention.attention
    hooks = [getattr(attention, name).register_forward_hook(
        lambda module, args, out, name=name: captured.__setitem__(name, out)) for name in ("query", "key")]
    with torch.no_grad():
        dino(pixel_values=pixels, interpolate_pos_encoding=True)
        ours, grid = corrclip.dino_correlation_features(dino, pixels)
    for hook in hooks:
        hook.remove()
    assert grid == (7, 7)
    expected = F.normalize(captured["query"] + captured["key"], dim=-1)[:, 1:]
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


def test_mask_merging(run):
    """open_clip/transformer.py ``VisionTransformer.forward``, "Mask Merging": DBSCAN (eps 0.2, one sample)
    of the regions' mean DINO features, merged ids 10000 + cluster; the smallest id is left out."""
    assert np.array_equal(run["windows"][0].merged_ids.numpy(), run["ref"]["merged_ids"])


def test_mask_merging_from_the_references_features(run):
    """The same merge computed from the reference's own DINO features (the stage on its own)."""
    case, ref = run["case"], run["ref"]
    window_ids = corrclip.region_masks_at(run["ids"], case.size)[:cm.WINDOW, :cm.WINDOW]
    if window_ids.shape[0] < cm.WINDOW:  # the padded case: the reference pads ids with 10000
        pad = corrclip.centred_padding(*window_ids.shape, corrclip.REFERENCE_PAD_MULTIPLE)
        window_ids = F.pad(window_ids, pad, value=corrclip.REFERENCE_PAD)
    merged = corrclip.merge_regions(corrclip.resize_ids(window_ids, (7, 7)), torch.from_numpy(ref["dino_feats"]),
                                    RULES)
    assert np.array_equal(merged.numpy(), ref["merged_ids"])


def test_reconstructed_attention(run):
    """open_clip/transformer.py ``VisionTransformer.forward``, "Value Reconstruction" + "Scope
    Reconstruction": softmax(4 S) over same-region pairs and, for the smallest id, pairs above S's mean."""
    close(run["windows"][0].attention, run["ref"]["attention"])
    ref = run["ref"]
    ids = torch.from_numpy(ref["merged_ids"]).long().reshape(-1)
    alone = corrclip.reconstructed_attention(torch.from_numpy(ref["dino_feats"]), ids, RULES.unsegmented(ids))
    close(alone, ref["attention"], atol=1e-6)


def test_three_branch_features(run):
    """open_clip/transformer.py ``VisionTransformer.forward``'s output: main (A V) + 1.0 spatial (A V of the
    mean of blocks 5..9) + 0.5 semantic (mask class tokens), each LN_post-ed, projected."""
    close(run["windows"][0].features, run["ref"]["features"], atol=5e-5)


def test_sliding_window_logits(run):
    """corrclip_segmentor.py ``forward_slide``: per-window logits upsampled, overlaps averaged, the map
    resized (bilinear) to the original image; padded windows cropped back."""
    close(run["logits"], run["ref"]["slide_logits"], atol=1e-5)


def test_probabilities_and_labels(run):
    """corrclip_segmentor.py ``postprocess_result``: softmax at 40, background names merged by max,
    ``prob_thd``, argmax, then map correction (each region's most frequent label; the smallest id skipped)."""
    close(run["probs"], run["ref"]["probs"], atol=1e-5)
    assert np.array_equal(run["labels"].numpy(), run["ref"]["labels"].astype(np.int64))


def test_the_cases_exercise_merging_and_the_reference_quirks(run):
    """The fixtures cover what reference mode must reproduce: in ``regions`` window 0, regions 1 and 2
    (one colour) merge into one cluster and so do 3 and 4, the strip of id 0 stays unsegmented; in
    ``covered_padded`` (C1, C2 of corrclip.py) no id 0 is present, so the smallest region (3) is taken as
    unsegmented, and the padding rows (id 10000) took part in the clustering (relabelled 10000 + c)."""
    merged = run["ref"]["merged_ids"]
    if run["case"].name == "regions":
        assert (merged[:, :2] == 0).all()
        assert len(np.unique(merged[:4, 2:])) == 1 and len(np.unique(merged[4:, 2:])) == 1
        assert merged[0, 2] != merged[-1, 2] and merged[0, 2] >= corrclip.REFERENCE_PAD
    else:
        assert merged[0, 0] > corrclip.REFERENCE_PAD and (merged[0] == merged[0, 0]).all()
        assert (merged[-1] == merged[0, 0]).all() and merged.min() == 3
    assert len(run["windows"]) == 3
