"""IPSeg's presence (#20.4): calibrated to 0..1 for SAM features with sam_t, raw elsewhere, and each result
says which. The real-weight tests run the engine on the held-out seeds of the synthetic distractor set
(:mod:`vision.evaluation.presence_eval`): each object's prompt against 8 targets, 2 holding it (the fit used
3 per object; 2 keep this test's 24 SAM encodings short)."""

import json

import numpy as np
import pytest
import torch
from scipy.special import expit

from vision.engines.ipseg import IPSegConfig, IPSegEngine, Prompt
from vision.engines.ipseg.presence import Calibration, exemplars, margin_map
from vision.evaluation import presence_eval as P
from vision.imaging import sample_image


# ------------------------------------------------------------------------------------ the pieces, no weights
def test_margin_is_the_nearest_inside_cell_minus_the_nearest_outside_cell():
    e = torch.eye(4)
    prompt = torch.stack([e[0], e[0], e[1], e[2]], dim=1).reshape(4, 2, 2)  # cells: concept x2, two others
    shots = exemplars(prompt * 3.0, np.array([[True, True], [False, False]]))  # the scale does not matter
    target = torch.stack([e[0], e[1], (e[0] + e[3]) / 2 ** 0.5, e[3]], dim=1).reshape(4, 2, 2)
    np.testing.assert_allclose(margin_map([shots], target), [[1.0, -1.0], [0.5 ** 0.5, 0.0]], atol=1e-3)
    assert exemplars(prompt, np.ones((2, 2), bool)) is None  # no outside cell: nothing to compare with


def test_fit_recovers_a_known_logistic_and_weights_the_classes_equally():
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.2, 0.8, 4000)  # symmetric around the centre 0.3: present and absent equally likely
    y = rng.random(4000) < expit((x - 0.3) / 0.1)
    fit = P.fit_logistic(x, y, penalty=0.0)
    assert fit.centre == pytest.approx(0.3, abs=0.01) and fit.width == pytest.approx(0.1, rel=0.1)
    assert Calibration(0.3, 0.1)(0.3) == 0.5 and Calibration(0.3, 0.1)(0.4) == pytest.approx(expit(1.0))
    few = P.fit_logistic(np.r_[x[~y][:100], x[y]], np.r_[y[~y][:100], y[y]], penalty=0.0)
    assert few.centre == pytest.approx(0.3, abs=0.03)  # 100 absent vs ~2000 present: the boundary stays
    with pytest.raises(ValueError, match="present and absent"):
        P.fit_logistic([0.1, 0.2], [True, True])


def test_auroc_and_balanced_accuracy():
    assert P.auroc([0.1, 0.2, 0.9, 0.8], [False, False, True, True]) == 1.0
    assert P.auroc([0.9, 0.1], [False, True]) == 0.0
    assert P.auroc([0.5, 0.5, 0.5], [True, False, False]) == 0.5  # ties count half
    assert P.balanced_accuracy([0.6, 0.4, 0.7, 0.1], [True, True, False, False], 0.5) == 0.5


def test_the_record_says_which_presence_it_reports(tiny_hub):
    """Calibrated only for IPSeg in product mode with a fitted source (SAM features, sam_t); the DINOv2
    source, reference mode and GF-SAM keep the raw score (random tiny weights: the values are noise)."""
    cat, cup = sample_image("chelsea"), sample_image("coffee")
    mask = np.zeros(cat.shape[:2], bool)
    mask[60:240, 120:330] = True
    sam_t = {"features": "sam", "sam_model": "sam_t", "sam_backend": "torch"}
    cases = {"calibrated": IPSegConfig(**sam_t),
             "raw": [IPSegConfig.from_preset("fast", sam_backend="torch"), IPSegConfig(**sam_t, reference=True),
                     IPSegConfig.from_preset("gfsam_fast", max_points=2, sam_backend="torch")]}
    record = json.loads(json.dumps(IPSegEngine(cases["calibrated"], hub=tiny_hub)(Prompt(cat, mask=mask), cup)
                                   .to_record()))
    concept = record["concepts"][0]
    assert record["presence_kind"] == concept["presence_kind"] == "calibrated" and 0 <= concept["presence"] <= 1
    assert np.isfinite(concept["raw_presence"]) and concept["raw_presence"] != concept["presence"]
    for config in cases["raw"]:
        concept = IPSegEngine(config, hub=tiny_hub)(Prompt(cat, mask=mask), cup).to_record()["concepts"][0]
        assert concept["presence_kind"] == "raw" and "raw_presence" not in concept, config.preset


def test_a_prompt_region_covering_the_whole_image_reports_the_raw_score(tiny_hub):
    cat = sample_image("chelsea")
    result = IPSegEngine(IPSegConfig(features="sam", sam_model="sam_t", sam_backend="torch"), hub=tiny_hub)(
        Prompt(cat, box=(0, 0, cat.shape[1], cat.shape[0])), cat)
    assert result.concepts[0].presence_kind == "raw"
    assert any("presence is the raw score" in note for note in result.notes)


# ----------------------------------------------------------------------------------- real sam_t weights
@pytest.fixture(scope="module")
def held_out(sam_t_hub):
    """Every (prompt, target) pair of the held-out seeds through the engine at the README's threshold 0.5
    (one batch per seed: each image encoded once)."""
    engine = IPSegEngine(P.presence_config("sam_t"), hub=sam_t_hub)
    return [pair for seed in P.HELD_OUT_SEEDS for pair in P.engine_pairs(engine, P.distractor_set(seed, 2))]


def _truth(pairs):
    return [p.present for p in pairs]


def test_calibrated_presence_separates_held_out_images(held_out):
    """sam_t's calibrated presence: AUROC >= 0.9 on held-out seeds, and 0.5 (the README's threshold)
    answers most pairs right: present pairs get a mask, distractors none."""
    assert len(held_out) == 64 and sum(_truth(held_out)) == 16
    assert {p.kind for p in held_out} == {"calibrated"} and all(0 <= p.presence <= 1 for p in held_out)
    scores = [p.presence for p in held_out]
    assert P.auroc(scores, _truth(held_out)) >= 0.9
    assert P.balanced_accuracy(scores, _truth(held_out), 0.5) >= 0.8
    for p in held_out:  # the engine's answer is the threshold's, and an absent pair has no mask
        assert p.answered_present == (p.presence >= 0.5) and (p.masks > 0) == p.answered_present


def test_the_raw_presence_does_not_separate_them(held_out):
    """The score IPSeg reported before (the top-k mean of S, still recorded as ``raw_presence``): at 0.5
    it calls (nearly) every distractor present, and it ranks the pairs worse than the calibrated one."""
    raw = [p.raw for p in held_out]
    absent = [p for p in held_out if not p.present]
    assert np.mean([p.raw >= 0.5 for p in absent]) > 0.9
    assert P.balanced_accuracy(raw, _truth(held_out), 0.5) < 0.6
    assert P.auroc(raw, _truth(held_out)) < P.auroc([p.presence for p in held_out], _truth(held_out))
