"""Command-line glue: the shared batch options of every engine subcommand (:func:`add_batch_arguments`)
and a batch run from the parsed options (:func:`run_from_args`, which prints errors and returns the
exit code).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vision.batch.errors import BatchError
from vision.batch.items import IMAGE_EXTENSIONS, Item, file_items, prompt_items
from vision.batch.runner import check_output_folder, run_batch
from vision.wording import pip_install


def _add(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *flags: str, **kwargs: Any) -> None:
    container = parser
    existing = getattr(container, "_option_string_actions", {})
    if any(flag in existing for flag in flags):
        return  # the engine defines it already (e.g. its own --output): that one is used
    container.add_argument(*flags, **kwargs)


def add_batch_arguments(parser: argparse.ArgumentParser, *, inputs: str = "images", input_flag: bool = True) -> None:
    """Add the shared batch options to an engine subcommand's parser.

    ``inputs``: "images" (``--input`` is an image or folder), "prompts" (a prompts file) or "files".
    ``input_flag=False`` leaves ``--input`` out (the engine has its own positional input and passes
    it to :func:`run_from_args`). Options the parser already has (``--device``, ``--output``...) are
    not added again.
    """
    group = parser.add_argument_group("batch mode", "Run over a folder (or a prompts file): resumable; "
                                      "results.jsonl and errors.jsonl in the output folder.")
    what = {"images": "an image file or a folder of images", "prompts": "a text file, one prompt per line",
            "files": "a file or a folder of input files"}.get(inputs, inputs)
    if input_flag:
        _add(group, "--input", "-i", dest="input", help=f"input: {what}")
    _add(group, "--output", "-o", dest="output", help="output folder (mirrors the input tree; "
         "results.jsonl and errors.jsonl inside)")
    if inputs != "prompts":
        _add(group, "--recursive", "-r", action="store_true", help="also read sub-folders")
        _add(group, "--ext", default=None, help="comma-separated extensions to read from a folder "
             f"(default: {','.join(IMAGE_EXTENSIONS) if inputs == 'images' else 'all'})")
        _add(group, "--allow-output-inside-input", action="store_true",
             help="allow an output folder inside the input folder (it is then not read as input)")
    _add(group, "--batch-size", type=int, default=1, help="items per engine call (engines that batch)")
    _add(group, "--device", help="cuda, cuda:1, mps or cpu (default: best available)")
    _add(group, "--shard", default=None, metavar="I/N", help="process only shard I of N (0-based), for "
         "several processes or GPUs; the N shards together cover every item once")
    _add(group, "--overwrite", action="store_true", help="redo items that are already complete")
    _add(group, "--coco-json", nargs="?", const="coco.json", default=None, metavar="PATH",
         help="also write COCO RLE annotations of the masks (default name coco.json, in the output folder)")
    _add(group, "--no-progress", action="store_true", help="no progress bar")
    _add(group, "--ray", action="store_true",
         help=f"run the engine in Ray Data actors ({pip_install(repr('ray[data]'))})")
    _add(group, "--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    _add(group, "--ray-actors", type=int, default=None, help="number of Ray actors (default: one per GPU, or 2)")
    _add(group, "--ray-gpus-per-actor", type=float, default=None, help="GPUs per actor (default: 1 if "
         "the cluster has GPUs, else 0)")


def items_from_args(args: argparse.Namespace, inputs: str = "images", input_path: Any = None) -> list[Item]:
    """The items named by parsed batch arguments."""
    source = input_path if input_path is not None else getattr(args, "input", None)
    if source is None:
        raise BatchError("no input given (a file or folder, or a prompts file)")
    if inputs == "prompts":
        return prompt_items(source)
    exclude = getattr(args, "output", None) if getattr(args, "allow_output_inside_input", False) else None
    ext = getattr(args, "ext", None)
    if inputs == "files" and ext is None:
        ext = ()  # every file
    return file_items(source, recursive=getattr(args, "recursive", False), extensions=ext,
                      kind="image" if inputs == "images" else "file", exclude=exclude)


def run_from_args(args: argparse.Namespace, make_processor: Callable[[], Any], *, inputs: str = "images",
                  settings: dict | None = None, input_path: Any = None, output: Any = None,
                  items: Sequence[Item] | None = None) -> int:
    """Run a batch from :func:`add_batch_arguments` options; returns the exit code (prints errors)."""
    try:
        out = output if output is not None else getattr(args, "output", None)
        if out is None:
            raise BatchError("no output folder given (--output)")
        source = input_path if input_path is not None else getattr(args, "input", None)
        # a single input file may have its outputs beside or below it (only that file is read)
        allow_inside = getattr(args, "allow_output_inside_input", False) or (
            source is not None and Path(source).is_file())
        if items is None:
            if inputs != "prompts" and source is not None:
                check_output_folder(source, out, allow_inside)
            items = items_from_args(args, inputs, source)
        if not items:
            print(f"batch: no input items found in {source}", file=sys.stderr)
            return 1
        root = None
        if inputs != "prompts" and source is not None:
            given = Path(source)
            root = given if given.is_dir() else given.parent
        ray_options = {
            "address": getattr(args, "ray_address", None), "num_actors": getattr(args, "ray_actors", None),
            "num_gpus": getattr(args, "ray_gpus_per_actor", None), "tiny": bool(getattr(args, "tiny", False)),
            "device": getattr(args, "device", None),
        }
        device = getattr(args, "device", None)
        if device and not getattr(args, "ray", False):
            from vision.hub import ModelHub, get_hub, set_hub

            hub = get_hub()
            if hub.device != device:  # a parser outside vision.cli: honour --device here
                budget = hub.memory_budget_bytes / 2**30 if hub.memory_budget_bytes else None
                set_hub(ModelHub(tiny=hub.tiny, device=device, memory_budget_gb=budget, weight_paths=hub.weight_paths))
        summary = run_batch(items, out, make_processor, batch_size=getattr(args, "batch_size", 1) or 1,
                            shard=getattr(args, "shard", None), settings=settings, input_root=root,
                            allow_output_inside_input=allow_inside,
                            overwrite=getattr(args, "overwrite", False),
                            progress=not getattr(args, "no_progress", False),
                            coco_json=getattr(args, "coco_json", None), ray=getattr(args, "ray", False),
                            ray_options=ray_options)
        return summary.exit_code
    except BatchError as err:
        print(f"batch: {err}", file=sys.stderr)
        return 2
