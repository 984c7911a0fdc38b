"""A request's engine run, stopped when its client leaves, so that it frees the run slot.

Gradio cannot stop a function that is running in a worker thread: a cancelled or abandoned request used
to run to its end while the requests behind it waited (a ``/segment`` call waited 99 s after its client
had gone). Here a run learns that its client left from two Gradio events and stops at the engine's next
progress call (step, frame or target) by raising :class:`vision.engines.contract.Cancelled` there:

* **cancel**: ``job.cancel()`` in gradio_client, or a Stop button's ``cancels=``: Gradio closes the
  handler's generator; :meth:`Run.in_background` runs the engine in a thread and yields while it works, so
  the close arrives within ``POLL_S`` and marks the run cancelled;
* **disconnect**: the page closed, or a client closed or killed: Gradio's ``unload`` event ends the session
  (:func:`session_closed`, registered by the layout); a run of that session stops, and a request of it
  still in the queue does nothing when its turn comes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import gradio as gr

from vision.engines.contract import Cancelled
from vision.ui.progress import engine_progress

log = logging.getLogger("vision.app")

POLL_S = 1.0  # how often a handler running an engine in the background yields (and so can be closed)
SESSION_MEMORY_S = 3600  # closed sessions are remembered this long

_closed: dict[str, float] = {}  # session hash -> when its client left
_lock = threading.Lock()


def session_closed(request: gr.Request) -> None:
    """Gradio's ``unload`` handler (the annotation makes Gradio pass the request): the client of
    ``request.session_hash`` has gone."""
    session = getattr(request, "session_hash", None)
    if not session:
        return
    log.info("client gone (session %s): its runs stop", session[:8])
    now = time.monotonic()
    with _lock:
        _closed[session] = now
        for old in [s for s, t in _closed.items() if now - t > SESSION_MEMORY_S]:
            del _closed[old]


def is_closed(session: str | None) -> bool:
    with _lock:
        return bool(session) and session in _closed


class Run:
    """One request's engine run (``name``: the engine, for the log), cancelled when its client leaves."""

    def __init__(self, request: Any, name: str):
        self.session = getattr(request, "session_hash", None)
        self.name = name
        self.cancelled_by: str | None = None  # "cancelled" once Gradio closed the handler
        self.position = "before it started"  # the last progress message

    @property
    def stop_reason(self) -> str | None:
        """Why the run must stop ("cancelled", "client gone"), or None."""
        return self.cancelled_by or ("client gone" if is_closed(self.session) else None)

    def check(self) -> None:
        """Raise :class:`Cancelled` (and log where the run stopped) when its client has left."""
        reason = self.stop_reason
        if reason is not None:
            log.info("%s stopped (%s) at %s", self.name, reason, self.position)
            raise Cancelled(f"{self.name} stopped ({reason}) at {self.position}")

    def progress(self, show: Callable[..., Any] | None = None) -> Callable[[Any], None]:
        """An engine ``progress`` callback: checks the run (:meth:`check`), then shows the event with
        ``show(fraction, desc=message)`` (a ``gr.Progress``) when given."""
        forward = engine_progress(show)

        def report(event: Any) -> None:
            self.position = event.message
            self.check()
            forward(event)

        return report

    def in_background(self, fn: Callable[..., Any], *args: Any, idle: Any = None) -> Generator[Any, None, Any]:
        """Run ``fn(*args)`` in a thread; yield ``idle`` every :data:`POLL_S` while it runs; return its result
        (``result = yield from run.in_background(...)``) or raise its exception.

        Closing this generator (Gradio's cancel) marks the run cancelled: ``fn``'s engine stops at its next
        progress call and the thread ends on its own.
        """
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["value"] = fn(*args)
            except BaseException as err:  # noqa: BLE001 -- handed to the handler's thread below
                outcome["error"] = err

        thread = threading.Thread(target=work, name=f"{self.name}-run", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(POLL_S)
                if thread.is_alive():
                    yield idle
        except GeneratorExit:
            self.cancelled_by = "cancelled"
            raise
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]
