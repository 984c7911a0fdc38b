"""The Models tab: what the hub has loaded, where, in which dtype, and which weights are on disk.

The tab fills itself each time it is opened, not with ``demo.load``: Gradio 6.17's page mounts an
inactive tab's components only when the tab is first opened, and an event whose outputs are still
mounting while it is in flight loses its result and leaves them greyed with a frozen spinner
(upstream gradio-app/gradio#12904 and #13429; the browser test saw it 4 times in 4 with ``demo.load``,
and still in about 1 of 3 with one ``select`` event). So opening the tab sends the panel twice, the
second time once the first has returned, when the components have mounted. The components are also
built holding the panel as it was when the page was built, so a first open never shows an empty tab
even where both updates are lost.
"""

from __future__ import annotations

import gradio as gr

from vision.hub import ModelHub
from vision.ui import helpers as ui

def models_panel(hub: ModelHub):
    return ui.device_summary(hub), ui.models_table(hub), ui.weights_table()


def models_tab(hub: ModelHub) -> list:
    at_build = models_panel(hub)
    with gr.Tab("Models", id="models") as tab:
        summary = gr.Markdown(at_build[0], label="Device summary", elem_id="models-summary")
        models = gr.Dataframe(at_build[1], headers=ui.MODELS_HEADERS, label="Models (shared by every engine)",
                              interactive=False, wrap=True, elem_id="models-table")
        weights = gr.Dataframe(at_build[2], headers=ui.WEIGHTS_HEADERS,
                               label="Weights on disk (downloaded on first use)", interactive=False, wrap=True,
                               elem_id="models-weights")
        refresh = gr.Button("Refresh", elem_id="models-refresh")
        gr.Markdown("How to read this: *loaded* models stay in memory and are shared by every tab; *weights* "
                    "says where each model's files are (present in `weights/`, cached by Hugging Face, or "
                    "missing: downloaded on first use).")
        outputs = [summary, models, weights]
        refresh.click(lambda: models_panel(hub), outputs=outputs, api_name="models", queue=False)
        fill = dict(fn=lambda: models_panel(hub), outputs=outputs, queue=False, show_progress="hidden",
                    api_visibility="undocumented")
        # twice: the second update lands on components that have mounted by the time the first one returns
        tab.select(**fill).then(**fill)
    return outputs
