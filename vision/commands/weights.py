"""``python -m vision weights list|download NAME...``"""

from __future__ import annotations

import argparse

from vision import weights

NAME = "weights"
HELP = "list the model weights (present or missing) or download them into weights/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="table of every model: name, source, size, present/missing")
    download = sub.add_parser("download", help="download models into weights/NAME/")
    download.add_argument("names", nargs="+", metavar="NAME", help=f"one or more of: {', '.join(weights.REGISTRY)}, or all")
    download.add_argument("--allow-no-npm", action="store_true",
                          help="a model that needs npm (sam_t) while npm is not installed: say why and go on "
                               "(exit 0 for that reason only; CI uses it before the tests)")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = [(s.name, s.source, f"{s.size_mb} MB", weights.status(s.name), s.license) for s in weights.REGISTRY.values()]
        header = ("name", "source", "size", "status", "licence")
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        print(f"\nweights folder: {weights.weights_dir()}")
        return 0
    names = list(weights.REGISTRY) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in weights.REGISTRY]
    if unknown:
        print(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(weights.REGISTRY)}")
        return 2
    failed = 0
    for name in names:
        try:
            print(f"{name}: {weights.resolve(name)}")
        except weights.NpmMissingError as err:
            print(err)
            if args.allow_no_npm:
                print(f"{name}: skipped (npm is not installed; tests that need it will skip and say so)")
            else:
                failed += 1
        except weights.WeightsError as err:
            print(err)
            failed += 1
    return 1 if failed else 0
