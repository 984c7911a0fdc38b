"""IPSeg's presence: is the prompt's concept in a target at all, raw or calibrated to 0..1.

**Raw** (every source without a calibration, GF-SAM and reference mode): the mean of the top-k cells of S,
a cosine with the prompt's prototype (about -1..1). It does not say "absent" with SAM's image embedding:
every image is similar to every prototype there (a cat prompt over 12 photos scored 0.79-0.985, a horse
0.969), so no threshold separates the images that hold the concept from those that do not.

**Calibrated** (:data:`CALIBRATIONS`; today SAM features with ``sam_t``): each target cell is compared
with the prompt's own cells (:func:`margin_map`): its cosine to the nearest prompt cell *inside* the
prompt region minus that to the nearest cell *outside* it, a one-nearest-neighbour margin against the
prompt's own negatives. Cells of the concept are closer to the prompt's concept than to anything else in
the prompt image; cells of other things are not. The top-k mean of that map (the same k as S) goes
through a logistic fitted for the source (:class:`Calibration`) with both classes weighted equally, so
the presence is in 0..1 and 0.5 is the boundary at even odds: ``presence_threshold=0.5`` means "more
likely present than absent".

The fit and its check: :mod:`vision.evaluation.presence_eval` (a synthetic set with distractor images,
fitted on seeds 0-1, measured on held-out seeds 2-3 by ``tests/test_ipseg_presence.py``). A source with no
entry keeps the raw score; every result says which kind it reports (``presence_kind``). On real photos SAM's
embedding ranks better than it thresholds: the README's cat prompt gives its cat photo 0.96 and the
astronaut 0.37, but a cup prompt still scored scikit-image's full-size cat photo 0.91 (raw 0.90) and its
astronaut 1.0; choose a threshold on your own images where a false "present" costs much.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit

from vision.engines.ipseg.points import top_k_mean

# Prompt cells kept on each side of the region (evenly spaced), fp16: <= 1 MB per cached prompt with SAM's
# 256 channels; the margin's cost per target is then one [g*g, 2 x EXEMPLARS] matrix product.
EXEMPLARS = 1024


@dataclass(frozen=True)
class Calibration:
    """The presence of a top-k ``margin``: ``1 / (1 + exp(-(margin - centre) / width))``, in 0..1."""

    centre: float  # the margin at even odds (presence 0.5)
    width: float  # margin units per unit of log-odds (> 0)

    def __call__(self, margin: float) -> float:
        return float(expit((margin - self.centre) / self.width))


# (features, model of that source) -> fit (vision.evaluation.presence_eval.calibrate). sam_t: seeds 0-1, 3 targets
# per object (96 pairs), OpenVINO backend. Held out, seeds 2-3: 3 per object, AUROC 0.990 (the raw score's 0.893),
# balanced accuracy at 0.5 0.938 (raw: 0.5, every distractor present); 2 per object (the test's), 0.999 and 0.990.
CALIBRATIONS: dict[tuple[str, str], Calibration] = {
    ("sam", "sam_t"): Calibration(centre=0.24675, width=0.016405),
}


def calibration_key(config: Any) -> tuple[str, str]:
    """The (features, model) a calibration is fitted for: SAM features by their SAM model, the DINOv2
    sources by their DINOv2 model (an embedding of another model is another scale)."""
    return config.features, config.sam_model if config.features == "sam" else config.dino_model


def calibratable(config: Any) -> bool:
    """Whether these settings can report a calibrated presence: IPSeg in product mode (GF-SAM has its own
    score; reference mode reproduces the reference, where presence is the raw score)."""
    return config.method == "ipseg" and not config.reference


def calibration_for(config: Any) -> Calibration | None:
    """The calibration these settings report their presence with; None: the raw score."""
    return CALIBRATIONS.get(calibration_key(config)) if calibratable(config) else None


@dataclass(frozen=True)
class Exemplars:
    """A prompt's own cells on its feature grid, inside the region and outside it: unit rows [n, C] (fp16)."""

    inside: torch.Tensor
    outside: torch.Tensor


def _spread(cells: torch.Tensor, limit: int) -> torch.Tensor:
    """At most ``limit`` rows of ``cells`` [n, C], evenly spaced (so that they cover the whole region)."""
    if len(cells) <= limit:
        return cells
    return cells[torch.linspace(0, len(cells) - 1, limit).round().long()]


def exemplars(feature: torch.Tensor, region: np.ndarray, limit: int = EXEMPLARS) -> Exemplars | None:
    """The prompt's cells of ``feature`` [C, g, g] inside and outside ``region`` (bool [g, g]), at most
    ``limit`` of each; None when either side is empty (a region covering the whole prompt image)."""
    cells = F.normalize(feature.float().reshape(feature.shape[0], -1).T, dim=1)  # [g*g, C]
    inside = torch.as_tensor(np.asarray(region, dtype=bool).reshape(-1), device=cells.device)
    if not inside.any() or inside.all():
        return None
    return Exemplars(_spread(cells[inside], limit).half(), _spread(cells[~inside], limit).half())


def margin_map(shots: Sequence[Exemplars], feature: torch.Tensor) -> np.ndarray:
    """Per target cell of ``feature`` [C, g, g]: cosine to the nearest prompt cell inside the region minus
    cosine to the nearest outside it, over all the shots' cells -> float32 [g, g] (-2..2, about -1..1)."""
    inside = torch.cat([s.inside for s in shots]).float()
    outside = torch.cat([s.outside for s in shots]).float()
    cells = F.normalize(feature.float().reshape(feature.shape[0], -1).T, dim=1).to(inside.device)
    margin = (cells @ inside.T).max(dim=1).values - (cells @ outside.T).max(dim=1).values
    return margin.reshape(feature.shape[1:]).cpu().numpy().astype(np.float32)


@dataclass(frozen=True)
class Presence:
    """A concept's presence in one target, over all its cells or the ``allowed`` ones (bool [g, g]):
    ``raw()`` is the top-k mean of S; calling it gives the reported presence, that raw score or, with a
    ``calibration``, the calibrated top-k mean of ``margin`` (:attr:`kind` says which)."""

    similarity: np.ndarray  # S, float32 [g, g]
    top_k: int
    margin: np.ndarray | None = None  # margin_map, float32 [g, g]; with a calibration
    calibration: Calibration | None = None

    @property
    def kind(self) -> str:
        """``"calibrated"`` (0..1, 0.5 = even odds) or ``"raw"`` (the top-k mean of S, a cosine)."""
        return "raw" if self.calibration is None else "calibrated"

    def raw(self, allowed: np.ndarray | None = None) -> float:
        return top_k_mean(self.similarity, self.top_k, allowed)

    def __call__(self, allowed: np.ndarray | None = None) -> float:
        if self.calibration is None:
            return self.raw(allowed)
        return self.calibration(top_k_mean(self.margin, self.top_k, allowed))


def presence_of(config: Any, similarity: np.ndarray, shots: Sequence[Exemplars | None],
                feature: torch.Tensor) -> Presence:
    """The :class:`Presence` of one concept in a target from S [g, g], the concept's prompt exemplars (one
    per shot) and the target's primary feature [C, g, g]: calibrated where these settings have a
    calibration and every shot has exemplars, else raw."""
    calibration = calibration_for(config)
    if calibration is None or not shots or any(s is None for s in shots):
        return Presence(similarity, config.top_k)
    return Presence(similarity, config.top_k, margin_map(shots, feature), calibration)
