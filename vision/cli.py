"""``python -m vision``: one subcommand per module of :mod:`vision.commands`.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
Global options: ``--tiny`` (random-weight tiny models, also ``VISION_TINY=1``) and ``--device``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from vision import commands


def command_modules() -> list:
    found = [importlib.import_module(f"vision.commands.{m.name}") for m in pkgutil.iter_modules(commands.__path__)]
    return sorted(found, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vision", description="Training-free vision: IPSeg, "
                                     "Trident, Stable Diffusion with DeepCache, Story-Adapter.")
    parser.add_argument("--tiny", action="store_true", help="use tiny random-weight models (outputs are noise)")
    parser.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: best available)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in command_modules():
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        # Accept the global options after the subcommand too (`vision ipseg --tiny ...`).
        sub.add_argument("--tiny", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument("--device", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tiny or args.device:
        from vision.hub import ModelHub, set_hub

        if args.tiny:
            os.environ["VISION_TINY"] = "1"
        set_hub(ModelHub(tiny=args.tiny, device=args.device))
    if args.tiny:
        from vision.tiny import TINY_NOTICE

        print(TINY_NOTICE, file=sys.stderr)
    return args.run(args)
