"""Class-name (open-vocabulary) semantic segmentation: the engine, its methods Trident and CorrCLIP,
and their parts.

:mod:`.engine` (the pipeline, and the list of reference-mode differences), :mod:`.results` (its result),
:mod:`.corrclip` / :mod:`.corrclip_run` / :mod:`.regions` (CorrCLIP's stages, run and region masks), :mod:`.config`
(settings and presets), :mod:`.classes` (class-name parsing and per-class probabilities), :mod:`.modes`
(the open and reference behaviours), :mod:`.splice` (windows, CLIP/DINO trunks, proxy attention,
splice), :mod:`.aggregate` (SAM global aggregation), :mod:`.refine` (SAM prompt refinement).
"""

from vision.engines.trident.classes import MAX_CLASSES, Classes, parse_classes
from vision.engines.trident.config import PRESETS, TridentConfig
from vision.engines.trident.engine import TridentEngine
from vision.engines.trident.results import TridentResult

__all__ = ["MAX_CLASSES", "PRESETS", "Classes", "TridentConfig", "TridentEngine", "TridentResult", "parse_classes"]
