"""Words a user reads in messages: counts with the right plural, and the command line to advise.

Advice names commands in the form that runs where the user is: when this process runs on the project's
own virtual environment (``.venv``, made by the README's set-up command, usually not activated), that
is ``.venv/bin/python -m vision ...``; otherwise the active interpreter's ``python -m vision ...``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROJECT_VENV = PROJECT_ROOT / ".venv"


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``plural(1, "frame")`` -> ``"1 frame"``; ``plural(2, "pass", "passes")`` -> ``"2 passes"``."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


def speed_change(before_s: float, after_s: float) -> str:
    """How much faster the second of two timings is, as words: ``"2.31x faster"``, or for a slowdown
    ``"1.10x slower"`` (never ``"0.91x faster"``)."""
    return speedup_words(before_s / after_s)


def speedup_words(speedup: float) -> str:
    """A speed-up (time before / time after) as :func:`speed_change`'s words."""
    return f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"


def shorten(text: str, limit: int = 80) -> str:
    """``text`` as it may be echoed in a message: at most ``limit`` characters, cut with an ellipsis and
    its length said (a pasted 10,000-character name must not fill the page)."""
    return text if len(text) <= limit else f"{text[:limit - 1]}… ({len(text)} characters)"


def _in_project_venv() -> bool:
    try:
        return Path(sys.prefix).resolve() == PROJECT_VENV.resolve()
    except OSError:
        return False


def _program(name: str) -> str:
    """``.venv/bin/NAME`` (``.venv\\Scripts\\NAME`` on Windows) on the project's venv (relative to the
    project folder, where the README's commands run), else the bare ``NAME`` of the active environment."""
    if not _in_project_venv():
        return name
    return os.path.join(".venv", "Scripts" if os.name == "nt" else "bin", name)


def python_command() -> str:
    """``.venv/bin/python`` when running on the project's venv, else ``python``."""
    return _program("python")


def vision_command(*words: str) -> str:
    """The command line that runs ``python -m vision WORDS...`` here, e.g. ``vision_command("weights",
    "list")`` -> ``".venv/bin/python -m vision weights list"``."""
    return " ".join([python_command(), "-m", "vision", *words])


def pip_install(requirement: str) -> str:
    """The command that installs ``requirement`` into the running environment (``.venv/bin/pip install ...``
    on the project's venv, as in the README's set-up command)."""
    return f"{_program('pip')} install {requirement}"
