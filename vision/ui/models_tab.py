"""The Models tab: what the hub has loaded, where, in which dtype, and which weights are on disk.

Gradio 6.17 mounts an inactive tab's components only when the tab is first opened, and an event whose
outputs are still mounting can leave them greyed with a frozen spinner (upstream gradio-app/gradio#12904,
#13429). The tab avoids both halves of that race:

- its tables are Markdown, not ``gr.Dataframe``: on 2 loaded CPU cores the two 23- and 29-row
  Dataframes kept the page busy 10-80 s after the click (a CPU profile: the Dataframe's rows and Svelte's
  reactivity; 1.5 s for the same tables in a two-tab app), the window in which the refresh could land;
  with Markdown tables the filled tab showed 5-9 s after the click on the same machine;
- the refresh sent when the tab is opened shows its progress on the always-mounted ``gr.Tabs`` container
  (``show_progress_on``), so no loading status is ever set on a component that is still mounting.

The components are built holding the panel as the page was built, so even a lost update leaves a filled
tab; every open (and the Refresh button) then brings it up to date. ``/models`` (API) gives the same panel
with the tables as rows.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from vision.hub import ModelHub
from vision.ui import tables

HOW_TO_READ = ("How to read this: *loaded* models stay in memory and are shared by every tab; *weights* says "
               "where each model's files are (present in `weights/`, cached by Hugging Face, or missing: "
               "downloaded on first use).")


def models_status(hub: ModelHub) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The panel for the API: the summary (Markdown, with the SAM backend) and each table as
    ``{"headers": [...], "data": rows}``."""
    from vision.sam.backends import backend_summary

    summary = f"{tables.device_summary(hub)}\n\n{backend_summary(hub.device)}"
    return (summary, {"headers": tables.MODELS_HEADERS, "data": tables.models_table(hub)},
            {"headers": tables.WEIGHTS_HEADERS, "data": tables.weights_table()})


def models_panel(hub: ModelHub) -> tuple[str, str, str]:
    """The page's panel: :func:`models_status` with its tables as Markdown."""
    summary, *rows = models_status(hub)
    return (summary, *(tables.markdown_table(table["headers"], table["data"]) for table in rows))


def models_tab(hub: ModelHub, tabs: gr.Tabs) -> list:
    """The tab, inside ``tabs`` (the page's always-mounted tab container, which shows the refresh's progress)."""
    at_build = models_panel(hub)
    with gr.Tab("Models", id="models") as tab:
        summary = gr.Markdown(at_build[0], label="Device summary", elem_id="models-summary")
        gr.Markdown("**Models** (shared by every engine)")
        models = gr.Markdown(at_build[1], label="Models (shared by every engine)", elem_id="models-table")
        gr.Markdown("**Weights on disk** (downloaded on first use)")
        weights = gr.Markdown(at_build[2], label="Weights on disk (downloaded on first use)",
                              elem_id="models-weights")
        refresh = gr.Button("Refresh", elem_id="models-refresh")
        gr.Markdown(HOW_TO_READ)
        outputs = [summary, models, weights]
        refresh.click(lambda: models_panel(hub), outputs=outputs, queue=False, api_visibility="undocumented")
        tab.select(lambda: models_panel(hub), outputs=outputs, queue=False, show_progress="hidden",
                   show_progress_on=[tabs], api_visibility="undocumented")
    return outputs


def models_api(hub: ModelHub) -> None:
    """``/models``: the same panel for API clients (outside the page's ``gr.Tabs``, which may hold only tabs:
    an API block there made Gradio warn at every start)."""
    def api_models() -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The device summary (Markdown), the models table and the weights table (headers and rows)."""
        return models_status(hub)

    gr.api(api_models, api_name="models", queue=False)
