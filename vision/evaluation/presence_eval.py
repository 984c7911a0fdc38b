"""IPSeg's presence on a synthetic set with distractor images: the set, its metrics, and the fit of a
presence calibration (:data:`vision.engines.ipseg.presence.CALIBRATIONS`).

**The set** (:func:`distractor_set`): the four synthetic objects of
:mod:`~vision.evaluation.synthetic_datasets` (a cat, a cup, an astronaut, a rocket), pasted on crops of
the two background photos that hold none of them (immunohistochemistry, the Hubble deep field). Per object,
one prompt image with the object's exact mask and ``per_object`` target images. Every prompt meets every
target: a target holding its object is a "present" pair, one holding another object a distractor
("absent"); with 3 targets per object, 12 present and 36 absent pairs per seed.

**The fit** (:func:`calibrate`): the top-k margins (:func:`~vision.engines.ipseg.presence.margin_map`) of
the held-in seeds' pairs, a logistic with both classes weighted equally (:func:`fit_logistic`).
``tests/test_ipseg_presence.py`` measures the calibrated and the raw presence on the held-out seeds,
through the engine. To fit a source, e.g. after changing the margin::

    from vision.evaluation.presence_eval import calibrate
    from vision.hub import ModelHub
    print(calibrate(ModelHub(device="cpu"), "sam_t"))    # -> CALIBRATIONS[("sam", "sam_t")]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vision.engines.ipseg import IPSegConfig, IPSegEngine, Prompt
from vision.engines.ipseg.points import top_k_mean
from vision.engines.ipseg.presence import Calibration, exemplars, margin_map
from vision.evaluation.synthetic_datasets import BACKGROUND_PHOTOS, OBJECT_PHOTOS, Painter, class_name

HELD_IN_SEEDS = (0, 1)  # the fit's
HELD_OUT_SEEDS = (2, 3)  # the test's


@dataclass
class DistractorSet:
    """One seed's set: a prompt per object (``prompts[k]``: object k with its mask) and the targets, RGB
    uint8 [H, W, 3], with the object each holds (``objects[t]``)."""

    prompts: list[Prompt]
    targets: list[np.ndarray]
    objects: list[int]

    def pairs(self) -> list[tuple[int, int, bool]]:
        """(prompt k, target t, present) for every prompt and target."""
        return [(k, t, obj == k) for t, obj in enumerate(self.objects) for k in range(len(self.prompts))]


def distractor_set(seed: int, per_object: int = 3, size: tuple[int, int] = (240, 320)) -> DistractorSet:
    """The set for ``seed``: images of ``size`` (H, W), ``per_object`` targets per object."""
    painter = Painter(len(OBJECT_PHOTOS), size, seed, backgrounds=BACKGROUND_PHOTOS)
    prompts, targets, objects = [], [], []
    for k in range(len(OBJECT_PHOTOS)):
        image, painted = painter.picture(k, None)
        prompts.append(Prompt(image, mask=painted[0][1]))
        for _ in range(per_object):
            targets.append(painter.picture(k, None)[0])
            objects.append(k)
    return DistractorSet(prompts, targets, objects)


def presence_config(sam_model: str = "sam_t", **changes: Any) -> IPSegConfig:
    """IPSeg on SAM features with ``sam_model`` and the even-odds threshold 0.5 (the README's)."""
    return IPSegConfig(features="sam", sam_model=sam_model, **{"presence_threshold": 0.5, **changes})


@dataclass(frozen=True)
class PresencePair:
    """One prompt against one target, as the engine answered it."""

    prompt: int  # the prompt's object
    target: int  # the target's index in the set
    present: bool  # truth: the target holds the prompt's object
    presence: float  # the reported presence
    kind: str  # its kind: "calibrated" or "raw"
    raw: float  # the raw presence (the mean of the top-k of S)
    answered_present: bool  # the engine's answer (presence >= its threshold)
    masks: int  # instances returned


def engine_pairs(engine: IPSegEngine, data: DistractorSet) -> list[PresencePair]:
    """Every prompt of ``data`` against every target through ``engine`` (one concept per object, one batch:
    each prompt and each target encoded once)."""
    concepts = {class_name(k): prompt for k, prompt in enumerate(data.prompts)}
    results = engine.segment_batch(concepts, data.targets)
    found = {(k, r.index): c for r in results for k, c in enumerate(r.concepts)}
    pairs = []
    for k, t, present in data.pairs():
        c = found[k, t]
        raw = c.presence if c.raw_presence is None else c.raw_presence
        pairs.append(PresencePair(k, t, present, c.presence, c.presence_kind, raw, c.present, len(c.instances)))
    return pairs


def margins(engine: IPSegEngine, data: DistractorSet) -> tuple[list[float], list[bool]]:
    """The uncalibrated top-k margin of every pair of ``data`` (what a calibration maps to 0..1) and the
    truth, from ``engine``'s prompt regions and features (no SAM decoder)."""
    config = engine.config
    shots = []
    for prompt in data.prompts:
        entry, _ = engine.prompt_features(prompt)  # kept there where the settings have a calibration
        shots.append(entry.exemplars or exemplars(engine.features(prompt.image)[config.primary_feature],
                                                  entry.region))
    features = [engine.features(target)[config.primary_feature] for target in data.targets]
    values = [top_k_mean(margin_map([shots[k]], features[t]), config.top_k) for k, t, _ in data.pairs()]
    return values, [present for _, _, present in data.pairs()]


def fit_logistic(values: Sequence[float], present: Sequence[bool], penalty: float = 1e-3) -> Calibration:
    """The logistic that best predicts ``present`` from ``values``: maximum likelihood with both classes
    weighted equally (so 0.5 is the boundary at even odds, whatever the classes' counts) and a small L2
    penalty on the slope in units of the values' spread (it keeps the slope finite when they separate)."""
    from scipy.optimize import minimize

    x, y = np.asarray(values, float), np.asarray(present, float)
    if y.min() == y.max():
        raise ValueError("a calibration needs present and absent examples")
    scale = max(float(x.std()), 1e-6)
    weight = np.where(y > 0, 0.5 / y.sum(), 0.5 / (1 - y).sum())

    def loss(params: np.ndarray) -> float:
        slope, bias = params
        z = slope * x + bias
        return float(np.sum(weight * (np.logaddexp(0.0, z) - y * z)) + penalty * (slope * scale) ** 2)

    start = np.array([1.0 / scale, -x.mean() / scale])
    slope, bias = minimize(loss, start, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12,
                                                                       "maxiter": 20000}).x
    return Calibration(float(-bias / slope), float(1.0 / slope))


def calibrate(hub: Any, sam_model: str = "sam_t", seeds: Sequence[int] = HELD_IN_SEEDS) -> Calibration:
    """The calibration of IPSeg's presence with SAM features of ``sam_model``, fitted on ``seeds``' sets."""
    engine = IPSegEngine(presence_config(sam_model), hub=hub)
    values, truth = [], []
    for seed in seeds:
        v, y = margins(engine, distractor_set(seed))
        values += v
        truth += y
    return fit_logistic(values, truth)


def auroc(scores: Sequence[float], present: Sequence[bool]) -> float:
    """Area under the ROC curve: the chance that a present pair scores above an absent one (ties count
    half), the Mann-Whitney U of the two groups over the number of (present, absent) couples."""
    from scipy.stats import mannwhitneyu

    s, y = np.asarray(scores, float), np.asarray(present, bool)
    return float(mannwhitneyu(s[y], s[~y]).statistic / (y.sum() * (~y).sum()))


def balanced_accuracy(scores: Sequence[float], present: Sequence[bool], threshold: float) -> float:
    """Mean of the share of present pairs scored >= ``threshold`` and of absent pairs scored below it."""
    s, y = np.asarray(scores, float), np.asarray(present, bool)
    return float(((s[y] >= threshold).mean() + (s[~y] < threshold).mean()) / 2)
