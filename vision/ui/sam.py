"""The SAM every tab clicks with: one Segment engine per SAM model, shared by the Segment tab and the IPSeg
tab's click-to-mask (so both reuse one image-embedding cache), and the default SAM for the weights at hand."""

from __future__ import annotations

import functools

from vision.engines.segment import SegmentConfig, SegmentEngine
from vision.hub import SAM_MODELS, ModelHub, get_hub


@functools.lru_cache(maxsize=len(SAM_MODELS))
def segment_engine(sam_model: str) -> SegmentEngine:
    """The app's Segment engine of each SAM model on the process's hub (default backend: the fastest on this
    machine); it caches encoded images, so a click after the first on the same image runs the decoder only."""
    return SegmentEngine(SegmentConfig(sam_model=sam_model), hub=get_hub())


def default_sam(hub: ModelHub) -> str:
    """sam_t (real MobileSAM-class weights) when installed or in tiny mode, else sam_b."""
    from vision import weights

    return "sam_t" if hub.tiny or weights.status("sam_t") != "missing" else "sam_b"
