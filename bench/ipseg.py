"""IPSeg benchmark: pipeline overhead and the prompt cache, on FULL-SIZE architectures with random weights.

The models are built from their real configurations (below, in code; nothing is downloaded) with
random weights — the speed of a network does not depend on its weight values — and injected into a
:class:`vision.hub.ModelHub` with ``hub.put``: DINOv2 ViT-B/14 (``Dinov2Config()`` defaults), the SD1.5
UNet, VAE and CLIP-L text encoder, and SAM ViT-B (``build_sam_vit_b(checkpoint=None)``; ``--sam-h`` for
ViT-H). The tokenizer and scheduler are the hub's own (no download either).

It reports:

* **overhead ratio**: the engine's per-target time (prompt cached) divided by the sum of the model
  forward passes it needs, each timed alone on ready-made inputs: DINOv2, VAE encoder, UNet up to the
  last hooked layer (the engine stops the pass there), SAM image encoder once, and three SAM
  prompt-encoder + mask-decoder calls. Goal <= 1.15. The full UNet forward is also timed (``--full-unet``,
  default on CUDA) to show what the early stop saves.
* **prompt cache**: N targets with the cache (one prompt pass, then N targets) and without it (the
  cache cleared before every target, so every target pays a prompt pass).

Settings: ``--paper`` = the paper's sizes (DINOv2 840, SD 960, SAM 1024; the default on CUDA). The CPU
default is reduced so that a run takes minutes: DINOv2 at 224 (16x16 grid), SD at 256 (latent 32), and
SAM-B's architecture at a 512-px input (the ViT-B encoder with a 32x32 position grid); every network keeps
its full width and depth.

    python -m vision bench ipseg                # CPU, reduced sizes, N = 2
    python -m vision bench ipseg --device cuda --paper --n 8 --out bench/results/ipseg.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # `python bench/ipseg.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.common import SD15_TEXT, SD15_UNET, SD15_VAE, machine
from vision.wording import vision_command

os.environ.setdefault("VISION_OFFLINE", "1")  # everything is built here; never download

SAM_ARCH = {"sam_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
            "sam_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31))}

PAPER = dict(dino_size=840, sd_size=960, sam_size=1024)
CPU_REDUCED = dict(dino_size=224, sd_size=256, sam_size=512)


def build_sam(name: str, image_size: int):
    """SAM ViT-B/H with random weights; ``image_size`` 1024 is segment_anything's own builder, other sizes
    the same architecture with a smaller position grid (``image_size / 16``)."""
    from segment_anything import build_sam_vit_b, build_sam_vit_h
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if image_size == 1024:
        return {"sam_b": build_sam_vit_b, "sam_h": build_sam_vit_h}[name](checkpoint=None)
    arch, grid = SAM_ARCH[name], image_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(img_size=image_size, mlp_ratio=4,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), patch_size=16, qkv_bias=True,
                                      use_rel_pos=True, window_size=14, out_chans=256, **arch),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                     input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3,
            iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def full_size_hub(device: str, sam_name: str, sam_size: int, with_sd: bool):
    """A hub holding full-size random-weight models (fp16 on CUDA except SAM, as the hub's policy)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, Dinov2Config, Dinov2Model

    from vision.hub import ModelHub

    hub = ModelHub(tiny=False, device=device)
    torch.manual_seed(0)
    models = {"dinov2_b14": Dinov2Model(Dinov2Config()), sam_name: build_sam(sam_name, sam_size)}
    if with_sd:
        models.update(sd15_unet=UNet2DConditionModel(**SD15_UNET), sd15_vae=AutoencoderKL(**SD15_VAE),
                      sd15_text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT)))
    for name, model in models.items():
        hub.put(name, model.eval().to(device=device, dtype=hub.dtype_for(name)))
    return hub


def _load() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds of ``fn()``, device synchronised."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def models_alone(engine, hub, device: str, sam_name: str, n_points: int,
                 full_unet: bool) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of each model forward pass one target needs, on ready-made inputs of the
    engine's shapes."""
    from vision.engines.ipseg import run_hooked_unet

    cfg = engine.config
    out: dict[str, tuple[float, float]] = {}
    with torch.no_grad():
        dino = hub.get("dinov2_b14")
        x = torch.randn(1, 3, cfg.dino_size, cfg.dino_size, device=device, dtype=hub.dtype_for("dinov2_b14"))
        out["dino"] = timed(lambda: dino(pixel_values=x, output_hidden_states=True), device)
        if cfg.use_sd:
            vae, unet = hub.get("sd15_vae"), hub.get("sd15_unet")
            dtype = hub.dtype_for("sd15_unet")
            x = torch.randn(1, 3, cfg.sd_size, cfg.sd_size, device=device, dtype=dtype)
            out["vae_encoder"] = timed(lambda: vae.encode(x).latent_dist.mean, device)
            latent = torch.randn(1, 4, cfg.sd_size // 8, cfg.sd_size // 8, device=device, dtype=dtype)
            t = torch.tensor([cfg.sd_timestep], device=device)
            embedding = engine.empty_embedding().to(device=device, dtype=dtype)
            out["unet_to_s3"] = timed(lambda: run_hooked_unet(unet, latent, t, embedding), device)
            if full_unet:
                out["(unet_full)"] = timed(lambda: unet(latent, t, encoder_hidden_states=embedding), device)
        sam = hub.get(sam_name)
        size = sam.image_encoder.img_size
        x = torch.randn(1, 3, size, size, device=device)
        out["sam_encoder"] = timed(lambda: sam.image_encoder(x), device)
        emb = sam.image_encoder(x)
        pe = sam.prompt_encoder.get_dense_pe()
        coords = torch.rand(1, n_points, 2, device=device) * size
        labels = torch.tensor([[1] * (n_points // 2) + [0] * (n_points - n_points // 2)], device=device)
        low = size // 4
        mask_in = torch.randn(1, 1, low, low, device=device)
        box = torch.tensor([[10.0, 10.0, size / 2, size / 2]], device=device)

        def three_decoder_calls():
            for boxes, masks, multi in ((None, None, False), (None, mask_in, True), (box, mask_in, True)):
                sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=boxes, masks=masks)
                sam.mask_decoder(image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sparse,
                                 dense_prompt_embeddings=dense, multimask_output=multi)

        out["sam_decoder_x3"] = timed(three_decoder_calls, device)
    return out


def main(argv: list[str] | None = None) -> int:
    from vision.engines.ipseg import IPSegConfig, IPSegEngine, Prompt
    from vision.hub import best_device
    from vision.imaging import sample_image

    parser = argparse.ArgumentParser(prog=vision_command("bench", "ipseg"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--paper", action="store_true", help="the paper's sizes (default on CUDA)")
    parser.add_argument("--fast", action="store_true", help="DINOv2-only mode (no SD models)")
    parser.add_argument("--sam-h", action="store_true", help="SAM ViT-H instead of ViT-B")
    parser.add_argument("--n", type=int, default=2, help="targets for the prompt-cache comparison")
    parser.add_argument("--repeats", type=int, default=1, help="repeats of the engine-vs-models timing (best kept)")
    parser.add_argument("--full-unet", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the full UNet forward (default: on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="also write the report (Markdown) here, and .json beside it")
    args = parser.parse_args(argv)

    device = args.device or best_device()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.startswith("cuda")
    sizes = PAPER if (args.paper or cuda) else CPU_REDUCED
    sam_name = "sam_h" if args.sam_h else "sam_b"
    config = IPSegConfig(dino_size=sizes["dino_size"], sd_size=sizes["sd_size"], sam_model=sam_name,
                         sd_weight=0.0 if args.fast else IPSegConfig().sd_weight)
    full_unet = cuda if args.full_unet is None else args.full_unet
    # On CUDA the wall clock is the measure; on a CPU the process's CPU time is (with one torch thread it
    # is the work done, whatever else the machine runs), and the wall clock is shown beside it.
    pick = 0 if cuda else 1
    clock = "wall-clock" if cuda else "process CPU"
    load_before = _load()
    started = time.perf_counter()
    hub = full_size_hub(device, sam_name, sizes["sam_size"], with_sd=config.use_sd)
    build_s = time.perf_counter() - started

    prompt = Prompt(sample_image("chelsea"), box=(120, 40, 340, 290))
    names = ["coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "chelsea"]
    targets = [sample_image(names[i % len(names)]) for i in range(args.n)]
    engine = IPSegEngine(config, hub=hub)
    warm = engine(prompt, targets[0])  # warm-up: first calls allocate and pick kernels

    # 1. Prompt cache: N targets with it (one prompt pass) and without it (cleared before every target).
    def with_cache():
        engine.prompt_cache.clear()
        return engine.segment_batch(prompt, targets)

    def without_cache():
        for target in targets:
            engine.prompt_cache.clear()
            engine(prompt, target)

    cache_on, cache_off = timed(with_cache, device), timed(without_cache, device)
    prompt_pass = timed(lambda: (engine.prompt_cache.clear(), engine.prepare(prompt)), device)
    # 2. Per-target engine time (prompt cached) vs the model passes it needs, each timed alone; alternated
    #    so both see the same machine, the best of --repeats kept.
    inst = warm.concepts[0].instances[0]
    n_points = len(inst.positive) + len(inst.negative)
    engine_runs, alone_runs, results = [], [], []
    for _ in range(args.repeats):
        engine_runs.append(timed(lambda: results.append(engine(prompt, targets[0])), device))
        alone_runs.append(models_alone(engine, hub, device, sam_name, n_points, full_unet))
    alone = {k: min(run[k][pick] for run in alone_runs) for k in alone_runs[0]}
    alone_wall = {k: min(run[k][0] for run in alone_runs) for k in alone_runs[0]}
    alone_sum = sum(v for k, v in alone.items() if not k.startswith("("))
    alone_sum_wall = sum(v for k, v in alone_wall.items() if not k.startswith("("))
    per_target = min(run[pick] for run in engine_runs)
    per_target_wall = min(run[0] for run in engine_runs)
    ratio = per_target / alone_sum
    load_after = _load()

    info = machine()
    stages = {k: round(v, 3) for k, v in results[-1].timings.items()}  # wall clock, the last timed run
    report = {
        "machine": info, "device": device, "clock": clock, "load_average_before": load_before,
        "load_average_after": load_after,
        "settings": {"sizes": sizes, "mode": config.feature_source, "sam": sam_name, "n_targets": args.n,
                     "repeats": args.repeats, "paper_sizes": sizes == PAPER},
        "build_seconds": round(build_s, 1), "per_target_seconds": round(per_target, 3),
        "per_target_wall_seconds": round(per_target_wall, 3), "engine_stages_wall": stages,
        "models_alone_seconds": {k: round(v, 3) for k, v in alone.items()},
        "models_alone_wall_seconds": {k: round(v, 3) for k, v in alone_wall.items()},
        "models_alone_sum": round(alone_sum, 3), "ratio": round(ratio, 3),
        "ratio_wall": round(per_target_wall / alone_sum_wall, 3),
        "with_cache_seconds": round(cache_on[pick], 2), "without_cache_seconds": round(cache_off[pick], 2),
        "with_cache_wall_seconds": round(cache_on[0], 2), "without_cache_wall_seconds": round(cache_off[0], 2),
        "cache_speedup": round(cache_off[pick] / cache_on[pick], 2), "prompt_pass_seconds": round(prompt_pass[pick], 3),
    }
    lines = [
        "# IPSeg benchmark (full-size architectures, random weights)", "",
        f"- machine: `{info['uname']}`",
        f"- CPU: {info['cpu']} ({info['cpu_count']} logical CPUs)" + (f"; GPU: {info['gpu']}" if "gpu" in info else ""),
        f"- torch {info['torch']}, diffusers {info['diffusers']}, transformers {info['transformers']}, "
        f"python {info['python']}, torch threads {info['torch_threads']}, device `{device}`",
        f"- load average (1/5/15 min) before: {load_before}; after: {load_after}",
        f"- settings: {config.feature_source}, {sam_name}; DINOv2 at {sizes['dino_size']} px, "
        f"SD at {sizes['sd_size']} px (latent {sizes['sd_size'] // 8}), SAM input {sizes['sam_size']} px"
        + ("" if sizes == PAPER else " (reduced for CPU; the paper's sizes are 840 / 960 / 1024)")
        + f"; N = {args.n} targets; engine and model-alone timings: best of {args.repeats}, alternated",
        f"- measure: {clock} seconds" + ("" if cuda else " (wall-clock in brackets)"),
        f"- command: `python -m vision bench ipseg {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
        "## Per-target time vs the model passes it needs (prompt cached)", "",
        "| part | seconds |", "|---|---|",
        *[f"| {k} | {v:.3f}" + ("" if cuda else f" ({alone_wall[k]:.3f})") + " |" for k, v in alone.items()],
        f"| **sum of model passes** | **{alone_sum:.3f}**" + ("" if cuda else f" ({alone_sum_wall:.3f})") + " |",
        f"| **engine per target** | **{per_target:.3f}**" + ("" if cuda else f" ({per_target_wall:.3f})") + " |",
        f"| **ratio** (goal <= 1.15) | **{ratio:.3f}**" + ("" if cuda else f" ({per_target_wall / alone_sum_wall:.3f})")
        + " |", "",
        "Engine stages of the last timed target (wall clock, s): " + ", ".join(f"{k} {v}" for k, v in stages.items())
        + ". `prompt` is the cache lookup (loading and hashing the prompt image).", "",
        "## Prompt cache", "",
        "| run | seconds |", "|---|---|",
        f"| {args.n} targets, prompt cached (1 prompt pass) | {cache_on[pick]:.2f}"
        + ("" if cuda else f" ({cache_on[0]:.2f})") + " |",
        f"| {args.n} targets, cache cleared each time ({args.n} prompt passes) | {cache_off[pick]:.2f}"
        + ("" if cuda else f" ({cache_off[0]:.2f})") + " |",
        f"| speed-up | {cache_off[pick] / cache_on[pick]:.2f}x |", "",
        f"One prompt pass: {prompt_pass[pick]:.2f} s. Model build: {build_s:.1f} s wall (not timed above).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        Path(args.out).with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
