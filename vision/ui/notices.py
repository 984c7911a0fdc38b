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
