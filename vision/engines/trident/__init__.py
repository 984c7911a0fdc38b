"""Trident (open-vocabulary semantic segmentation): the engine and its parts.

:mod:`.engine` (the pipeline, its result, and the list of reference-mode differences), :mod:`.config`
(settings and presets), :mod:`.classes` (class-name parsing and per-class probabilities), :mod:`.modes`
(the open and reference behaviours), :mod:`.splice` (windows, CLIP/DINO trunks, proxy attention,
splice), :mod:`.aggregate` (SAM global aggregation), :mod:`.refine` (SAM prompt refinement).
"""

from vision.engines.trident.classes import MAX_CLASSES, Classes, parse_classes
from vision.engines.trident.config import PRESETS, TridentConfig
from vision.engines.trident.engine import TridentEngine, TridentResult

__all__ = ["MAX_CLASSES", "PRESETS", "Classes", "TridentConfig", "TridentEngine", "TridentResult", "parse_classes"]
