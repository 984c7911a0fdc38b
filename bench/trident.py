"""Trident benchmark: per-image time of the whole pipeline vs the sum of its model forwards timed alone.

The models are the FULL-SIZE architectures with random weights (speed does not depend on weight
values), injected into a hub with ``hub.put``: open_clip ``ViT-B-16-quickgelu`` (no pretrained
weights), transformers ``ViTModel(ViTConfig(patch_size=16))`` (DINO ViT-B/16's shape) and
segment_anything ``build_sam_vit_b(checkpoint=None)``. fp16 for CLIP and DINO on CUDA, SAM in fp32
(the hub's policy). The text embeddings of the class list are set once (random unit vectors): the
text encoder runs once per class list, not per image.

Per image, :meth:`TridentEngine.segment` (refinement on, the reference's evaluation setting) is timed
and compared with the same model calls timed alone on the same inputs: DINO on the batch of windows,
CLIP's full visual tower on the batch of windows, the SAM image encoder on the 1024 input, and one
``SamPredictor.predict_torch`` per prompted class with the batch sizes the pipeline used. The ratio
``pipeline / sum(forwards)`` is the overhead of everything Trident adds (windows, proxy attention,
splice, SAM affinity, logits, components, merge); the goal is <= 1.15. Runs are interleaved
(pipeline, forwards, pipeline, ...) and medians reported.

    python -m vision bench trident              # CPU defaults: VOC-size image, voc21, 1 warm-up, 1 run
    python -m vision bench trident --repeats 3  # the recorded CPU run (about 3x longer)
    python -m vision bench trident --device cuda --repeats 10

The results are printed; ``--save`` also writes ``bench/results/trident.md`` and ``.json`` (the recorded
ones), ``--out`` elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning, so that process CPU time (the default clock on CPU) counts
# work, not waiting. Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if __package__ in (None, ""):  # `python bench/trident.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench.common import add_save_option, machine, report_path
from vision.wording import vision_command


def full_size_hub(device: str):
    """A hub holding full-size, random-weight CLIP B/16, DINO B/16 and SAM-B (seeded)."""
    import open_clip
    from segment_anything import build_sam_vit_b
    from transformers import ViTConfig, ViTModel

    from vision.hub import ModelHub

    hub = ModelHub(tiny=False, device=device)
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16-quickgelu")  # no `pretrained`: random weights
    dino = ViTModel(ViTConfig(patch_size=16), add_pooling_layer=False)  # ViT-B defaults
    sam = build_sam_vit_b(checkpoint=None)
    for name, model in (("clip_b16", clip), ("dino_b16", dino), ("sam_b", sam)):
        hub.put(name, model.eval().to(device=device, dtype=hub.dtype_for(name)))
    return hub


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def timed(fn, device: str) -> float:
    """Seconds of ``fn()`` on the chosen clock: wall time, or on CPU by default the process's CPU time
    (all threads), which a machine shared with other jobs disturbs far less than wall time."""
    sync(device)
    start = clock()
    fn()
    sync(device)
    return clock() - start


@torch.no_grad()
def forwards_alone(hub, image: np.ndarray, config, decoder_batches: list[int], device: str) -> dict[str, float]:
    """Each model call of one image, timed on its own with the pipeline's input shapes."""
    from segment_anything.utils.transforms import ResizeLongestSide

    from vision.engines.trident import splice
    from vision.engines.trident.modes import mode_for
    from vision.sam import SamImage
    from vision.sam.backends import TorchBackend

    clip, dino, sam = hub.get(config.clip), hub.get(config.vfm), hub.get(config.sam)
    visual = clip.visual
    mode = mode_for(config)
    h, w = mode.clip_input_shape(image.shape[0], image.shape[1], config.short_side, config.max_long_side, 16,
                                 config.window)
    windows = torch.rand(len(splice.window_boxes(h, w, config.window, config.stride)), 3, config.window,
                         config.window, device=device)
    dino_in = windows.to(dino.dtype)
    clip_in = windows.to(visual.conv1.weight.dtype)

    def clip_forward():
        x, _ = splice.clip_trunk(visual, clip_in, mode.resize_pos)  # pos-embed interpolation + blocks 1..11
        x = visual.transformer.resblocks[-1](x)
        return visual.ln_post(x) @ visual.proj

    sam_image = mode.sam_image(image, 16)
    resized = torch.as_tensor(ResizeLongestSide(sam.image_encoder.img_size).apply_image(sam_image),
                              device=device).permute(2, 0, 1)[None]
    sam_in = sam.preprocess(resized.float())
    features = []
    out = {
        "dino": timed(lambda: dino(pixel_values=dino_in, interpolate_pos_encoding=True), device),
        "clip": timed(clip_forward, device),
        "sam_encoder": timed(lambda: features.append(sam.image_encoder(sam_in)), device),
    }
    # the embedding the decoder reuses, as the engine's encoded image
    predictor = SamImage(sam, TorchBackend(sam), features[0], sam_image.shape[:2], tuple(resized.shape[-2:]))
    decoder = 0.0
    for n in decoder_batches:
        points = torch.rand(n, 1, 2, device=device) * 1000
        boxes = torch.rand(n, 4, device=device).sort(dim=1).values * 1000
        masks = torch.zeros(n, 1, 256, 256, device=device)
        decoder += timed(lambda points=points, n=n, boxes=boxes, masks=masks: predictor.predict_torch(
            points, torch.ones(n, 1, device=device), boxes=boxes, mask_input=masks, multimask_output=False,
            return_logits=True), device)
    out["sam_decoder"] = decoder
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=vision_command("bench", "trident"), description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="voc21")
    parser.add_argument("--size", default="500x375", help="image WxH (default: a VOC-size image)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 2 on CPU, 10 on CUDA)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--clock", choices=list(CLOCK), default=None,
                        help="wall time, or process CPU time (default: cpu on CPU, wall on CUDA)")
    parser.add_argument("--out", default=None, help="also write the results here (path without extension: .md "
                        "and .json are written)")
    add_save_option(parser, "trident.md/.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from PIL import Image

    from vision.engines.trident import TridentConfig, TridentEngine, parse_classes
    from vision.engines.trident.modes import mode_for
    from vision.imaging import sample_image

    global clock
    on_cuda = args.device.startswith("cuda")
    repeats = args.repeats or (10 if on_cuda else 1)
    clock_name = args.clock or ("wall" if on_cuda else "cpu")
    clock = CLOCK[clock_name]
    width, height = (int(v) for v in args.size.lower().split("x"))
    image = np.asarray(Image.fromarray(sample_image("chelsea")).resize((width, height), Image.BICUBIC))
    load_before = os.getloadavg()
    started = time.perf_counter()
    hub = full_size_hub(args.device)
    config = TridentConfig.from_preset(args.preset)
    classes = parse_classes(["cat", "dog", "background"] if args.preset == "open"
                            else mode_for(config).class_list(args.preset))
    engine = TridentEngine(config, hub)
    embed_dim = hub.get(config.clip).text_projection.shape[1]
    generator = torch.Generator().manual_seed(0)
    names = classes.unique_queries
    engine.set_text_embeddings(names, torch.randn(len(names), embed_dim, generator=generator).to(args.device))

    batches: list[int] = []
    sam = hub.get(config.sam)
    sam.mask_decoder.register_forward_pre_hook(
        lambda module, a, kw: batches.append(int(kw["sparse_prompt_embeddings"].shape[0])), with_kwargs=True)

    pipeline_runs, forward_runs, stage_runs, infos = [], [], [], []
    for i in range(args.warmup + repeats):
        batches.clear()
        results = []
        seconds = timed(lambda results=results: results.append(engine(image, classes, return_probs=False)), args.device)
        result, calls = results[0], list(batches)
        alone = forwards_alone(hub, image, config, calls, args.device)
        if i < args.warmup:
            continue
        pipeline_runs.append(seconds)
        stage_runs.append(result.timings)
        forward_runs.append(alone)
        infos.append({**result.info, "decoder_batches": calls})
        print(f"run {i - args.warmup + 1}/{repeats}: pipeline {seconds:.3f} s, "
              f"forwards {sum(alone.values()):.3f} s", file=sys.stderr)

    med = statistics.median
    pipeline = med(pipeline_runs)
    forwards = {k: med(r[k] for r in forward_runs) for k in forward_runs[0]}
    stages = {k: med(r.get(k, 0.0) for r in stage_runs) for k in stage_runs[0]}
    encoders = forwards["dino"] + forwards["clip"] + forwards["sam_encoder"]
    no_refine = med(p * (1 - r.get("refine", 0.0) / r["total"]) for p, r in zip(pipeline_runs, stage_runs))
    summary = {
        "machine": machine(), "device": args.device, "preset": args.preset, "image": [width, height],
        "windows": infos[-1]["windows"], "resized": infos[-1]["resized"], "classes": len(classes.names),
        "names": len(classes.queries), "repeats": repeats, "warmup": args.warmup, "clock": clock_name,
        "prompted_components": [info["prompts"] for info in infos],
        "command": "python -m vision bench trident " + " ".join(argv if argv is not None else sys.argv[1:]),
        "runs_s": [[round(p, 3), round(sum(f.values()), 3)] for p, f in zip(pipeline_runs, forward_runs)],
        "pipeline_s": round(pipeline, 4), "forwards_alone_s": {k: round(v, 4) for k, v in forwards.items()},
        "stages_s": {k: round(v, 4) for k, v in stages.items()},
        "ratio": round(pipeline / sum(forwards.values()), 3),
        "ratio_without_refinement": round(no_refine / encoders, 3),
        "load_average": {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()]},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(markdown(summary))
    out = report_path(args, "trident", args.out)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
        out.with_suffix(".md").write_text(markdown(summary) + "\n")
        print(f"wrote {out.with_suffix('.md')} and .json")
    return 0


def markdown(s: dict) -> str:
    m = s["machine"]
    f = s["forwards_alone_s"]
    rows = [
        "# Trident benchmark (full-size CLIP B/16 + DINO B/16 + SAM-B, random weights)",
        "",
        f"- machine: `{m['uname']}`",
        f"- CPU: {m['cpu']} ({m['cpu_count']} cores, torch threads {m['torch_threads']})"
        + (f"; GPU: {m['gpu']}" if "gpu" in m else ""),
        f"- torch {m['torch']}, device **{s['device']}**",
        f"- settings: preset `{s['preset']}`, image {s['image'][0]}x{s['image'][1]} -> "
        f"{s['resized'][1]}x{s['resized'][0]}, "
        f"{s['windows']} windows, {s['classes']} classes ({s['names']} names), refinement on; "
        f"{s['warmup']} warm-up + {s['repeats']} timed runs, medians; text embeddings precomputed",
        f"- clock: **{s['clock']}** " + ("(process CPU time over all threads: robust to other jobs on a shared "
                                         "machine)" if s["clock"] == "cpu" else "(wall time, CUDA synchronised)"),
        f"- command: `{s.get('command', 'python -m vision bench trident')}`; runs (pipeline, sum of forwards): "
        f"{s.get('runs_s', [])}",
        f"- load average (1/5/15 min) before {s['load_average']['before']}, after {s['load_average']['after']}; "
        f"benchmark wall time {s['wall_s']} s",
        "",
        "| what | seconds |",
        "|---|---|",
        f"| **pipeline per image** (`TridentEngine.segment`) | **{s['pipeline_s']:.3f}** |",
        f"| DINO forward alone ({s['windows']} windows) | {f['dino']:.3f} |",
        f"| CLIP visual forward alone ({s['windows']} windows) | {f['clip']:.3f} |",
        f"| SAM image encoder alone (1024) | {f['sam_encoder']:.3f} |",
        f"| SAM predict_torch alone (same batches: {s['prompted_components'][-1]} prompts) | {f['sam_decoder']:.3f} |",
        f"| sum of forwards | {sum(f.values()):.3f} |",
        "",
        f"**ratio pipeline / sum of forwards = {s['ratio']:.3f}** (goal <= 1.15); without the refinement stage "
        "(estimated: the pipeline time times the wall-time share of the other stages, vs the three encoders): "
        f"{s['ratio_without_refinement']:.3f}.",
        "",
        "Pipeline stages (median wall seconds, from the engine's own timings; on a shared CPU they include "
        "waiting for other jobs): " + ", ".join(f"{k} {v:.3f}" for k, v in s["stages_s"].items()) + ".",
    ]
    if not s["device"].startswith("cuda"):
        rows += ["", "CPU only: on a GPU the fixed CPU-side work (connected components, overlay, copies) weighs "
                 "more against fast forwards; measure it there with `python -m vision bench trident --device cuda`."]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
