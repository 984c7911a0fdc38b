"""The Models tab: what the hub has loaded, where, in which dtype, and which weights are on disk."""

from __future__ import annotations

import gradio as gr

from vision.hub import ModelHub
from vision.ui import helpers as ui


def models_panel(hub: ModelHub):
    return ui.device_summary(hub), ui.models_table(hub), ui.weights_table()


def models_tab(hub: ModelHub):
    with gr.Tab("Models", id="models"):
        summary = gr.Markdown(elem_id="models-summary")
        models = gr.Dataframe(headers=ui.MODELS_HEADERS, label="Models (shared by every engine)",
                              interactive=False, wrap=True, elem_id="models-table")
        weights = gr.Dataframe(headers=ui.WEIGHTS_HEADERS, label="Weights on disk (downloaded on first use)",
                               interactive=False, wrap=True)
        refresh = gr.Button("Refresh", elem_id="models-refresh")
        outputs = [summary, models, weights]
        refresh.click(lambda: models_panel(hub), outputs=outputs, api_name="models", queue=False)
    return outputs
