"""Image-prompt segmentation (training-free): the engine with its two methods, IPSeg and GF-SAM, and
their parts.

* :mod:`.engine` - :class:`IPSegEngine` (the pipeline, reference mode and its documented differences)
* :mod:`.modes` - the product and reference behaviours (the one place ``reference`` is read)
* :mod:`.config` - :class:`IPSegConfig`, presets (``default``, ``paper``, ``fast``, ``gfsam``, ``gfsam_fast``), errors
* :mod:`.prompts` - :class:`Prompt`, :class:`Concept` and the prompt region on the grid
* :mod:`.features` - DINOv2 / SD1.5 / SAM features on the grid, prototypes, the fused similarity
* :mod:`.points` - top-k cells, k-means (ours and the reference's), cells -> pixels
* :mod:`.cascade` - the SAM encoding of a target and PerSAM's cascade
* :mod:`.results` - results, records, files, overlay and similarity heatmap images, batch errors
* :mod:`.gfsam` - GF-SAM (``method="gfsam"``; presets ``gfsam``, ``gfsam_fast``): the method, its reference
  differences, and :mod:`.gfsam_align`, :mod:`.gfsam_inputs`, :mod:`.gfsam_graph`, :mod:`.gfsam_run`,
  :mod:`.gfsam_result`

The names below are imported on first use, so that ``vision.engines.ipseg.config`` (what the command
line needs to build its options) loads without torch.
"""

from __future__ import annotations

from vision.engines import lazy_exports

_EXPORTS = {
    "config": ("FEATURES", "PRESETS", "SAM_MODELS", "IPSegConfig", "IPSegError", "IPSegWarning"),
    "engine": ("IPSegEngine", "PromptFeatures", "find_instances"),
    "features": ("SD_HOOKS", "run_hooked_unet"),
    "prompts": ("Concept", "Prompt", "as_concepts"),
    "results": ("IPSegBatch", "ConceptResult", "Instance", "IPSegResult", "TargetError"),
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
