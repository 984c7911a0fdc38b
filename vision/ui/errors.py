"""Every exception of a request as a message in the page (``gr.Error``), never a stack trace.

Errors a user can fix (missing weights, a bad image, an invalid input) keep their message and get a
title; running out of memory (``torch.OutOfMemoryError`` or ``MemoryError``) frees the accelerator's cache
and says what to try; anything else is a bug: its traceback goes to the server log and the page names it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable

from vision.engines.contract import Cancelled
from vision.ui.memory import release_accelerator_memory, trim_freed_memory

log = logging.getLogger("vision.app")

ERROR_SECONDS = 30  # how long an error stays on screen (the user can close it sooner)
OUT_OF_MEMORY = ("The model ran out of memory. Try a smaller image, fewer steps or frames, or wait for other "
                 "requests to finish.")


def _user_message(err: BaseException) -> tuple[str, str] | None:
    """(title, message) for the errors a user can fix; None for bugs."""
    from vision.imaging import ImageError
    from vision.weights import WeightsError

    if isinstance(err, WeightsError):
        return "Model weights missing or damaged", str(err)
    if isinstance(err, ImageError):
        return "Bad image", str(err)
    if isinstance(err, ValueError):
        return "Invalid input", str(err)
    return None


def is_out_of_memory(err: BaseException) -> bool:
    """The accelerator (``torch.OutOfMemoryError``: CUDA, and other backends that raise it) or the host
    (``MemoryError``) ran out of memory."""
    import torch

    return isinstance(err, (torch.OutOfMemoryError, MemoryError))


def to_gr_error(err: BaseException):
    """The ``gr.Error`` shown in the page for ``err`` (never a stack trace; bugs are logged here)."""
    import gradio as gr

    if isinstance(err, gr.Error):
        return err
    if isinstance(err, Cancelled):  # its client left (vision.ui.runs): nobody may be reading this
        return gr.Error(as_html_text(str(err)), title="Stopped", duration=ERROR_SECONDS, print_exception=False)
    known = _user_message(err)
    if known is not None:
        title, message = known
        return gr.Error(as_html_text(message), title=title, duration=ERROR_SECONDS, print_exception=False)
    if is_out_of_memory(err):
        release_accelerator_memory()
        return gr.Error(OUT_OF_MEMORY, title="Out of memory", duration=ERROR_SECONDS, print_exception=False)
    log.error("unexpected error in a request", exc_info=err)  # the traceback goes to the server log only
    return gr.Error(as_html_text(f"{type(err).__name__}: {err}. The server log has the details; the app keeps "
                                 "serving."), title="Internal error", duration=ERROR_SECONDS, print_exception=False)


MARKUP = re.compile(r"<(?=[A-Za-z/!?])|&(?=[A-Za-z0-9#])")  # where HTML would start a tag or a character reference


def as_html_text(message: str) -> str:
    """``message`` as it must reach ``gr.Error`` so that the page shows it as written and API clients get it plain.

    Gradio sends the same message to both: gradio_client passes it on verbatim, the page renders it as
    (sanitised) HTML. Escaping everything reached API clients as ``&gt;=``; not escaping would make the page
    drop text such as ``<class 'int'>`` as an unknown tag. So only the two places where HTML would read
    markup are escaped: ``<`` before a letter, ``/``, ``!`` or ``?`` (a tag or comment) and ``&`` before a
    letter, digit or ``#`` (a character reference). ``>=``, ``a < b`` and ``x & y`` pass unchanged.
    """
    return MARKUP.sub(lambda m: "&lt;" if m.group() == "<" else "&amp;", message)


def friendly_errors(fn: Callable) -> Callable:
    """Wrap a Gradio handler (function or generator) so that exceptions become ``gr.Error`` messages
    and the memory a request freed goes back to the system afterwards (:func:`trim_freed_memory`).

    The wrapper keeps ``fn``'s signature, so ``gr.Progress`` defaults are still injected by Gradio.
    """
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 -- every error ends as a message, never a trace
                raise to_gr_error(err) from None
            finally:
                trim_freed_memory()
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            raise to_gr_error(err) from None
        finally:
            trim_freed_memory()
    return wrapper

