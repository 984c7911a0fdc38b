"""Engine progress in the page: a :class:`vision.engines.contract.Progress` callback over ``gr.Progress``."""

from __future__ import annotations

from typing import Any

from vision.engines.contract import Progress, ProgressCallback


def engine_progress(progress: Any) -> ProgressCallback:
    """The callback an engine call takes, showing each event's fraction and message in Gradio's bar
    (``progress`` is the handler's ``gr.Progress``; None: no bar)."""

    def report(event: Progress) -> None:
        if progress is not None:
            progress(event.fraction, desc=event.message)

    return report
