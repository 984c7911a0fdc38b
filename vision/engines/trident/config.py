"""Trident's settings: :class:`TridentConfig` and the named presets (the paper's eight benchmarks + "open")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from vision.engines.contract import EngineConfig

VIT_SAMS = ("sam_b", "sam_h")  # SAM models with a ViT image encoder (global attention in the last block)
METHODS = ("trident",)  # the class-name segmentation methods this engine runs


class TridentError(ValueError):
    """Settings or inputs Trident cannot use; the message names the field and says why."""


@dataclass(frozen=True)
class TridentConfig(EngineConfig):
    """Every setting of one Trident run; :meth:`from_preset` gives the paper's per-benchmark values.

    ``short_side`` (S), ``stride`` and ``window``: the splice grid. ``prob_thd``: pixels whose best class
    probability is below it become background (needs a background class). ``coarse_thresh``: below it a
    pixel is "uncertain" and never prompted during refinement. ``cos_fac`` (k) and ``refine_neg_cos``:
    SAM affinity threshold e_i = k * mean cos (negative e_i -> 0.6 when ``refine_neg_cos`` is off),
    capped at ``cos_cap``. ``split_halves``: Cityscapes' left and right halves get their own SAM pass.
    ``beta``/``gamma``: proxy attention S' = gamma (S - beta mean S). ``clip``/``vfm``/``sam``: hub names.
    ``reference``: reproduce the reference code's behaviour where it differs from the project's (on in
    every benchmark preset, off in "open"; the differences are listed in
    :mod:`vision.engines.trident.engine`).
    """

    ENGINE: ClassVar[str] = "trident"
    TITLE: ClassVar[str] = "Trident"
    ERROR: ClassVar[type[ValueError]] = TridentError

    preset: str = "open"
    method: str = "trident"  # the class-name segmentation method (see METHODS)
    short_side: int = 448
    stride: int = 224
    window: int = 336
    prob_thd: float = 0.0
    coarse_thresh: float = 0.2
    cos_fac: float = 1.2
    refine_neg_cos: bool = True
    cos_cap: float = 0.9
    split_halves: bool = False
    refine: bool = True
    logit_scale: float = 40.0
    beta: float = 1.2
    gamma: float = 3.0
    min_area: int = 225
    mask_coeff: float = 0.005
    sam_iou_thresh: float = 0.8
    max_long_side: int = 2048
    clip: str = "clip_b16"
    vfm: str = "dino_b16"
    sam: str = "sam_b"
    reference: bool = False

    def problems(self) -> list[str]:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method={self.method!r} must be one of {', '.join(METHODS)}")
        if self.clip not in ("clip_b16", "clip_h14"):
            problems.append(f"clip must be clip_b16 or clip_h14, not {self.clip!r}")
        if self.vfm not in ("dino_b16", "dinov2_b14"):
            problems.append(f"vfm must be dino_b16 or dinov2_b14 (a deviation), not {self.vfm!r}")
        if self.sam not in VIT_SAMS:
            problems.append(f"Trident needs a ViT SAM encoder ({' or '.join(VIT_SAMS)}), not sam={self.sam!r}: its "
                            "global aggregation uses the attention of the encoder's last (global) ViT block"
                            + (", which sam_t's TinyViT encoder (MobileSAM) does not have" if self.sam == "sam_t"
                               else ""))
        if not 0 < self.stride <= self.window:
            problems.append(f"stride must be in 1..window ({self.window}), got {self.stride}")
        if self.short_side < 1 or self.max_long_side < self.window:
            problems.append("short_side must be positive and max_long_side at least the window")
        if not 0.0 <= self.prob_thd <= 1.0 or not 0.0 <= self.coarse_thresh <= 1.0:
            problems.append("prob_thd and coarse_thresh are probabilities (0..1)")
        return problems


def _benchmark(name: str, s: int, stride: int, prob_thd: float, coarse: float, k: float, neg: bool,
               halves: bool = False) -> TridentConfig:
    return TridentConfig(preset=name, short_side=s, stride=stride, prob_thd=prob_thd, coarse_thresh=coarse,
                         cos_fac=k, refine_neg_cos=neg, split_halves=halves, reference=True)


PRESETS: dict[str, TridentConfig] = {
    "open": TridentConfig(preset="open", short_side=448, stride=224, prob_thd=0.0, coarse_thresh=0.2),
    "voc21": _benchmark("voc21", 448, 224, 0.2, 0.2, 1.2, True),
    "context60": _benchmark("context60", 576, 224, 0.15, 0.15, 1.2, True),
    "coco_object": _benchmark("coco_object", 448, 224, 0.25, 0.25, 1.2, True),
    "voc20": _benchmark("voc20", 336, 112, 0.0, 0.2, 0.0, True),
    "context59": _benchmark("context59", 576, 224, 0.0, 0.15, 1.2, True),
    "coco_stuff": _benchmark("coco_stuff", 448, 224, 0.0, 0.05, 1.2, True),
    "cityscapes": _benchmark("cityscapes", 688, 224, 0.0, 0.10, 3.0, False, halves=True),
    "ade20k": _benchmark("ade20k", 576, 224, 0.0, 0.05, 1.2, False),
}
TridentConfig.PRESETS = PRESETS
