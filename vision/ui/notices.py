"""What the page says beside a result: the tiny-mode notice heading every summary, and warnings."""

from __future__ import annotations

import logging

log = logging.getLogger("vision.app")


def tiny_prefix(hub) -> str:
    """The tiny-mode notice that heads every result summary (empty with real weights)."""
    from vision.tiny import TINY_NOTICE

    return f"**{TINY_NOTICE}**\n\n" if hub.tiny else ""


def warn(message: str) -> None:
    """A non-fatal notice in the page (``gr.Warning``); also logged."""
    import gradio as gr

    log.warning(message)
    gr.Warning(message)


def missing_weights_note(hub, engine: str, config: object = None):
    """A Markdown line under a tab's title naming the models its default settings need that are not on disk,
    with the size to download and the command (``elem_id`` ``<engine>-missing``; hidden when none is
    missing, and in tiny mode)."""
    import gradio as gr

    from vision.weights import missing_note

    text = "" if hub.tiny else missing_note(engine, config)
    return gr.Markdown(text, visible=bool(text), elem_id=f"{engine}-missing")
