"""IPSeg, image-prompt segmentation (training-free): the engine and its parts.

* :mod:`.engine` - :class:`IPSegEngine` (the pipeline, reference mode and its documented differences)
* :mod:`.modes` - the product and reference behaviours (the one place ``reference`` is read)
* :mod:`.config` - :class:`IPSegConfig`, presets (``default``, ``paper``, ``fast``), errors
* :mod:`.prompts` - :class:`Prompt`, :class:`Concept` and the prompt region on the grid
* :mod:`.features` - DINOv2 / SD1.5 / SAM features on the grid, prototypes, the fused similarity
* :mod:`.points` - top-k cells, k-means (ours and the reference's), cells -> pixels
* :mod:`.cascade` - the SAM encoding of a target and PerSAM's cascade
* :mod:`.results` - results, records, files, overlay and similarity heatmap images, batch errors

The names below are imported on first use, so that ``vision.engines.ipseg.config`` (what the command
line needs to build its options) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "config": ("FEATURES", "PRESETS", "SAM_MODELS", "IPSegConfig", "IPSegError", "IPSegWarning"),
    "engine": ("IPSegEngine", "PromptFeatures", "find_instances"),
    "features": ("SD_HOOKS", "run_hooked_unet"),
    "prompts": ("Concept", "Prompt", "as_concepts"),
    "results": ("IPSegBatch", "ConceptResult", "Instance", "IPSegResult", "TargetError"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
