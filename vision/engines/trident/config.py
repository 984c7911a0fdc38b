"""The class-name engine's settings: :class:`TridentConfig` and the named presets: Trident's eight
benchmarks + "open", and CorrCLIP's (``method="corrclip"``) eight ``corrclip_<benchmark>`` + "corrclip"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from vision.engines.contract import EngineConfig
from vision.engines.trident.regions import RegionSpec

if TYPE_CHECKING:
    from vision.classnames import ClassList

VIT_SAMS = ("sam_b", "sam_h")  # SAM models with a ViT image encoder (global attention in the last block)
METHODS = ("trident", "corrclip")  # the class-name segmentation methods this engine runs
CORRCLIP_CLIPS = ("metaclip_b16", "clip_b16", "clip_h14")  # MetaCLIP B/16 is the reference's
CORRCLIP_VFMS = ("dino_b8", "dino_b16")  # DINO B/8 is the reference's


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

    ``method="corrclip"`` runs CorrCLIP (:mod:`vision.engines.trident.corrclip`, whose docstring lists its
    reference differences) with ``short_side``, ``window``, ``stride``, ``prob_thd``, ``logit_scale``,
    ``max_long_side``, ``clip``, ``vfm`` (DINO) and its region masks: ``mask_generator`` (``sam_t`` /
    ``sam_b`` / ``sam_h`` / ``mask2former``) with, for SAM, ``points_per_side``, ``pred_iou_thresh``,
    ``stability_score_thresh`` and ``sam_backend`` (where SAM runs). Trident's other fields do not apply
    to it.
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
    mask_generator: str = "sam_b"
    points_per_side: int = 8
    pred_iou_thresh: float = 0.4
    stability_score_thresh: float = 0.4
    sam_backend: str = "auto"
    reference: bool = False

    @property
    def benchmark(self) -> str | None:
        """The dataset of a benchmark preset ("voc21" for "voc21" and "corrclip_voc21"), else None."""
        from vision.classnames import CLASS_LISTS

        name = self.preset.removeprefix("corrclip_")
        return name if name in CLASS_LISTS else None

    def class_list(self) -> ClassList | None:
        """The benchmark's classes in the strings this method and mode encode (None without a benchmark):
        the project's spelling in product mode, else Trident's or CorrCLIP's reference strings."""
        from vision.classnames import CORRCLIP_REFERENCE_CLASS_LISTS
        from vision.engines.trident.modes import mode_for

        if self.benchmark is None:
            return None
        if self.method == "corrclip" and self.reference:
            return CORRCLIP_REFERENCE_CLASS_LISTS[self.benchmark]
        return mode_for(self).class_list(self.benchmark)

    def models(self) -> dict[str, str]:
        """Role -> hub name of the models a run uses (CorrCLIP: its mask generator where Trident has SAM)."""
        if self.method == "corrclip":
            return {"clip": self.clip, "vfm": self.vfm, "mask_generator": self.mask_generator}
        return {"clip": self.clip, "vfm": self.vfm, "sam": self.sam}

    @property
    def regions(self) -> RegionSpec:
        """CorrCLIP's region-mask settings."""
        return RegionSpec(self.mask_generator, self.points_per_side, self.pred_iou_thresh,
                          self.stability_score_thresh, self.sam_backend)

    def problems(self) -> list[str]:
        if self.method not in METHODS:
            return [f"method={self.method!r} must be one of {', '.join(METHODS)}"]
        problems = self._corrclip_problems() if self.method == "corrclip" else self._trident_problems()
        if not 0 < self.stride <= self.window:
            problems.append(f"stride must be in 1..window ({self.window}), got {self.stride}")
        if self.short_side < 1 or self.max_long_side < self.window:
            problems.append("short_side must be positive and max_long_side at least the window")
        if not 0.0 <= self.prob_thd <= 1.0 or not 0.0 <= self.coarse_thresh <= 1.0:
            problems.append("prob_thd and coarse_thresh are probabilities (0..1)")
        return problems

    def _corrclip_problems(self) -> list[str]:
        problems = self.regions.problems()
        if self.clip not in CORRCLIP_CLIPS:
            problems.append(f"clip must be one of {', '.join(CORRCLIP_CLIPS)} for CorrCLIP, not {self.clip!r}")
        if self.vfm not in CORRCLIP_VFMS:
            problems.append(f"vfm must be one of {', '.join(CORRCLIP_VFMS)} for CorrCLIP (its value reconstruction "
                            f"reads a DINO ViT's last block), not {self.vfm!r}")
        return problems

    def _trident_problems(self) -> list[str]:
        problems = []
        if self.clip not in ("clip_b16", "clip_h14"):
            problems.append(f"clip must be clip_b16 or clip_h14, not {self.clip!r}")
        if self.vfm not in ("dino_b16", "dinov2_b14"):
            problems.append(f"vfm must be dino_b16 or dinov2_b14 (a deviation), not {self.vfm!r}")
        if self.sam not in VIT_SAMS:
            problems.append(f"Trident needs a ViT SAM encoder ({' or '.join(VIT_SAMS)}), not sam={self.sam!r}: its "
                            "global aggregation uses the attention of the encoder's last (global) ViT block"
                            + (", which sam_t's TinyViT encoder (MobileSAM) does not have" if self.sam == "sam_t"
                               else ""))
        return problems


def _benchmark(name: str, s: int, stride: int, prob_thd: float, coarse: float, k: float, neg: bool,
               halves: bool = False) -> TridentConfig:
    return TridentConfig(preset=name, short_side=s, stride=stride, prob_thd=prob_thd, coarse_thresh=coarse,
                         cos_fac=k, refine_neg_cos=neg, split_halves=halves, reference=True)


def _corrclip(name: str, short_side: int, window: int, prob_thd: float) -> TridentConfig:
    """CorrCLIP's ``configs/cfg_<dataset>.py``: mmseg's resize to ``short_side``, ``window`` crops every 112
    pixels, ``prob_thd`` (with the background class), MetaCLIP B/16 and DINO B/8; region masks from SAM-H
    at 32 points per side, the closest the hub has to the paper's pre-generated SAM 2 masks (32 per side)."""
    return TridentConfig(preset=f"corrclip_{name}", method="corrclip", short_side=short_side, window=window,
                         stride=112, prob_thd=prob_thd, clip="metaclip_b16", vfm="dino_b8", mask_generator="sam_h",
                         points_per_side=32, reference=True)


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
    # CorrCLIP: its own models and SAM-B masks at 8 points per side (the reference's on-line SAM 2 setting).
    "corrclip": TridentConfig(preset="corrclip", method="corrclip", short_side=336, window=336, stride=112,
                              clip="metaclip_b16", vfm="dino_b8", mask_generator="sam_b", points_per_side=8),
    "corrclip_voc21": _corrclip("voc21", 336, 336, 0.2),
    "corrclip_context60": _corrclip("context60", 336, 336, 0.15),
    "corrclip_coco_object": _corrclip("coco_object", 336, 336, 0.25),
    "corrclip_voc20": _corrclip("voc20", 336, 336, 0.0),
    "corrclip_context59": _corrclip("context59", 336, 336, 0.0),
    "corrclip_coco_stuff": _corrclip("coco_stuff", 336, 336, 0.0),
    "corrclip_cityscapes": _corrclip("cityscapes", 448, 224, 0.0),
    "corrclip_ade20k": _corrclip("ade20k", 448, 336, 0.0),
}


def presets_of(method: str) -> list[str]:
    """The preset names of ``method``: "trident" -> "open" and its eight benchmarks, "corrclip" ->
    "corrclip" and ``corrclip_<benchmark>`` for the same eight."""
    return [name for name, preset in PRESETS.items() if preset.method == method]


def preset_for(method: str, preset: str) -> str:
    """The preset of ``method`` for a benchmark or "open": ``("corrclip", "voc21")`` -> "corrclip_voc21",
    ``("corrclip", "open")`` -> "corrclip"; a preset that already names a method is returned as it is."""
    if method != "corrclip" or preset.startswith("corrclip"):
        return preset
    return "corrclip" if preset == "open" else f"corrclip_{preset}"
TridentConfig.PRESETS = PRESETS
