"""GF-SAM vs IPSeg per target, side by side in one run, on FULL-SIZE architectures with random weights.

Issue 22's speed goal: per target, GF-SAM with DINOv2-B features costs at most 0.5x IPSeg's default
preset. Both engines share one :class:`vision.hub.ModelHub` holding full-size random-weight models built
from their real configurations (:func:`bench.ipseg.full_size_hub`: DINOv2 ViT-B/14, the SD1.5 UNet, VAE
and text encoder, SAM ViT-B; nothing downloaded; a network's speed does not depend on its weights):

* **IPSeg**: ``IPSegConfig.from_preset("default")``: DINOv2-B at 840 + SD1.5 at 960 + SAM-B + PerSAM's
  cascade;
* **GF-SAM**: ``IPSegConfig.for_method("gfsam", "gfsam", reference=False, dino_model="dinov2_b14",
  sam_model="sam_b")``: the paper's 518 input, DINOv2-B instead of -L, the same SAM-B as IPSeg, our
  default frame (``gfsam_reference`` off), up to 128 point prompts.

The prompt is cached first (a batch pays it once); then each target runs through IPSeg and GF-SAM in
turn (alternated, so both see the same machine), ``--repeats`` times, the best kept. With random weights
the number of GF-SAM points is whatever the maps give, so the report also times SAM's decoder on 128
single-point prompts alone and gives the ratio with that worst case put in.

On a CPU the measure is the process's CPU time with one torch thread (the work done, whatever else the
machine runs), the wall clock beside it; on CUDA the wall clock.

    python -m vision bench gfsam --threads 1 --save        # the recorded CPU result: bench/results/gfsam.md
    python -m vision bench gfsam --device cuda --repeats 3 --out bench/results/gfsam_gpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/gfsam.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.common import add_save_option, machine, report_path
from bench.ipseg import _load, full_size_hub, timed
from vision.wording import vision_command

os.environ.setdefault("VISION_OFFLINE", "1")  # everything is built here; never download

GOAL = 0.5  # issue 22: GF-SAM (DINOv2-B) per target <= 0.5 x IPSeg's default preset


def engines(hub):
    """(IPSeg's default preset, GF-SAM with DINOv2-B) on the same hub."""
    from vision.engines.ipseg import IPSegConfig, IPSegEngine

    ipseg = IPSegConfig.from_preset("default")
    gfsam = IPSegConfig.for_method("gfsam", "gfsam", reference=False, dino_model="dinov2_b14", sam_model="sam_b")
    return IPSegEngine(ipseg, hub=hub), IPSegEngine(gfsam, hub=hub)


def decoder_128(hub, device: str) -> tuple[float, float]:
    """(wall, CPU) seconds of SAM-B's prompt encoder + mask decoder on 128 single-point prompts in batches
    of 64 (GF-SAM's most), on a ready embedding."""
    sam = hub.get("sam_b")
    size = sam.image_encoder.img_size
    with torch.no_grad():
        emb = sam.image_encoder(torch.randn(1, 3, size, size, device=device))
        pe = sam.prompt_encoder.get_dense_pe()

        def run():
            for _ in range(2):
                coords = torch.rand(64, 1, 2, device=device) * size
                sparse, dense = sam.prompt_encoder(points=(coords, torch.ones(64, 1, device=device)), boxes=None,
                                                   masks=None)
                sam.mask_decoder(image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sparse,
                                 dense_prompt_embeddings=dense, multimask_output=False)

        return timed(run, device)


def measure(args, hub, device: str) -> dict:
    """Per-target (wall, CPU) seconds of both engines, alternated over the targets and repeats."""
    from vision.engines.ipseg import Prompt
    from vision.imaging import sample_image

    ipseg, gfsam = engines(hub)
    prompt = Prompt(sample_image("chelsea"), box=(120, 40, 340, 290))
    names = ["coffee", "astronaut", "rocket"]
    targets = [sample_image(names[i % len(names)]) for i in range(args.n)]
    for engine in (ipseg, gfsam):
        engine.prepare(prompt)  # the prompt pass, cached: a batch pays it once
        if args.warmup:
            engine(prompt, targets[0])
    runs = {"ipseg": [], "gfsam": []}
    results = {}
    for _ in range(args.repeats):
        for target in targets:
            for name, engine in (("ipseg", ipseg), ("gfsam", gfsam)):
                out = []
                runs[name].append(timed(lambda e=engine, t=target, o=out: o.append(e(prompt, t)), device))
                results[name] = out[0]
    graph = results["gfsam"].concepts[0].graph
    return {"runs": runs, "results": results, "points": len(graph.points), "configs": (ipseg.config, gfsam.config)}


def report_lines(args, argv, device, measured, decoder, loads, build_s) -> tuple[list[str], dict]:
    cuda = device.startswith("cuda")
    pick = 0 if cuda else 1
    clock = "wall-clock" if cuda else "process CPU"
    n = args.n
    # per target: the best repeat of each target, averaged over the targets
    per = {name: [min(r[pick] for r in runs[i::n]) for i in range(n)] for name, runs in measured["runs"].items()}
    per_wall = {name: [min(r[0] for r in runs[i::n]) for i in range(n)] for name, runs in measured["runs"].items()}
    mean = {k: sum(v) / len(v) for k, v in per.items()}
    mean_wall = {k: sum(v) / len(v) for k, v in per_wall.items()}
    ratio = mean["gfsam"] / mean["ipseg"]
    stages = {k: {s: round(v, 3) for s, v in r.timings.items()} for k, r in measured["results"].items()}
    # fewer than 128 points timed: add the decoder time of the missing ones (its 128-prompt time, pro rata)
    missing = 1 - measured["points"] / 128
    worst = (mean["gfsam"] + missing * decoder[pick]) / mean["ipseg"]
    info = machine()
    ipseg_cfg, gfsam_cfg = measured["configs"]
    report = {"machine": info, "device": device, "clock": clock, "load_average_before": loads[0],
              "load_average_after": loads[1], "n_targets": n, "repeats": args.repeats, "warmup": args.warmup,
              "ipseg": {"preset": ipseg_cfg.preset, "features": ipseg_cfg.features, "dino_size": ipseg_cfg.dino_size,
                        "sd_size": ipseg_cfg.sd_size, "sam": ipseg_cfg.sam_model},
              "gfsam": {"preset": gfsam_cfg.preset, "reference": gfsam_cfg.reference, "dino": gfsam_cfg.dino_model,
                        "dino_size": gfsam_cfg.dino_size, "sam": gfsam_cfg.sam_model, "points": measured["points"]},
              "per_target_seconds": {k: round(v, 3) for k, v in mean.items()},
              "per_target_wall_seconds": {k: round(v, 3) for k, v in mean_wall.items()},
              "ratio": round(ratio, 3), "ratio_with_128_points": round(worst, 3), "goal": GOAL,
              "decoder_128_points_seconds": round(decoder[pick], 3), "stages_wall": stages,
              "build_seconds": round(build_s, 1)}
    lines = [
        "# GF-SAM vs IPSeg per target (full-size architectures, random weights)", "",
        f"- machine: `{info['uname']}`", f"- CPU: {info['cpu']} ({info['cpu_count']} logical CPUs)"
        + (f"; GPU: {info['gpu']}" if "gpu" in info else ""),
        f"- torch {info['torch']}, diffusers {info['diffusers']}, transformers {info['transformers']}, "
        f"python {info['python']}, torch threads {info['torch_threads']}, device `{device}`",
        f"- load average (1/5/15 min) before: {loads[0]}; after: {loads[1]}",
        f"- IPSeg: preset `default` ({ipseg_cfg.feature_source}: DINOv2-B at {ipseg_cfg.dino_size} px, SD1.5 at "
        f"{ipseg_cfg.sd_size} px, SAM `{ipseg_cfg.sam_model}`, PerSAM's cascade)",
        f"- GF-SAM: DINOv2-B at {gfsam_cfg.dino_size} px, SAM `{gfsam_cfg.sam_model}`, product mode, "
        f"{measured['points']} point prompts in the timed run (at most {gfsam_cfg.max_points})",
        f"- {n} target(s), prompt cached, the engines alternated, best of {args.repeats} per target"
        + (", after a warm-up run each" if args.warmup else ", no warm-up run"),
        f"- measure: {clock} seconds" + ("" if cuda else " (wall-clock in brackets)"),
        f"- command: `python -m vision bench gfsam {' '.join(argv)}`", "",
        "| engine | seconds per target |", "|---|---|",
        *[f"| {k} | {mean[k]:.2f}" + ("" if cuda else f" ({mean_wall[k]:.2f})") + " |" for k in ("ipseg", "gfsam")],
        f"| **GF-SAM / IPSeg** (goal <= {GOAL}) | **{ratio:.3f}** |",
        *([f"| same with GF-SAM at 128 points (its decoder on 128 prompts alone: {decoder[pick]:.2f} s, added "
           f"for the {128 - measured['points']} points not timed) | {worst:.3f} |"] if missing > 0 else []), "",
        f"SAM-B's decoder on 128 single-point prompts alone: {decoder[pick]:.2f} s.", "",
        "Engine stages of the last timed target (wall clock, s):", "",
        *[f"- {k}: " + ", ".join(f"{s} {v}" for s, v in st.items()) for k, st in stages.items()], "",
        f"Model build: {build_s:.1f} s wall (not timed above).",
    ]
    return lines, report


def main(argv: list[str] | None = None) -> int:
    from vision.hub import best_device

    parser = argparse.ArgumentParser(prog=vision_command("bench", "gfsam"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--n", type=int, default=1, help="targets (default 1)")
    parser.add_argument("--repeats", type=int, default=1, help="repeats per target (best kept)")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                        help="one untimed run per engine first (default: on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="also write the report (Markdown) here, and .json beside it")
    add_save_option(parser, "the report (gfsam.md and .json)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    device = args.device or best_device()
    args.warmup = device.startswith("cuda") if args.warmup is None else args.warmup
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = _load()
    started = time.perf_counter()
    hub = full_size_hub(device, "sam_b", 1024, with_sd=True)
    build_s = time.perf_counter() - started
    measured = measure(args, hub, device)
    decoder = decoder_128(hub, device)
    lines, report = report_lines(args, argv, device, measured, decoder, (load_before, _load()), build_s)
    text = "\n".join(lines) + "\n"
    print(text)
    path = report_path(args, "gfsam.md", args.out)
    if path is not None:
        path.write_text(text, encoding="utf-8")
        path.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
