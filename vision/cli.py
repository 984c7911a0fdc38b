"""``python -m vision``: one subcommand per module of :mod:`vision.commands`.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``, and
imports nothing heavy at module level: ``--help`` and start-up import no engine, torch or numpy. Only the
chosen subcommand's ``add_arguments`` runs (it may import its engine for defaults and choices).
Global options: ``--tiny`` (random-weight tiny models, also ``VISION_TINY=1``) and ``--device``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

from vision import commands
from vision.wording import vision_command

GLOBAL_OPTIONS_WITH_VALUE = ("--device",)


def command_modules() -> list:
    found = [importlib.import_module(f"vision.commands.{m.name}") for m in pkgutil.iter_modules(commands.__path__)]
    return sorted(found, key=lambda m: m.NAME)


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (its first word that is not a global option or its value)."""
    words = iter(argv)
    for word in words:
        if word in GLOBAL_OPTIONS_WITH_VALUE:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of ``python -m vision``. Given the ``argv`` it will parse, only the subcommand named there
    gets its arguments (so parsing imports no other engine); without, every subcommand gets them."""
    chosen = None if argv is None else chosen_command(argv)
    parser = argparse.ArgumentParser(prog=vision_command(), description="Training-free vision: IPSeg, "
                                     "Trident, Stable Diffusion with DeepCache, Story-Adapter.")
    parser.add_argument("--tiny", action="store_true", help="use tiny random-weight models (outputs are noise)")
    parser.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: best available)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in command_modules():
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        sub.set_defaults(run=module.run)
        if argv is not None and module.NAME != chosen:
            continue
        # Accept the global options after the subcommand too (`vision ipseg --tiny ...`).
        sub.add_argument("--tiny", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument("--device", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        module.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    if args.tiny or args.device:
        from vision.hub import ModelHub, set_hub

        if args.tiny:
            os.environ["VISION_TINY"] = "1"
        set_hub(ModelHub(tiny=args.tiny, device=args.device))
    if args.tiny:
        from vision.tiny import TINY_NOTICE

        print(TINY_NOTICE, file=sys.stderr)
    from vision.weights import WeightsError

    try:
        return args.run(args)
    except WeightsError as err:  # missing or damaged weights: the message says what to do, no traceback
        print(f"{args.command}: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `... | head` stopped reading: not a failure; silence Python's exit-time flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
