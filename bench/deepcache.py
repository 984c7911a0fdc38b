"""DeepCache benchmark: SD1.5's full-size UNet (random weights), DDIM, ours vs the PyPI DeepCacheSDHelper.

The UNet is built from SD1.5's configuration (``SD15_UNET`` below, in code; 860 M parameters) with
random weights (speed does not depend on the weight values) and injected into a hub with ``hub.put``;
the pipeline is the generation engine's own (:func:`vision.engines.generate.build_pipeline`, DDIM).
What is timed is the pipeline call with random prompt embeddings and ``output_type="latent"``: the
UNet denoising loop (UNet + DDIM step per step), no text encoder and no VAE. Modes, each on the same
pipeline in the same run and with the same seed:

* no cache;
* ours (:class:`vision.deepcache.DeepCache`) at N in {2, 3, 5, 8} x b in {0, 1}, uniform schedule;
* the PyPI ``DeepCache`` package's ``DeepCacheSDHelper`` (a peer to beat, never our implementation) at
  the same settings, if it is importable (requirements.txt installs it, for tests/test_deepcache.py);
  otherwise its columns are skipped with a note.

It prints speed-ups over no cache, the helper/ours time ratio (> 1: ours is faster), the largest
absolute difference of the final latents ours vs helper, and the MAC-count limit
``S(N) = N * C_full / (C_full + (N - 1) * C_part)`` with ``C_full`` / ``C_part`` counted by
``torch.utils.flop_counter.FlopCounterMode`` (on the meta device, at the benchmark's shapes), both
counting every op and without the attention-score matmuls (the paper's MAC convention: it gives its
338.6 / 20.7 / 57.3 GMACs at 512^2). ``bound(T)`` is the same limit for the exact full/retrieval step
counts of a T-step run.

    python -m vision bench deepcache            # CPU default: 128^2, 10 steps, batch 1 without CFG, fp32
    python -m vision bench deepcache --full     # GPU: 512^2, 50 steps, CFG 7.5 (batch 2), fp16 on CUDA
    python -m vision bench deepcache --tiny     # smoke test with the tiny UNet (seconds)

The report is printed; ``--save`` also writes it to ``bench/results/deepcache.md`` and ``.json`` (the recorded
results), ``--results DIR`` to another folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/deepcache.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench.common import SD15_UNET, add_save_option, machine, report_path
from vision.wording import vision_command

PEER_NAME = "PyPI DeepCache.DeepCacheSDHelper"


def build_unet(device: str, dtype: torch.dtype, tiny: bool) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    if tiny:
        from vision import tiny as tiny_models

        unet = tiny_models.sd15_unet()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            unet = UNet2DConditionModel(**SD15_UNET)
    return unet.to(device=device, dtype=dtype).eval()


def build_pipe(unet: torch.nn.Module, device: str) -> object:
    from vision.engines.generate import build_pipeline
    from vision.hub import ModelHub

    hub = ModelHub(tiny=True, device=device)  # tiny VAE / text encoder / tokenizer: unused by the timed loop
    hub.put("sd15_unet", unet)
    pipe = build_pipeline(hub, family="sd15", scheduler="ddim")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_macs(config: dict, size: int, batch: int, branches: list[int], cross_dim: int) -> dict:
    """{"full": (all, paper), b: (all, paper)} in GMACs, counted on the meta device (no compute)."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from vision.deepcache import DeepCache

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    latent = size // 8
    inputs = dict(sample=torch.randn(batch, 4, latent, latent, device="meta"),
                  timestep=torch.tensor(500, device="meta"),
                  encoder_hidden_states=torch.randn(batch, 77, cross_dim, device="meta"))

    def counted(cache: DeepCache, feature):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            _, out_feature = cache._unet_forward(feature, **inputs)
        ops = counter.get_flop_counts()["Global"]
        total = sum(ops.values())
        attention = sum(v for k, v in ops.items() if "bmm" in str(k) or "scaled_dot_product" in str(k))
        return (total / 2e9, (total - attention) / 2e9), out_feature

    out = {}
    for b in branches:
        cache = DeepCache(unet, interval=2, branch=b)
        full, feature = counted(cache, None)
        out["full"] = full
        out[b], _ = counted(cache, feature)
    return out


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def mac_limit(n: int, full: float, part: float) -> float:
    return n * full / (full + (n - 1) * part)


def schedule_bound(steps: int, n: int, full: float, part: float) -> float:
    n_full = len(range(0, steps, n))
    return steps * full / (n_full * full + (steps - n_full) * part)


def peer_helper():
    try:
        from DeepCache import DeepCacheSDHelper  # noqa: N813
    except Exception as err:  # not installed, or broken against this diffusers
        return None, f"{type(err).__name__}: {err}"
    return DeepCacheSDHelper, None


def peer_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("DeepCache")
    except PackageNotFoundError:
        return "not installed"


def leftover_forwards(unet: torch.nn.Module) -> int:
    """Instance-level ``forward`` attributes left on the UNet and its modules (0 on a pristine model)."""
    return sum("forward" in m.__dict__ for m in unet.modules())


def clear_leftover_forwards(unet: torch.nn.Module) -> None:
    for module in unet.modules():
        module.__dict__.pop("forward", None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=vision_command("bench", "deepcache"), description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="512^2, 50 steps, CFG 7.5 (batch 2), fp16 on CUDA")
    p.add_argument("--tiny", action="store_true", help="smoke test: the tiny UNet, 64^2, 8 steps")
    p.add_argument("--size", type=int, help="image side (default 128; --full 512; --tiny 64)")
    p.add_argument("--steps", type=int, help="DDIM steps (default 10; --full 50; --tiny 8)")
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    p.add_argument("--guidance", type=float, help="CFG scale; <= 1 = no CFG (default 1; --full 7.5)")
    p.add_argument("--intervals", default="2,3,5,8", help="cache intervals N (default 2,3,5,8)")
    p.add_argument("--branches", default="0,1", help="branches b (default 0,1)")
    p.add_argument("--repeats", type=int, default=1, help="timed blocks per setting (median speed-up, min time)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); 1 makes process CPU time "
                   "a clean work measure on a shared machine")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="the primary time of the table: wall (default) or process CPU time (shared CPUs, "
                        "with --threads 1)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="default fp32 (fp16 with --full on CUDA)")
    p.add_argument("--no-peer", action="store_true", help="skip the PyPI helper")
    p.add_argument("--results", default=None, metavar="DIR", help="also write deepcache.md/.json into DIR")
    add_save_option(p, "deepcache.md/.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = args.size or (512 if args.full else 64 if args.tiny else 128)
    steps = args.steps or (50 if args.full else 8 if args.tiny else 10)
    guidance = args.guidance if args.guidance is not None else (7.5 if args.full else 1.0)
    dtype_name = args.dtype or ("fp16" if args.full and device.startswith("cuda") else "fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    intervals = [int(x) for x in args.intervals.split(",")]
    branches = [int(x) for x in args.branches.split(",")]
    if size % 8 or size < 8 or steps < 1 or args.batch < 1 or args.repeats < 1:
        print("size must be a positive multiple of 8; steps, batch and repeats >= 1", file=sys.stderr)
        return 2
    cfg_batch = args.batch * (2 if guidance > 1 else 1)
    if args.threads:
        torch.set_num_threads(args.threads)

    from vision.deepcache import DeepCache, branch_info

    info = machine()
    info["DeepCache (PyPI)"] = peer_version()
    info["load_average_start"] = info.pop("load_average", None)
    print(f"machine: {info['uname']} | {info['cpu']} | torch {info['torch']} | diffusers {info['diffusers']}")
    print(f"building the {'tiny' if args.tiny else 'SD1.5 full-size'} UNet (random weights) "
          f"on {device} {dtype_name} ...")
    t0 = time.perf_counter()
    unet = build_unet(device, dtype, args.tiny)
    pipe = build_pipe(unet, device)
    print(f"  built in {time.perf_counter() - t0:.1f} s; "
          f"{sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M params")

    cross_dim = unet.config.cross_attention_dim
    config = dict(unet.config) if args.tiny else SD15_UNET
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    macs = count_macs(config, size, cfg_batch, branches, cross_dim)
    macs512 = None if args.tiny else count_macs(config, 512, 1, branches, cross_dim)

    g = torch.Generator("cpu").manual_seed(0)
    embeds = torch.randn(args.batch, 77, cross_dim, generator=g).to(device=device, dtype=dtype)
    call = dict(prompt_embeds=embeds, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                output_type="latent")
    if guidance > 1:
        call["negative_prompt_embeds"] = torch.zeros_like(embeds)

    def timed(context=None, **extra) -> tuple[torch.Tensor, float, float]:
        """(final latents, wall seconds, process CPU seconds)."""
        generator = torch.Generator("cpu").manual_seed(1234)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        if context is None:
            out = pipe(**{**call, **extra}, generator=generator).images
        else:
            with context:
                out = pipe(**{**call, **extra}, generator=generator).images
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out.float().cpu(), time.perf_counter() - start, time.process_time() - cpu_start

    helper_cls, peer_note = (None, "skipped (--no-peer)") if args.no_peer else peer_helper()
    if helper_cls is None:
        print(f"NOTE: the {PEER_NAME} column is skipped: {peer_note}. Install it: "
              ".venv/bin/pip install -r requirements.txt")

    class HelperContext:
        def __init__(self, n: int, b: int):
            self.helper = helper_cls(pipe=pipe)
            self.helper.set_params(cache_interval=n, cache_branch_id=b)

        def __enter__(self):
            self.helper.enable()

        def __exit__(self, *exc):
            self.helper.disable()
            HelperContext.leftovers = max(HelperContext.leftovers, leftover_forwards(unet))
            clear_leftover_forwards(unet)  # the helper leaves bound forwards on every block: restore pristine

    HelperContext.leftovers = 0

    print(f"settings: {size}x{size}, {steps} DDIM steps, batch {args.batch}, guidance {guidance} "
          f"({'CFG: UNet batch ' + str(cfg_batch) if guidance > 1 else 'no CFG'}), {dtype_name}, {device}, "
          f"repeats {args.repeats}")
    # Each (N, b) block runs no cache, ours and the helper back to back (rotating order), so every
    # speed-up is a ratio of runs made under the same machine load; the median over repeats is reported.
    times: dict[str, dict[str, list[float]]] = {"wall": {}, "cpu": {}}
    ratios: dict[str, dict[str, list[float]]] = {"wall": {}, "cpu": {}}
    latents: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        timed(num_inference_steps=2)  # warm-up
        block = 0
        for rep in range(args.repeats):
            for n in intervals:
                for b in branches:
                    modes = [("none", lambda: None), ("ours", lambda n=n, b=b: DeepCache(pipe, interval=n, branch=b))]
                    if helper_cls is not None:
                        modes.append(("peer", lambda n=n, b=b: HelperContext(n, b)))
                    shift = block % len(modes)
                    modes = modes[shift:] + modes[:shift]
                    block += 1
                    got = {}
                    for kind, make in modes:
                        key = "none" if kind == "none" else f"{kind}:{n}:{b}"
                        lat, sec, cpu = timed(make())
                        got[kind] = {"wall": sec, "cpu": cpu}
                        for clock, value in got[kind].items():
                            times[clock].setdefault(key, []).append(value)
                        latents.setdefault(key, lat)
                        print(f"  [{rep + 1}/{args.repeats}] {kind:4s} N={n} b={b}: {sec:.2f} s (CPU {cpu:.2f} s)",
                              flush=True)
                    for kind in got:
                        if kind != "none":
                            for clock in ("wall", "cpu"):
                                ratios[clock].setdefault(f"{kind}:{n}:{b}", []).append(
                                    got["none"][clock] / got[kind][clock])
    if hasattr(os, "getloadavg"):
        info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]

    base = {c: min(t["none"]) for c, t in times.items()}
    rows = []
    for n in intervals:
        for b in branches:
            full_all, full_paper = macs["full"]
            part_all, part_paper = macs[b]
            row = {"N": n, "b": b, "S_N_all_ops": round(mac_limit(n, full_all, part_all), 3),
                   "S_N_paper_macs": round(mac_limit(n, full_paper, part_paper), 3),
                   "bound_T_all_ops": round(schedule_bound(steps, n, full_all, part_all), 3)}
            kinds = ["ours"] + (["peer"] if helper_cls is not None else [])
            for kind in kinds:
                for c in ("wall", "cpu"):
                    row[f"{kind}_{c}_s"] = round(min(times[c][f"{kind}:{n}:{b}"]), 3)
                    row[f"{kind}_speedup_{c}"] = round(float(np.median(ratios[c][f"{kind}:{n}:{b}"])), 3)
                row[f"{kind}_s"] = row[f"{kind}_{args.clock}_s"]
                row[f"{kind}_speedup"] = row[f"{kind}_speedup_{args.clock}"]
            row["ours_pct_of_S_N"] = round(100 * row["ours_speedup"] / row["S_N_all_ops"], 1)
            row["ours_pct_of_bound_T"] = round(100 * row["ours_speedup"] / row["bound_T_all_ops"], 1)
            if helper_cls is not None:
                for c in ("wall", "cpu"):
                    row[f"peer_over_ours_{c}"] = round(row[f"ours_speedup_{c}"] / row[f"peer_speedup_{c}"], 3)
                row["peer_over_ours"] = row[f"peer_over_ours_{args.clock}"]
                row["max_abs_diff_vs_peer"] = float((latents[f"ours:{n}:{b}"] - latents[f"peer:{n}:{b}"]).abs().max())
            rows.append(row)

    result = {
        "benchmark": "DeepCache on SD1.5's full-size UNet (random weights), DDIM" if not args.tiny
        else "DeepCache smoke test on the tiny UNet (not a benchmark result)",
        "timed": "pipeline call with random prompt embeddings, output_type='latent': UNet + DDIM step per step",
        "settings": {"size": size, "steps": steps, "batch": args.batch, "guidance": guidance, "unet_batch": cfg_batch,
                     "dtype": dtype_name, "device": device, "repeats": args.repeats, "schedule": "uniform",
                     "intervals": intervals, "branches": branches, "seed": 1234,
                     "timing": "speed-ups: median over repeats of no-cache/mode time within each back-to-back "
                               "block; times: min over repeats",
                     "clock": args.clock},
        "machine": info, "no_cache_s": round(base[args.clock], 3), "no_cache_wall_s": round(base["wall"], 3),
        "no_cache_cpu_s": round(base["cpu"], 3),
        "gmacs": {"size": size, "unet_batch": cfg_batch, "full_all_ops": _sig(macs["full"][0]),
                  "full_paper": _sig(macs["full"][1]),
                  **{f"b{b}_all_ops": _sig(macs[b][0]) for b in branches},
                  **{f"b{b}_paper": _sig(macs[b][1]) for b in branches}},
        "gmacs_512_batch1": None if macs512 is None else {
            "full_all_ops": round(macs512["full"][0], 1), "full_paper": round(macs512["full"][1], 1),
            **{f"b{b}_all_ops": round(macs512[b][0], 1) for b in branches},
            **{f"b{b}_paper": round(macs512[b][1], 1) for b in branches}},
        "branches": {b: branch_info(unet, b) for b in branches},
        "peer": {"name": PEER_NAME, "available": helper_cls is not None, "note": peer_note,
                 "leftover_instance_forwards_after_disable": HelperContext.leftovers if helper_cls else None},
        "rows": rows,
    }
    text = render(result)
    print(text)
    out = report_path(args, "", args.results)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = "deepcache_tiny" if args.tiny else "deepcache_full" if args.full else "deepcache"
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        (out / f"{stem}.md").write_text(text + "\n", encoding="utf-8")
        print(f"wrote {out / (stem + '.md')} and .json")
    return 0


def render(r: dict) -> str:
    s, m = r["settings"], r["machine"]
    peer = r["peer"]["available"]
    lines = [f"# {r['benchmark']}", "",
             f"- Machine: `{m['uname']}`; CPU: {m['cpu']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads)"
             + (f"; GPU: {m['gpu']}" if m.get("gpu") else ""),
             f"- Versions: Python {m['python']}, torch {m['torch']}, diffusers {m['diffusers']}, "
             f"PyPI DeepCache {m['DeepCache (PyPI)']}",
             f"- Load average (1/5/15 min) at start {m.get('load_average_start')}, at end {m.get('load_average_end')}",
             f"- Settings: {s['size']}x{s['size']}, {s['steps']} DDIM steps, batch {s['batch']}, "
             f"guidance {s['guidance']} (UNet batch {s['unet_batch']}), {s['dtype']} on {s['device']}, "
             f"uniform schedule, seed {s['seed']}, "
             f"{s['repeats']} repeat(s)",
             f"- Timed: {r['timed']}. No cache: {r['no_cache_wall_s']:.2f} s wall, {r['no_cache_cpu_s']:.2f} s "
             "process CPU time.",
             f"- GMACs per UNet call at these shapes (FlopCounterMode; 'paper' = without attention-score matmuls): "
             f"full {r['gmacs']['full_all_ops']} ({r['gmacs']['full_paper']} paper), "
             + ", ".join(f"b={b} {r['gmacs'][f'b{b}_all_ops']} ({r['gmacs'][f'b{b}_paper']})" for b in s["branches"]),
             ]
    if r.get("gmacs_512_batch1"):
        g = r["gmacs_512_batch1"]
        lines.append(f"- At 512^2, batch 1: full {g['full_all_ops']} ({g['full_paper']} paper), "
                     + ", ".join(f"b={b} {g[f'b{b}_all_ops']} ({g[f'b{b}_paper']})" for b in s["branches"])
                     + " GMACs (the spec's 338.6 / 20.7 / 57.3 are the paper convention)")
    if not peer:
        lines.append(f"- **{PEER_NAME} column skipped**: {r['peer']['note']}")
    else:
        lines.append(f"- Peer: {PEER_NAME}; after its disable() it left bound `forward` attributes on "
                     f"{r['peer']['leftover_instance_forwards_after_disable']} modules (removed by the benchmark "
                     "before the next run); ours leaves none.")
    clock, other = s["clock"], "cpu" if s["clock"] == "wall" else "wall"
    names = {"wall": "wall time", "cpu": "process CPU time"}
    lines += ["", "S(N) = N*C_full/(C_full+(N-1)*C_part) with every op counted (paper convention in brackets); "
              "bound(T) = the same for the exact full/retrieval step counts of this T-step run. Times and "
              f"speed-ups (over no cache) are {names[clock]}, {names[other]} in brackets. helper/ours = our "
              "speed-up / the helper's, i.e. helper time / our time (> 1: ours faster). Each (N, b) runs no cache, "
              "ours and the helper back to back (rotating order); speed-ups are ratios within such blocks "
              "(median over repeats), times are the minimum over repeats.", ""]
    head = ["N", "b", "ours s", "ours speed-up", "S(N)", "% of S(N)", "bound(T)", "% of bound(T)"]
    if peer:
        head += ["helper s", "helper speed-up", "helper/ours", "max abs diff ours vs helper"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in r["rows"]:
        cells = [row["N"], row["b"], f"{row[f'ours_{clock}_s']:.2f} ({row[f'ours_{other}_s']:.2f})",
                 f"{row[f'ours_speedup_{clock}']:.2f}x ({row[f'ours_speedup_{other}']:.2f}x)",
                 f"{row['S_N_all_ops']:.2f}x ({row['S_N_paper_macs']:.2f}x)", f"{row['ours_pct_of_S_N']:.0f}%",
                 f"{row['bound_T_all_ops']:.2f}x", f"{row['ours_pct_of_bound_T']:.0f}%"]
        if peer:
            cells += [f"{row[f'peer_{clock}_s']:.2f} ({row[f'peer_{other}_s']:.2f})",
                      f"{row[f'peer_speedup_{clock}']:.2f}x ({row[f'peer_speedup_{other}']:.2f}x)",
                      f"{row[f'peer_over_ours_{clock}']:.3f} ({row[f'peer_over_ours_{other}']:.3f})",
                      f"{row['max_abs_diff_vs_peer']:.2e}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
