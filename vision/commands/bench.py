"""``python -m vision bench NAME [ARGS...]``: run the benchmark module ``bench/NAME.py``.

Every module in the repository's ``bench/`` folder that defines ``main(argv) -> int`` is a benchmark;
``ARGS`` are passed to it unchanged (``python -m vision bench deepcache --help`` shows its options).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

NAME = "bench"
HELP = "run a benchmark from bench/ (deepcache, ipseg, trident, story, ...); ARGS go to it"

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(BENCH_DIR)]) if not m.name.startswith("_"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="benchmark name (a module bench/NAME.py)")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments for the benchmark")


def run(args: argparse.Namespace) -> int:
    names = available()
    if args.name not in names:
        print(f"unknown benchmark {args.name!r}; available: {', '.join(names) or '(none)'}", file=sys.stderr)
        return 2
    root = str(BENCH_DIR.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(f"bench.{args.name}")
    if not callable(getattr(module, "main", None)):
        print(f"bench/{args.name}.py has no main(argv) function", file=sys.stderr)
        return 2
    return int(module.main(list(args.args)) or 0)
