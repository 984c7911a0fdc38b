"""Caches on the user's models (#26): DeepCache with a canny ControlNet, and SD3.5 Medium's DiT caches.

Full-size random weights (speed is a property of the architecture), built in code from the published
configurations, measured side by side in one run (modes in rotating order within each repeat; each
speed-up is a ratio of runs made under the same machine load; medians over repeats, wall and process
CPU time). What is timed is the pipeline call with random prompt embeddings and ``output_type="latent"``:
the denoising loop, no text encoder, no VAE.

* ``controlnet``: SD1.5's UNet (860 M) and a ControlNet of its layout (``ControlNetModel.from_unet``,
  361 M, random zero convolutions), DDIM. Modes: no cache and DeepCache N, b without ControlNet; with
  the ControlNet: no cache, DeepCache with the partial ControlNet (ours: on retrieval steps only the part
  the shallow path consumes), DeepCache running the whole ControlNet every step. Acceptance: the speed-up
  with the ControlNet (partial) is at least 0.9x the speed-up without it. Also the MAC counts of one step
  (``FlopCounterMode`` on the meta device) and the largest latent difference partial vs whole ControlNet.
* ``dit``: SD3.5 Medium's MMDiT-X (2.5 B), flow-matching Euler; no cache, TaylorSeer and PAB (diffusers'
  own, :mod:`vision.engines.generate.dit`): speed-up and largest absolute latent difference vs no cache.

    python -m vision bench generate_cache                  # CPU: 128^2, 10 steps, batch 1, no CFG, fp32
    python -m vision bench generate_cache --part controlnet --dtype bf16   # half the memory (AVX512-BF16 CPUs)
    python -m vision bench generate_cache --tiny           # smoke test with the tiny models (seconds)

Results: ``bench/results/generate_cache.md`` and ``.json`` (``--results DIR``; ``--no-write``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/generate_cache.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench.common import SD15_UNET, machine
from vision.wording import vision_command

RESULTS = Path(__file__).resolve().parent / "results"
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                   attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, pos_embed_max_size=384, qk_norm="rms_norm",
                   dual_attention_layers=tuple(range(13)))  # stable-diffusion-3.5-medium transformer/config.json
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=vision_command("bench", "generate_cache"), description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("controlnet", "dit", "all"), default="all")
    p.add_argument("--tiny", action="store_true", help="tiny models (a smoke test, no speed claim)")
    p.add_argument("--size", type=int, help="image side (default 128; 64 tiny)")
    p.add_argument("--steps", type=int, help="denoising steps (default 10; 6 tiny)")
    p.add_argument("--interval", type=int, default=3, help="DeepCache N (default 3)")
    p.add_argument("--branch", type=int, default=1, help="DeepCache b (default 1)")
    p.add_argument("--dit-interval", type=int, default=2, help="TaylorSeer / PAB interval (default 2)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", choices=tuple(DTYPES), help="default fp32 on CPU, fp16 (UNet) / bf16 (DiT) on CUDA")
    p.add_argument("--device", help="default cuda when available, else cpu")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--no-write", action="store_true", help="print only")
    return p.parse_args(argv)


def _timed(pipe, call: dict, device: str, context=None) -> tuple[torch.Tensor, float, float]:
    """(final latents as fp32 on the CPU, wall seconds, process CPU seconds) of one pipeline call."""
    import contextlib

    generator = torch.Generator("cpu").manual_seed(1234)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    with context if context is not None else contextlib.nullcontext(), torch.no_grad():
        out = pipe(**call, generator=generator).images
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out.float().cpu(), time.perf_counter() - start, time.process_time() - cpu


def _measure(modes: dict, repeats: int) -> tuple[dict, dict]:
    """Run every mode (name -> (pipe, call, device, make_context)) ``repeats`` times in rotating order:
    ({mode: {"wall": [...], "cpu": [...]}}, {mode: latents of its first run})."""
    times: dict[str, dict[str, list[float]]] = {m: {"wall": [], "cpu": []} for m in modes}
    latents: dict[str, torch.Tensor] = {}
    names = list(modes)
    for pipe, call, device, _ in {id(v[0]): v for v in modes.values()}.values():  # one warm-up per pipeline
        _timed(pipe, {**call, "num_inference_steps": 2}, device)
    for rep in range(repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            pipe, call, device, make = modes[name]
            lat, wall, cpu = _timed(pipe, call, device, make())
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
            latents.setdefault(name, lat)
            print(f"  [{rep + 1}/{repeats}] {name:28s} {wall:7.2f} s (CPU {cpu:.2f} s)", flush=True)
    return times, latents


def _speedup(times: dict, base: str, mode: str, clock: str) -> float:
    """Median over repeats of base/mode run times of the same repeat."""
    return float(np.median([b / m for b, m in zip(times[base][clock], times[mode][clock])]))


# ------------------------------------------------------------------------------------------ ControlNet


def _controlnet_pipes(args, device: str, dtype: torch.dtype) -> tuple:
    from diffusers import UNet2DConditionModel

    from vision import tiny
    from vision.engines.generate.pipelines import assemble_pipeline, family_parts
    from vision.hub import ModelHub

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = tiny.sd15_unet() if args.tiny else UNet2DConditionModel(**SD15_UNET)
    embedding = (4, 8, 8, 16) if args.tiny else (16, 32, 96, 256)
    controlnet = tiny.controlnet_from(unet, conditioning_channels=embedding)
    unet, controlnet = (m.to(device=device, dtype=dtype).eval() for m in (unet, controlnet))
    hub = ModelHub(tiny=True, device=device)  # tiny VAE / text encoder / tokenizer: unused by the timed loop
    parts = {**family_parts(hub, "sd15"), "unet": unet}
    plain, with_cn = (assemble_pipeline("sd15", parts, "ddim", controlnet=c) for c in (None, controlnet))
    for pipe in (plain, with_cn):
        pipe.set_progress_bar_config(disable=True)
    return unet, controlnet, plain, with_cn


def _step_macs(unet, controlnet, size: int, branch: int) -> dict:
    """GMACs of one step: UNet + ControlNet in full; the retrieval step with the partial / whole ControlNet."""
    from torch.utils.flop_counter import FlopCounterMode

    from vision.deepcache import DeepCache
    from vision.deepcache.controlnet import shallow_residuals

    with torch.device("meta"):
        u = type(unet)(**{k: v for k, v in unet.config.items() if not k.startswith("_")})
        c = type(controlnet)(**{k: v for k, v in controlnet.config.items() if not k.startswith("_")})
    x = torch.randn(1, 4, size // 8, size // 8, device="meta")
    text = torch.randn(1, 77, u.config.cross_attention_dim, device="meta")
    hint, t = torch.randn(1, 3, size, size, device="meta"), torch.tensor(500, device="meta")
    cache = DeepCache(u, interval=2, branch=branch)

    def gmacs(fn) -> tuple[float, object]:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = fn()
        return counter.get_total_flops() / 2e9, out

    cn_full, (down, mid) = gmacs(lambda: c(x, t, text, controlnet_cond=hint, return_dict=False))
    unet_full, (_, feature) = gmacs(lambda: cache._unet_forward(None, sample=x, timestep=t, encoder_hidden_states=text,
                                                                down_block_additional_residuals=down,
                                                                mid_block_additional_residual=mid))
    unet_part, _ = gmacs(lambda: cache._unet_forward(feature, sample=x, timestep=t, encoder_hidden_states=text,
                                                     down_block_additional_residuals=down,
                                                     mid_block_additional_residual=mid))
    cn_part, _ = gmacs(lambda: shallow_residuals(c, cache.layout, branch, x, t, text, hint))
    return {"unet_full": unet_full, "unet_retrieval": unet_part, "controlnet_full": cn_full,
            "controlnet_partial": cn_part}


def run_controlnet(args, device: str, dtype: torch.dtype, size: int, steps: int) -> dict:
    from PIL import Image

    from vision.deepcache import DeepCache
    from vision.engines.generate.control import canny_map

    unet, controlnet, plain, with_cn = _controlnet_pipes(args, device, dtype)
    g = torch.Generator("cpu").manual_seed(0)
    embeds = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g).to(device=device, dtype=dtype)
    photo = (torch.rand(size, size, 3, generator=g).numpy() * 255).astype(np.uint8)
    photo[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    call = dict(prompt_embeds=embeds, num_inference_steps=steps, guidance_scale=1.0, height=size, width=size,
                output_type="latent")
    call_cn = {**call, "image": Image.fromarray(canny_map(photo, 100, 200))}
    n, b = args.interval, args.branch
    modes = {"no cache": (plain, call, device, lambda: None),
             f"DeepCache N={n} b={b}": (plain, call, device, lambda: DeepCache(plain, interval=n, branch=b)),
             "ControlNet, no cache": (with_cn, call_cn, device, lambda: None),
             "ControlNet + DeepCache (partial)": (with_cn, call_cn, device,
                                                  lambda: DeepCache(with_cn, interval=n, branch=b)),
             "ControlNet + DeepCache (whole)": (with_cn, call_cn, device,
                                                lambda: DeepCache(with_cn, interval=n, branch=b,
                                                                  partial_controlnet=False))}
    times, latents = _measure(modes, args.repeats)
    out = {"seconds": {m: {c: round(float(np.median(v)), 3) for c, v in t.items()} for m, t in times.items()}}
    for clock in ("wall", "cpu"):
        plain_s = _speedup(times, "no cache", f"DeepCache N={n} b={b}", clock)
        partial = _speedup(times, "ControlNet, no cache", "ControlNet + DeepCache (partial)", clock)
        whole = _speedup(times, "ControlNet, no cache", "ControlNet + DeepCache (whole)", clock)
        out[clock] = {"speedup_without_controlnet": round(plain_s, 3), "speedup_with_controlnet_partial":
                      round(partial, 3), "speedup_with_controlnet_whole": round(whole, 3),
                      "ratio_partial": round(partial / plain_s, 3), "ratio_whole": round(whole / plain_s, 3)}
    diff = latents["ControlNet + DeepCache (partial)"] - latents["ControlNet + DeepCache (whole)"]
    out["max_abs_diff_partial_vs_whole"] = float(diff.abs().max())
    out["macs"] = {k: round(v, 3) for k, v in _step_macs(unet, controlnet, size, b).items()}
    return out


# ------------------------------------------------------------------------------------------------- DiT


def run_dit(args, device: str, dtype: torch.dtype, size: int, steps: int) -> dict:
    from diffusers import SD3Transformer2DModel

    from vision import tiny
    from vision.engines.generate.dit import DiTCache
    from vision.engines.generate.pipelines import assemble_pipeline, family_parts
    from vision.hub import ModelHub

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = tiny.sd35_transformer() if args.tiny else SD3Transformer2DModel(**SD35_MEDIUM)
    transformer = transformer.to(device=device, dtype=dtype).eval()
    hub = ModelHub(tiny=True, device=device)
    pipe = assemble_pipeline("sd3", {**family_parts(hub, "sd35_medium"), "transformer": transformer}, "flow")
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator("cpu").manual_seed(0)
    width = transformer.config.joint_attention_dim
    call = dict(prompt_embeds=torch.randn(1, 154, width, generator=g).to(device=device, dtype=dtype),
                pooled_prompt_embeds=torch.randn(1, transformer.config.pooled_projection_dim, generator=g).to(
                    device=device, dtype=dtype), num_inference_steps=steps, guidance_scale=1.0, height=size,
                width=size, output_type="latent")
    i = args.dit_interval
    modes = {"no cache": (pipe, call, device, lambda: None),
             f"TaylorSeer interval {i}": (pipe, call, device, lambda: DiTCache(transformer, "taylorseer", i)),
             f"PAB interval {i}": (pipe, call, device, lambda: DiTCache(transformer, "pab", i))}
    times, latents = _measure(modes, args.repeats)
    out = {"seconds": {m: {c: round(float(np.median(v)), 3) for c, v in t.items()} for m, t in times.items()},
           "parameters_M": round(sum(p.numel() for p in transformer.parameters()) / 1e6, 1)}
    for mode in list(modes)[1:]:
        out[mode] = {"speedup_wall": round(_speedup(times, "no cache", mode, "wall"), 3),
                     "speedup_cpu": round(_speedup(times, "no cache", mode, "cpu"), 3),
                     "max_abs_diff_vs_no_cache": float((latents[mode] - latents["no cache"]).abs().max())}
    return out


# ------------------------------------------------------------------------------------------------ main


def render(result: dict) -> str:
    lines = [f"# Caches on the user's models ({'tiny smoke test' if result['tiny'] else 'full-size, random weights'})",
             "", f"Machine: {result['machine']['cpu']}, {result['machine'].get('gpu', 'no GPU')}, torch "
             f"{result['machine']['torch']}, diffusers {result['machine']['diffusers']}; load "
             f"{result['machine'].get('load_average_start')} -> {result['machine'].get('load_average_end')}. "
             f"Settings: {result['settings']}.", ""]
    if "controlnet" in result:
        c = result["controlnet"]
        lines += ["## DeepCache with a canny ControlNet (SD1.5)", "", "| clock | no ControlNet | ControlNet, partial "
                  "| ControlNet, whole | ratio partial | ratio whole |", "|---|---|---|---|---|---|"]
        for clock in ("wall", "cpu"):
            r = c[clock]
            lines.append(f"| {clock} | {r['speedup_without_controlnet']}x | {r['speedup_with_controlnet_partial']}x | "
                         f"{r['speedup_with_controlnet_whole']}x | {r['ratio_partial']} | {r['ratio_whole']} |")
        lines += ["", f"Median seconds: {json.dumps(c['seconds'])}", f"Largest latent difference partial vs whole "
                  f"ControlNet: {c['max_abs_diff_partial_vs_whole']:.3g}. GMACs per step: {json.dumps(c['macs'])}.", ""]
    if "dit" in result:
        d = result["dit"]
        lines += [f"## SD3.5 Medium-sized transformer ({d['parameters_M']} M parameters)", "",
                  "| cache | speed-up (wall) | speed-up (CPU) | max abs latent diff vs no cache |", "|---|---|---|---|"]
        lines += [f"| {m} | {v['speedup_wall']}x | {v['speedup_cpu']}x | {v['max_abs_diff_vs_no_cache']:.3g} |"
                  for m, v in d.items() if isinstance(v, dict) and "speedup_wall" in v]
        lines += ["", f"Median seconds: {json.dumps(d['seconds'])}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = args.size or (64 if args.tiny else 128)
    steps = args.steps or (6 if args.tiny else 10)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    info["load_average_start"] = info.pop("load_average", None)
    result: dict = {"tiny": args.tiny, "machine": info, "settings": f"{size}x{size}, {steps} steps, batch 1, no CFG, "
                    f"{device}, repeats {args.repeats}, DeepCache N={args.interval} b={args.branch}, DiT interval "
                    f"{args.dit_interval}"}
    if args.part in ("controlnet", "all"):
        dtype = DTYPES[args.dtype or ("fp16" if device.startswith("cuda") else "fp32")]
        print(f"ControlNet part: SD1.5 UNet + ControlNet, {dtype}, {device}")
        result["controlnet"] = run_controlnet(args, device, dtype, size, steps)
    if args.part in ("dit", "all"):
        dtype = DTYPES[args.dtype or ("bf16" if device.startswith("cuda") else "fp32")]
        print(f"DiT part: SD3.5 Medium transformer, {dtype}, {device}")
        result["dit"] = run_dit(args, device, dtype, size, steps)
    if hasattr(os, "getloadavg"):
        info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = render(result)
    print(text)
    if not args.no_write:
        folder = Path(args.results)
        folder.mkdir(parents=True, exist_ok=True)
        name = "generate_cache_tiny" if args.tiny else "generate_cache"
        (folder / f"{name}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        (folder / f"{name}.md").write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
