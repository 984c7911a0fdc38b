"""Batch mode: run one engine over a folder of images (or a file of prompts), resumably and safely.

Every engine CLI subcommand (``ipseg``, ``trident``, ``generate``, ``story``) uses this module, so a
folder run behaves the same everywhere:

* **Items.** :func:`image_items` walks an input file or folder (``recursive``, extension filter;
  symlinked files are used only when they point inside the input folder, symlinked folders are never
  entered); :func:`prompt_items` reads one prompt per line of a text file (blank lines and ``#``
  comments skipped; a line that is a JSON object gives ``item.params``, its ``"prompt"`` the text);
  :func:`file_items` walks any other kind of file (e.g. ``.txt`` stories). Each :class:`Item` has a
  stable relative ``id`` (``"sub/cat.jpg"``, ``"00003-a-red-fox"``) and a stable ``index`` (its place
  in the sorted list of all items); outputs mirror the input tree as ``<OUT>/<stem>.<suffix>``.
* **Engine contract.** ``make_processor()`` is called once per worker (once locally, once per Ray
  actor) and loads the models and computes prompt/text features once; it returns either a callable
  ``process(item) -> result`` or an object with ``process(item)`` and, optionally,
  ``process_batch(items) -> list[result | Exception]`` (used with ``--batch-size`` > 1). Inside,
  ``item.image()`` gives the RGB uint8 array (via :func:`vision.imaging.load_image`, prefetched in a
  thread; bad files raise :class:`vision.imaging.ImageError`), ``item.text`` the prompt. A result
  has ``to_files() -> {suffix: PIL.Image | ndarray | bytes | str | dict}`` (suffix like
  ``"mask.png"``, ``"overlay.jpg"``; images are encoded by the suffix's extension) and
  ``to_record() -> dict`` (JSON-able scores etc.); :class:`BatchResult` is a ready-made one. Raise
  :class:`Skip` to decline an item (status ``"skipped"``); any other exception is recorded as an
  error for that item and the run goes on. If ``make_processor()`` itself fails (missing weights...)
  nothing can run: :class:`EngineStartError` (the CLI helper prints it and exits with 2).
* **Outputs.** Each file is written atomically (temp file in the same folder, then ``os.replace``);
  the item's ``results.jsonl`` line is appended last, so an item is complete exactly when it has a
  line whose files all exist. Lines: ``{"id", "status": "ok"|"skipped"|"error", "input",
  "outputs": {suffix: path relative to OUT}, "seconds", ...to_record()}``. Failures also go to
  ``errors.jsonl`` (``{"id", "input", "error", "reason"}``, plus ``"traceback"`` for unexpected
  engine exceptions).
* **Resume.** Rerunning the same command skips complete items (summary: "skipped"), retries failed
  or unfinished ones, deletes temp files left by a killed run, and never leaves two lines for one
  item (stale lines of re-processed items are dropped first, atomically). ``settings`` (a dict of the
  options that change outputs) is hashed into each line: rerunning with other settings redoes items.
* **Safety.** Never writes outside the output folder (every target is resolved and checked, so
  ``..`` ids and symlinks in the output tree are refused), opens inputs read-only, refuses an output
  folder inside the input folder unless ``allow_output_inside_input=True`` (then that folder is not
  read as input), and never writes into the input folder otherwise.
* **One run per folder.** A run claims its output folder for its whole length (:mod:`.lock`): a
  second run over the same items stops at once with a message naming the first one's PID and host;
  the claim of a run that died (kill -9) is taken over.
* **Scale-out.** ``shard=(i, n)`` keeps the items whose stable id hash is ``i`` mod ``n`` (``--shard
  I/N``; the shards of one split may run at once on one output folder). ``ray=True`` runs the engine in Ray Data
  actors (one ``make_processor()`` per actor; ``ray`` is an optional dependency) and writes the
  same files through the same writer. ``coco_json=PATH`` writes COCO RLE annotations of the mask
  outputs (``pycocotools``).
* A tqdm progress bar (images/s, ETA) and a summary (done, skipped, failed); exit code 1 when any
  item failed, 130 when interrupted, 2 for unusable arguments or an engine that cannot start.
  ``--device`` is the global one of ``python -m vision`` (added here only to parsers without it).
  ``Item.stem`` keeps the extension (``cat.jpg.mask.png``) when two inputs share a stem.

The package, by what each module holds (each depends only on those above it):

* :mod:`.errors` -- ``BatchError``, ``EngineStartError``, ``OutputInUseError``, ``Skip``;
* :mod:`.items` -- :class:`Item`, walking folders, prompts files, shards;
* :mod:`.encoding` -- results to bytes (by suffix) and records to JSON; :class:`BatchResult`;
* :mod:`.worker` -- one processor applied to items, giving picklable outcomes;
* :mod:`.lock` -- the bookkeeping lock and the run lock of an output folder;
* :mod:`.writer` -- safe, atomic outputs, ``results.jsonl`` / ``errors.jsonl``, resume state;
* :mod:`.coco` -- COCO RLE export of mask outputs;
* :mod:`.ray_runner` -- the Ray Data runner (optional ``ray``);
* :mod:`.runner` -- :func:`run_batch`, the local runner, :class:`Summary`;
* :mod:`.cli` -- :func:`add_batch_arguments` and :func:`run_from_args` for ``vision/commands/*``.

Usage from an engine's CLI module (``vision/commands/<engine>.py``)::

    import functools
    from vision import batch

    def add_arguments(parser):
        parser.add_argument("--classes", required=True)
        batch.add_batch_arguments(parser)          # --input --output --recursive --ext --batch-size
                                                   # --shard --coco-json --ray ... (--device if absent)

    def make_processor(classes):                   # top level, so Ray can pickle it
        engine = TridentEngine()                   # models: once per worker
        return lambda item: engine(item.image(), classes)  # a result with to_files()/to_record()

    def run(args):
        return batch.run_from_args(args, functools.partial(make_processor, args.classes.split(",")),
                                   settings={"classes": args.classes})

or from Python::

    summary = batch.run_batch(batch.image_items("photos", recursive=True), "out", make_processor)
    print(summary.done, summary.skipped, summary.failed, summary.exit_code)
"""

from vision.batch.cli import add_batch_arguments, items_from_args, run_from_args
from vision.batch.coco import write_coco_json
from vision.batch.encoding import BatchResult, encode_files
from vision.batch.errors import BatchError, EngineStartError, OutputInUseError, Skip
from vision.batch.items import (
                                IMAGE_EXTENSIONS,
                                Item,
                                file_items,
                                image_items,
                                parse_shard,
                                prompt_items,
                                select_shard,
                                shard_of,
)
from vision.batch.lock import RunLock, host_tag
from vision.batch.runner import Summary, check_output_folder, run_batch
from vision.batch.worker import Outcome, start_processor
from vision.batch.writer import ERRORS_NAME, RESULTS_NAME, TMP_TAG, Writer, read_jsonl

__all__ = [
    "IMAGE_EXTENSIONS", "Item", "BatchResult", "Skip", "BatchError", "EngineStartError", "OutputInUseError",
    "Summary", "image_items", "file_items", "prompt_items", "select_shard", "parse_shard", "shard_of",
    "run_batch", "add_batch_arguments", "run_from_args", "items_from_args", "encode_files", "check_output_folder",
    "write_coco_json", "Outcome", "start_processor", "Writer", "RunLock", "host_tag", "RESULTS_NAME", "ERRORS_NAME",
    "TMP_TAG", "read_jsonl",
]
