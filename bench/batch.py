"""Batch-mode throughput: images/s of :mod:`vision.batch` running the real engines over a small folder.

For each engine (``trident``, ``ipseg``; and ``runner``, a no-model threshold engine that measures the
runner's own overhead: listing, decoding, PNG encoding, atomic writes, results lines) it builds a folder
of skimage.data-derived images and runs the batch runner three times:

* **cold**: a new output folder, models built/loaded and prompt/text features computed in the run;
* **warm**: a new output folder, models already in the hub (the steady-state images/s);
* **resume**: the warm folder again, every item complete (the cost of the resume check).

It also reports the median per-image engine time from ``results.jsonl``. ``--ray`` adds a warm run
through the Ray Data runner (local Ray, 2 actors, includes Ray's start-up). Models are tiny random-weight
ones by default; ``--full`` injects full-size random-weight models (CLIP ViT-B/16, DINO ViT-B/16,
DINOv2 ViT-B/14, SAM ViT-B; SD1.5 with ``--ipseg-sd``) into the hub with ``hub.put`` — the speed of
a network does not depend on its weight values. IPSeg runs DINOv2-only (``IPSegConfig.from_preset("fast")``) unless
``--ipseg-sd`` (its SD1.5 pass at 960 px dominates on a CPU even with tiny models).

    python -m vision bench batch                          # tiny, best device, 6 images of 128 px
    python -m vision bench batch --device cuda --full --images 32 --size 512 --out bench/results/batch.md
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/batch.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import machine
from vision.wording import vision_command

SKIMAGE_NAMES = ("astronaut", "coffee", "chelsea", "camera", "coins", "moon", "rocket", "text", "page",
                 "clock", "immunohistochemistry", "cat", "hubble_deep_field", "retina", "checkerboard")


def make_folder(root: Path, count: int, size: int) -> Path:
    """``count`` RGB images (long side ``size``) derived from skimage.data photographs."""
    from PIL import Image
    from skimage import data

    from vision.imaging import array_to_rgb

    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        arr = array_to_rgb(getattr(data, SKIMAGE_NAMES[i % len(SKIMAGE_NAMES)])())
        if i >= len(SKIMAGE_NAMES):
            arr = arr[:, ::-1]
        image = Image.fromarray(np.ascontiguousarray(arr))
        scale = size / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
        image.save(root / f"{i:04d}_{SKIMAGE_NAMES[i % len(SKIMAGE_NAMES)]}.jpg", quality=92)
    return root


# ------------------------------------------------------------------------------------------- processors


def make_runner_processor() -> Any:
    from vision.batch import BatchResult
    from vision.imaging import mask_png, overlay_mask

    def process(item):
        image = item.image()
        mask = image.mean(axis=2) > 128
        return BatchResult({"mask.png": mask_png(mask), "overlay.png": overlay_mask(image, mask)},
                           {"score": float(mask.mean())})

    return process


TRIDENT_CLASSES = ["cat", "person", "sky", "building", "background"]


def make_trident_processor() -> Any:
    from vision.engines.trident import TridentEngine, parse_classes

    engine = TridentEngine()
    engine.text_embeddings(parse_classes(TRIDENT_CLASSES).queries)  # once per worker
    return lambda item: engine(item.image(), TRIDENT_CLASSES)


def make_ipseg_processor(prompt_path: str, use_sd: bool) -> Any:
    from vision.engines.ipseg import IPSegConfig, IPSegEngine, Prompt

    engine = IPSegEngine(IPSegConfig() if use_sd else IPSegConfig.from_preset("fast"))
    concepts = engine.prepare({"object": Prompt(prompt_path)})  # prompt features once per worker
    return lambda item: engine(concepts, item.image(), name=item.id)


# -------------------------------------------------------------------------------------- full-size models


def full_size_models(hub: Any, names: list[str]) -> None:
    """Put full-size random-weight instances of ``names`` into ``hub`` (seeded)."""
    import torch

    def dinov2():
        from transformers import Dinov2Config, Dinov2Model

        return Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                        patch_size=14, image_size=518))

    def dino():
        from transformers import ViTConfig, ViTModel

        return ViTModel(ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                  intermediate_size=3072, patch_size=16, image_size=224), add_pooling_layer=False)

    def clip():
        import open_clip

        return open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)

    def sam():
        from segment_anything import sam_model_registry

        return sam_model_registry["vit_b"](checkpoint=None)

    builders = {"dinov2_b14": dinov2, "dino_b16": dino, "clip_b16": clip, "sam_b": sam}
    try:  # SD1.5 for IPSeg's SD features
        from bench.common import SD15_TEXT, SD15_UNET, SD15_VAE

        def unet():
            from diffusers import UNet2DConditionModel

            return UNet2DConditionModel(**SD15_UNET)

        def vae():
            from diffusers import AutoencoderKL

            return AutoencoderKL(**SD15_VAE)

        def text():
            from transformers import CLIPTextConfig, CLIPTextModel

            return CLIPTextModel(CLIPTextConfig(**SD15_TEXT))

        builders.update({"sd15_unet": unet, "sd15_vae": vae, "sd15_text_encoder": text})
    except ImportError:
        pass
    for name in names:
        if name not in builders:
            raise SystemExit(f"--full: no full-size builder for {name}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = builders[name]().eval()
        hub.put(name, model.to(device=hub.device, dtype=hub.dtype_for(name)))


# ---------------------------------------------------------------------------------------------- timing


def _median_engine_seconds(out: Path) -> float | None:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    values = [r["seconds"] for r in rows if r.get("status") == "ok"]
    return statistics.median(values) if values else None


def bench_engine(name: str, factory: Any, folder: Path, work: Path, args: argparse.Namespace) -> dict:
    from vision import batch

    items = batch.image_items(folder)
    row: dict[str, Any] = {"engine": name, "images": len(items)}
    runs = [("cold", work / f"{name}_cold", {}), ("warm", work / f"{name}_warm", {}),
            ("resume", work / f"{name}_warm", {})]
    if args.ray:
        runs.append(("ray", work / f"{name}_ray", {"ray": True, "ray_options": {
            "init": {"num_cpus": max(2, os.cpu_count() or 2)}, "num_actors": 2,
            "num_gpus": 0 if args.device == "cpu" else None, "tiny": not args.full, "device": args.device}}))
    for label, out, extra in runs:
        summary = batch.run_batch(items, out, factory, batch_size=args.batch_size, progress=False, fsync=True,
                                  log=lambda text: None, **extra)
        if summary.failed:
            reasons = "; ".join(r for _, r in summary.failures[:2])
            raise RuntimeError(f"{name} {label}: {summary.failed} failed ({reasons})")
        count = summary.done if label != "resume" else summary.skipped
        row[f"{label}_s"] = summary.seconds
        row[f"{label}_ips"] = count / summary.seconds if summary.seconds > 0 else float("inf")
        if label == "warm":
            row["engine_s_per_image"] = _median_engine_seconds(out)
    return row


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):
        return "-"


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"
    return str(value)


def versions(info: dict) -> str:
    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = "not installed"
    names = ("python", "torch", "numpy", "pillow")
    return ", ".join(f"{n} {info[n]}" for n in names) + f", ray {ray_version}"


def markdown(rows: list[dict], info: dict, args: argparse.Namespace, notes: list[str]) -> str:
    mode = "full-size random-weight models" if args.full else "tiny random-weight models"
    lines = [f"### {time.strftime('%Y-%m-%d')}: {mode}, device {args.device}, {args.images} images of "
             f"{args.size} px, batch size {args.batch_size}", "",
             f"- machine: `{info['uname']}`",
             f"- CPU: {info['cpu']} ({info['cpu_count']} logical CPUs); GPU: {info.get('gpu', 'none')}",
             f"- versions: {versions(info)}",
             f"- load average (1 min) at start / end: {info.get('load', '-')} (on {os.cpu_count()} CPUs; other "
             "processes sharing the CPUs slow every number down)",
             f"- command: `python -m vision bench batch {' '.join(args.argv)}`".replace("  ", " "), ""]
    header = ["engine", "images", "cold img/s", "warm img/s", "engine s/img (median)", "resume check img/s"]
    if args.ray:
        header.append("Ray (2 actors) img/s")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['engine']} | not run: {row['error']} |" + " |" * (len(header) - 2))
            continue
        cells = [row["engine"], str(row["images"]), _fmt(row["cold_ips"]), _fmt(row["warm_ips"]),
                 _fmt(row.get("engine_s_per_image"), 3), _fmt(row["resume_ips"], 0)]
        if args.ray:
            cells.append(_fmt(row.get("ray_ips")))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=vision_command("bench", "batch"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="runner,trident,ipseg", help="comma-separated: runner, trident, ipseg")
    parser.add_argument("--images", type=int, default=6, help="images in the folder (default 6)")
    parser.add_argument("--size", type=int, default=128, help="long side of each image in pixels (default 128)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default=None, help="cpu, cuda... (default: best available)")
    parser.add_argument("--full", action="store_true", help="full-size random-weight models instead of tiny ones")
    parser.add_argument("--ipseg-sd", action="store_true", help="IPSeg with its SD1.5 features (paper default)")
    parser.add_argument("--ray", action="store_true", help="also time the Ray Data runner (2 local actors)")
    parser.add_argument("--out", default=None, help="append the Markdown table to this file")
    args = parser.parse_args(argv)
    args.argv = argv

    from vision.hub import ModelHub, best_device, set_hub

    args.device = args.device or best_device()
    if not args.full:
        os.environ["VISION_TINY"] = "1"
    os.environ.setdefault("VISION_OFFLINE", "1")
    hub = set_hub(ModelHub(tiny=not args.full, device=args.device))
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    notes = []
    if not args.full:
        notes.append("tiny mode: random-weight tiny models, outputs are noise; this times the pipeline and the "
                     "runner, not full-size inference.")
    if args.device == "cpu" and not __import__("torch").cuda.is_available():
        notes.append("no GPU was available for this run: CPU only.")
    rows = []
    load_start = _load()
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        work = Path(tmp)
        folder = make_folder(work / "images", args.images, args.size)
        prompt = make_folder(work / "prompt", 1, args.size)
        prompt_path = str(next(prompt.iterdir()))
        for name in engines:
            try:
                if name == "runner":
                    factory = make_runner_processor
                elif name == "trident":
                    if args.full:
                        full_size_models(hub, ["clip_b16", "dino_b16", "sam_b"])
                    factory = make_trident_processor
                elif name == "ipseg":
                    use_sd = args.ipseg_sd
                    if args.full:
                        full_size_models(hub, ["dinov2_b14", "sam_b"] + (["sd15_unet", "sd15_vae", "sd15_text_encoder"]
                                                                         if use_sd else []))
                    factory = functools.partial(make_ipseg_processor, prompt_path, use_sd)
                    if not use_sd:
                        notes.append("ipseg ran DINOv2-only (the 'fast' preset); --ipseg-sd adds the SD1.5 features.")
                else:
                    raise ValueError(f"unknown engine {name!r}")
                rows.append(bench_engine(name, factory, folder, work, args))
            except Exception as err:  # an engine not there yet, or broken: say so in the table
                rows.append({"engine": name, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"})
            print(json.dumps(rows[-1], default=str), flush=True)
    if args.ray:
        notes.append("the Ray column includes starting a local Ray (about 5-10 s) and its actors building the models.")
    notes.append("cold: models built and prompt/text features computed inside the run; warm: models already "
                 "in the hub; resume check: rerun over a complete folder (every item skipped).")
    info = machine()
    info["load"] = f"{load_start} / {_load()}"
    table = markdown(rows, info, args, notes)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not out.exists():
            out.write_text("# Batch mode throughput (`bench/batch.py`)\n\n")
        with open(out, "a", encoding="utf-8") as handle:
            handle.write("\n" + table + "\n")  # a blank line keeps the appended heading a heading
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
