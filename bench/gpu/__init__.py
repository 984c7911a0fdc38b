"""Every GPU figure of the project in one run: ``python -m vision bench gpu`` (issue 16).

Full-size architectures with random weights (speed and memory do not depend on weight values), fp16 on
CUDA with SAM in fp32 (the hub's policy), fixed seeds, warm-up runs first, times from CUDA events
(``bench.common.timed_call``) or synchronised clocks. The parts, in order of value:

1. ``deepcache``: SD1.5 512^2, 50 steps, DDIM and PLMS, CFG (UNet batch 2): no cache vs ours at N in
   {2, 3, 5, 8} x b in {0, 1}, uniform and non-uniform, and the PyPI ``DeepCacheSDHelper`` (uniform: it
   has no other schedule) in the same back-to-back blocks; % of the MAC limit S(N) (FlopCounterMode, as
   ``bench/deepcache.py`` counts it); the N = 1 bit-identity check.
2. ``sdxl``: SDXL 1024^2, 30 steps, CFG: no cache vs N = 3, 5 (b = 0, 1).
3. ``trident``: CLIP B/16 + DINO B/16 + SAM-B on VOC-size images (500x375, voc21): images/s through the
   batch runner, pipeline time / sum of the model forwards timed alone; CLIP H/14 + SAM-H per image.
4. ``ipseg``: DINOv2-B + SD1.5 features + SAM-H at the paper's sizes, prompt cached: seconds per
   target, overhead ratio over the model forwards, the prompt cache's gain.
5. ``story``: Story-Adapter on SD1.5 512^2, one round of 8 frames with DeepCache N = 3 vs off; peak
   memory of a round with 20 reference frames.
6. ``memory``: every engine's default models resident at once: allocated and reserved GPU memory, each
   model's share (the Models tab's numbers) and the peak of one call of each engine.
7. ``story_sdxl``: Story on SDXL at 1024^2 with the memory options on (sdxl and reference presets, and
   every option off for comparison): peak GPU memory of a round-1 frame (goal: under 16 GB).
8. ``compile``: part 1 with ``torch.compile`` (DDIM; compiled plain UNet vs ours compiled at N = 3, 5,
   b = 1; N = 1 compiled vs the compiled plain UNet). Last: its compilations cost the most device time
   per figure.

Each part estimates its cost first (priors for an H200, rescaled once part 1 has timed a generation) and
is skipped with a note when it would not fit in what is left of ``--budget-s``; inside a part, loops
stop when the budget is spent. Each table is printed and appended to ``--out`` as soon as it is ready,
so a run cut short still leaves its results; the report's header names the GPU, driver, torch and CUDA.
A part that fails is reported with its error and the run goes on (exit code 1 at the end).

    python -m vision bench gpu                          # on a GPU: full run, bench/results/gpu.md
    python -m vision bench gpu --device cpu --smoke     # dry run: tiny models, every part, seconds

The GPU machine lacks some pure-Python packages: ``bash bench/gpu-wheels.sh`` puts them in ``.whl/``;
:data:`DEVICE_CALL` below is the device tool's call for the first session lent a GPU (the report comes
back as ``$OUT/gpu.md``). Files: ``harness.py`` (sizes, budget, report, shared helpers), ``diffusion.py``
(parts 1, 2, 8), ``segmentation.py`` (3, 4), ``story_memory.py`` (5, 6), ``story_sdxl.py`` (7).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from bench.common import add_save_option, gpu_info, machine, report_path
from bench.gpu.diffusion import part_compile, part_deepcache, part_sdxl
from bench.gpu.harness import Run, memory_text, table
from bench.gpu.segmentation import part_ipseg, part_trident
from bench.gpu.story_memory import default_models, part_memory, part_story
from bench.gpu.story_sdxl import part_story_sdxl
from vision.wording import vision_command

__all__ = ["DEVICE_CALL", "DEVICE_COMMAND", "PARTS", "default_models", "main"]

DEVICE_COMMAND = (
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
    ".whl/*.whl && export PYTHONPATH=/tmp/site || exit; set -o pipefail; export PYTHONUNBUFFERED=1 "
    "VISION_OFFLINE=1 HF_HUB_OFFLINE=1; nvidia-smi; timeout 560 python3 -m vision bench gpu --budget-s 480 "
    "--out $OUT/gpu.md 2>&1 | tee $OUT/gpu.log")
DEVICE_CALL = f'run(command="{DEVICE_COMMAND}", carry=[".whl"], timeout_s=600)'


PARTS = [
    ("deepcache", "1. DeepCache on SD1.5 (ours vs the PyPI helper)", part_deepcache),
    ("sdxl", "2. DeepCache on SDXL", part_sdxl),
    ("trident", "3. Trident", part_trident),
    ("ipseg", "4. IPSeg", part_ipseg),
    ("story", "5. Story-Adapter", part_story),
    ("memory", "6. All engines' default models resident", part_memory),
    ("story_sdxl", "7. Story on SDXL 1024^2: peak memory with the memory options", part_story_sdxl),
    ("compile", "8. DeepCache with torch.compile (part 1, compiled)", part_compile),
]


def header(run: Run, argv: list[str]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    info, gpu = machine(), gpu_info()
    packages = []
    for name in ("diffusers", "transformers", "open_clip_torch", "segment-anything", "DeepCache", "numpy"):
        try:
            packages.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            packages.append(f"{name} not installed")
    gpu_line = (f"{gpu['name']} x{gpu['count']} ({gpu['memory_gib']} GiB, {gpu['multiprocessors']} SMs, "
                f"{gpu['capability']}), driver {gpu['driver']}, CUDA {gpu['cuda']} (torch's), cuDNN {gpu['cudnn']}"
                if gpu else "none (CPU run)")
    lines = [f"# GPU benchmark: every figure in one run ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"- GPU: {gpu_line}",
             f"- torch {torch.__version__}, Python {platform.python_version()}; " + ", ".join(packages),
             f"- machine: `{info['uname']}`; CPU {info['cpu']} ({info['cpu_count']} cores)",
             f"- command: `python -m vision bench gpu {' '.join(argv)}`; budget {run.budget.seconds:.0f} s; device "
             f"{run.device}; " + ("**SMOKE RUN: tiny random-weight models, sizes cut down: the numbers are noise "
                                  "(a dry run of the harness)**" if run.smoke else
                                  "full-size architectures with random weights (speed does not depend on weights)"),
             f"- device tool call that makes this report on a lent GPU (after `bash bench/gpu-wheels.sh`): "
             f"`{DEVICE_CALL}`"]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=vision_command("bench", "gpu"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=480, help="seconds for all parts together (default 480)")
    parser.add_argument("--out", default=None, help="the Markdown report (default: gpu.md, gpu_smoke.md with "
                        "--smoke, in the system's temporary folder; --save: in bench/results/)")
    add_save_option(parser, "the report (gpu.md, gpu_smoke.md with --smoke)")
    parser.add_argument("--device", default=None, help="cuda (default) or cpu (with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="dry run: tiny models, small sizes, every part")
    parser.add_argument("--parts", default=",".join(p[0] for p in PARTS), help="comma-separated subset of the parts")
    return parser.parse_args(argv)


def report_output(args: argparse.Namespace) -> Path:
    """The report's file: ``--out``, or ``bench/results/`` with ``--save``, else the temporary folder (the
    report is written as the parts finish, so a killed run keeps what it measured)."""
    name = "gpu_smoke.md" if args.smoke else "gpu.md"
    return report_path(args, name, args.out) or Path(tempfile.gettempdir()) / f"vision-bench-{name}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: the dry run is --device cpu --smoke", file=sys.stderr)
        return 2
    if device == "cpu" and not args.smoke:
        print("full-size models on a CPU would not finish in any budget: use --smoke, or a GPU", file=sys.stderr)
        return 2
    unknown = set(args.parts.split(",")) - {p[0] for p in PARTS}
    if unknown:
        print(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(p[0] for p in PARTS)}",
              file=sys.stderr)
        return 2
    os.environ.setdefault("VISION_OFFLINE", "1")  # everything is built here; never download
    if args.smoke:
        os.environ["VISION_TINY"] = "1"
        if device == "cpu":
            torch.set_num_threads(1)  # tiny models gain nothing from threads, which on shared cores wait long
    out = report_output(args)
    run = Run(device, args.smoke, args.budget_s, out)
    run.report.write(header(run, argv))
    summary = []
    for key, title, function in PARTS:
        if key not in args.parts.split(","):
            continue
        estimate, left = run.estimate(key), run.budget.left()
        if estimate > left:
            run.report.write(f"## {title}\n\n**Skipped**: estimated {estimate:.0f} s, {max(left, 0):.0f} s of the "
                             "budget left.")
            summary.append([title, "skipped", f"{estimate:.0f}", "-"])
            continue
        run.report.write(f"## {title}")
        if run.cuda:
            torch.cuda.reset_peak_memory_stats()
        started, built_before, status = time.perf_counter(), set(run.built), "done"
        try:
            function(run)
        except Exception as err:  # report it and go on: the lease is too short to stop at one broken part
            status = "FAILED"
            tail = "".join(traceback.format_exception(err)[-6:])
            run.report.write(f"**Failed**: {type(err).__name__}: {err}\n\n```\n{tail}```")
        finally:
            gc.collect()
            if run.cuda:
                torch.cuda.empty_cache()
        seconds = time.perf_counter() - started
        built = {n: v for n, v in run.built.items() if n not in built_before}
        run.report.write(f"Part time {seconds:.1f} s (estimated {estimate:.0f} s); {memory_text(run)}"
                         + ("; models built: " + ", ".join(f"{n} {v:.1f} s" for n, v in built.items()) if built else "")
                         + ".")
        summary.append([title, status, f"{estimate:.0f}", f"{seconds:.1f}"])
    run.report.write("## Summary\n\n" + table(["part", "status", "estimated s", "took s"], summary)
                     + f"\n\nTotal {run.budget.used():.1f} s of the {run.budget.seconds:.0f} s budget.")
    return 1 if any(row[1] == "FAILED" for row in summary) else 0
