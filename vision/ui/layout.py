"""The whole page: the tiny-mode banner, one tab per engine, the Models tab, and the queue."""

from __future__ import annotations

import gradio as gr

from vision.hub import get_hub
from vision.tiny import TINY_NOTICE
from vision.ui import runs, storage
from vision.ui.generate_tab import generate_tab
from vision.ui.ipseg_tab import ipseg_tab
from vision.ui.models_tab import models_api, models_tab
from vision.ui.segment_tab import segment_tab
from vision.ui.story_tab import story_tab
from vision.ui.trident_tab import trident_tab
from vision.ui.video_tab import video_tab

GPU_GROUP = "gpu"  # every engine event shares this concurrency group
QUEUE_MAX = 64  # requests waiting beyond this are refused with "queue full" instead of piling up
CSS = """
#tiny-banner {background: #fff3cd; border: 2px solid #d39e00; border-radius: 8px; padding: 4px 12px;}
#tiny-banner p {color: #5c4400; font-weight: 700; margin: 4px 0;}
.toast-message-text {white-space: pre-wrap;}  /* multi-line errors (missing-weights advice) stay readable */
"""
TABS: list = [ipseg_tab, segment_tab, trident_tab, generate_tab, story_tab, video_tab]
CPU_NOTE = ("**No GPU here: the CPU preset.** Interactive on a CPU: **Segment** (SAM `sam_t` on ONNX Runtime / "
            "OpenVINO: a click in tens of milliseconds once the photo is encoded) and **IPSeg** with SAM features "
            "and `sam_t` (the defaults here: seconds per target). Need a GPU to be pleasant: IPSeg with DINOv2 + "
            "Stable Diffusion features, **Trident** (CLIP + DINO + SAM-B), **Generate** and **Story** (Stable "
            "Diffusion: minutes per image on a CPU).")


def cpu_preset(hub) -> bool:
    """Whether the page uses its CPU defaults: real models (not tiny) and no CUDA device."""
    return not hub.tiny and not str(hub.device).startswith("cuda")


def build_demo(concurrency: int = 1) -> gr.Blocks:
    """The whole page, on the process-wide model hub (``set_hub`` it first; tiny with ``VISION_TINY=1``)."""
    hub = get_hub()
    storage.serve_outputs()
    limits = dict(concurrency_limit=concurrency, concurrency_id=GPU_GROUP)
    with gr.Blocks(title="Training-free vision", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# Training-free vision\nImage-prompt segmentation (IPSeg), open-vocabulary segmentation "
                    "(Trident), Stable Diffusion with DeepCache, long-story visualisation (Story-Adapter) and "
                    "video object tracking, all on shared foundation models.")
        if hub.tiny:
            gr.Markdown(f"⚠️ {TINY_NOTICE}", elem_id="tiny-banner")
        if cpu_preset(hub):
            gr.Markdown(CPU_NOTE, elem_id="cpu-note")
        with gr.Tabs() as tabs:
            for build_tab in TABS:
                build_tab(hub, limits)
            models_tab(hub, tabs)
        models_api(hub)
        demo.unload(runs.session_closed)  # a page closed or a client gone: its runs stop (vision.ui.runs)
    demo.queue(max_size=QUEUE_MAX, default_concurrency_limit=concurrency)
    return demo
