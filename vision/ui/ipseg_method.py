"""The IPSeg tab's method choice (IPSeg or GF-SAM) and GF-SAM's own control, each linked to the presets:
a method brings its preset, a preset its method."""

from __future__ import annotations

import gradio as gr

METHOD_CHOICES = [("IPSeg", "ipseg"), ("GF-SAM (graph-based point fusion; no Stable Diffusion)", "gfsam")]
METHOD_NAMES = {"ipseg": "IPSeg", "gfsam": "GF-SAM"}


def method_choice() -> gr.Radio:
    return gr.Radio(METHOD_CHOICES, value="ipseg", label="Method", elem_id="ipseg-method",
                    info="IPSeg (the paper, faithful) or GF-SAM (graph-based point fusion: DINOv2 or SAM features "
                         "and SAM only, lighter)")


def gfsam_points() -> gr.Slider:
    return gr.Slider(1, 128, value=128, step=1, label="GF-SAM: point prompts (max)", elem_id="ipseg-max-points",
                     info="one SAM mask each; the reference's 128; fewer is faster on a CPU")


def link_method_and_preset(method: gr.Radio, preset: gr.Radio) -> None:
    """A method brings its own preset, a preset its method (on user input only: no event loop)."""
    method.input(_preset_of_method, method, preset, queue=False, api_visibility="undocumented")
    preset.input(_method_of_preset, preset, method, queue=False, api_visibility="undocumented")


def _preset_of_method(method: str) -> str:
    from vision.engines.ipseg.config import METHOD_PRESETS

    return METHOD_PRESETS.get(method, "default")


def _method_of_preset(preset: str) -> str:
    from vision.engines.ipseg.config import PRESETS

    return PRESETS.get(preset, {}).get("method", "ipseg")
