"""Video: find a concept through a whole video from one exemplar, a click, a box or a mask.

* :mod:`.engine` - :class:`VideoEngine` (the pipeline; progress per frame; resuming)
* :mod:`.config` - :class:`VideoConfig`, presets (``default``, ``fast``, ``sam2``, ``sam2_large``), errors
* :mod:`.prompt` - :class:`VideoPrompt` (exemplar, mask, clicks or box on a frame) and its checks
* :mod:`.exemplar` - ``track="exemplar"``: the image-prompt engine per frame, the temporal prior, ids
* :mod:`.sam2` - ``track="sam2"``: SAM 2.1's streaming video model with bounded memory
* :mod:`.tracks` - both tracks behind the one interface the engine drives
* :mod:`.adapters` - the image engines it calls (IPSeg / GF-SAM, Segment), one function each
* :mod:`.results` - :class:`FrameResult` (one per frame), :class:`VideoResult`, the overlay frame

Video files and frame folders are read by :mod:`vision.videoio`; resumable runs with per-frame outputs
are :mod:`vision.batch.video`. Names below are imported on first use (the config loads without torch).
"""

from __future__ import annotations

from vision.engines import lazy_exports

_EXPORTS = {
    "config": ("PRESETS", "SAM2_MODELS", "TRACKS", "VideoConfig", "VideoError"),
    "engine": ("VideoEngine",),
    "prompt": ("VideoPrompt",),
    "results": ("FrameResult", "FrameSummary", "TrackedInstance", "VideoResult", "overlay_frame"),
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
