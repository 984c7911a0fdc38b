"""Parts 1, 2 and 7 of ``python -m vision bench gpu``: DeepCache on SD1.5 (ours vs the PyPI helper), on SDXL,
and under ``torch.compile``."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch

from bench.common import timed_call
from bench.gpu.harness import COMPILE_PRIOR_S, SEED, Run, max_diff, median, same_bits, table


def sd15_pipe(run: Run, scheduler: str = "ddim") -> Any:
    from vision.engines.generate import build_pipeline

    run.resident(["sd15_unet", "sd15_vae", "sd15_text_encoder"])
    pipe = build_pipeline(run.hub, family="sd15", scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latent_call(run: Run, pipe: Any, size: int, steps: int, pooled: int | None = None) -> dict:
    """Arguments of a CFG text-to-image call on random prompt embeddings returning latents: what is timed
    is the denoising loop (UNet + scheduler step), as in bench/deepcache.py."""
    unet = pipe.unet
    generator = torch.Generator().manual_seed(0)
    dtype = unet.dtype
    embeds = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator).to(run.device, dtype)
    call = dict(prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds), num_inference_steps=steps,
                guidance_scale=run.scale.guidance, height=size, width=size, output_type="latent")
    if pooled is not None:  # SDXL's pooled text embedding
        pooled_embeds = torch.randn(1, pooled, generator=generator).to(run.device, dtype)
        call.update(pooled_prompt_embeds=pooled_embeds, negative_pooled_prompt_embeds=torch.zeros_like(pooled_embeds))
    return call


def denoise(run: Run, pipe: Any, call: dict, context: Any = None, **extra: Any) -> tuple[torch.Tensor, float]:
    """(final latents, seconds) of one seeded generation inside ``context`` (a DeepCache, the helper...)."""
    def go():
        with context if context is not None else contextlib.nullcontext():
            return pipe(**{**call, **extra}, generator=torch.Generator().manual_seed(SEED)).images

    return timed_call(go, run.device)


@contextlib.contextmanager
def peer_cache(helper_cls: Any, pipe: Any, interval: int, branch: int, leftovers: list[int]):
    """The PyPI helper on ``pipe`` for one generation; afterwards the UNet is made pristine again (its
    disable() leaves bound ``forward`` attributes on the blocks, counted in ``leftovers``)."""
    from bench import deepcache as dc

    helper = helper_cls(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        yield
    finally:
        helper.disable()
        leftovers.append(dc.leftover_forwards(pipe.unet))
        dc.clear_leftover_forwards(pipe.unet)


def run_blocks(run: Run, pipe: Any, call: dict, modes: dict[str, Callable[[], Any]], blocks: list[list[str]],
               repeats: int) -> tuple[dict, dict, dict, int]:
    """Each block runs "none" and its modes back to back (order rotated block by block), ``repeats``
    times; speed-ups are none / mode within a block. Returns (times, speed-ups, first latents per mode,
    blocks run); stops early when the budget is spent."""
    times: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    latents: dict[str, torch.Tensor] = {}
    done = 0
    for _ in range(repeats):
        for block in blocks:
            if run.out_of_time():
                return times, ratios, latents, done
            order = ["none", *block]
            shift = done % len(order)
            got = {}
            for key in order[shift:] + order[:shift]:
                lat, got[key] = denoise(run, pipe, call, modes[key]() if key != "none" else None)
                times.setdefault(key, []).append(got[key])
                latents.setdefault(key, lat)
            for key in block:
                ratios.setdefault(key, []).append(got["none"] / got[key])
            done += 1
    return times, ratios, latents, done


def part_deepcache(run: Run) -> None:
    from bench import deepcache as dc
    from vision.deepcache import DeepCache
    from vision.engines.generate import make_scheduler

    s = run.scale
    pipe = sd15_pipe(run)
    unet = pipe.unet
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    macs = dc.count_macs(config, s.sd_size, 2, list(s.branches), unet.config.cross_attention_dim)
    helper_cls, peer_note = dc.peer_helper()
    call = latent_call(run, pipe, s.sd_size, s.sd_steps)
    leftovers: list[int] = []
    modes: dict[str, Callable[[], Any]] = {}
    for n in s.intervals:
        for b in s.branches:
            modes[f"ours:{n}:{b}"] = functools.partial(DeepCache, pipe, interval=n, branch=b)
            modes[f"nonuniform:{n}:{b}"] = functools.partial(DeepCache, pipe, interval=n, branch=b,
                                                             schedule="nonuniform")
            if helper_cls is not None:
                modes[f"peer:{n}:{b}"] = functools.partial(peer_cache, helper_cls, pipe, n, b, leftovers)
    blocks = [[k for k in (f"ours:{n}:{b}", f"peer:{n}:{b}", f"nonuniform:{n}:{b}") if k in modes]
              for n in s.intervals for b in s.branches]
    full = macs["full"]
    run.report.write(
        f"Settings: {s.sd_size}^2, {s.sd_steps} steps, CFG {s.guidance} (UNet batch 2), {unet.dtype}, seed {SEED}; "
        f"{s.repeats} repeat(s) of back-to-back blocks (no cache, ours uniform, helper uniform, ours non-uniform "
        "c=15 p=1.4; order rotated); speed-up = median of no-cache / mode within blocks, time = min. GMACs per "
        f"UNet call (all ops; paper convention without attention-score matmuls): full {full[0]:.4g} ({full[1]:.4g}), "
        + ", ".join(f"b={b} {macs[b][0]:.4g} ({macs[b][1]:.4g})" for b in s.branches)
        + f". S(N) = N C_full / (C_full + (N-1) C_part). Peer: {dc.PEER_NAME} {dc.peer_version()}"
        + ("" if helper_cls else f" **not available** ({peer_note})")
        + "; it has the uniform schedule only.")
    for scheduler in ("ddim", "pndm"):
        if run.out_of_time():
            run.report.write(f"**{scheduler}: not run** (budget spent)")
            break
        pipe.scheduler = make_scheduler(scheduler, run.hub.get("sd15_scheduler").config)
        denoise(run, pipe, call, num_inference_steps=2)  # warm-up
        plain, plain_s = denoise(run, pipe, call)
        once, once_s = denoise(run, pipe, call, DeepCache(pipe, interval=1))
        if scheduler == "ddim":
            run.reference_s = plain_s
        times, ratios, latents, done = run_blocks(run, pipe, call, modes, blocks, s.repeats)
        rows = []
        for n in s.intervals:
            for b in s.branches:
                key = f"{n}:{b}"
                if f"ours:{key}" not in ratios:
                    continue
                limit = dc.mac_limit(n, full[0], macs[b][0])
                ours, nonuni = median(ratios[f"ours:{key}"]), median(ratios[f"nonuniform:{key}"])
                row = [n, b, f"{limit:.2f}x ({dc.mac_limit(n, full[1], macs[b][1]):.2f}x)",
                       f"{min(times[f'ours:{key}']):.3f}", f"{ours:.2f}x", f"{100 * ours / limit:.0f}%"]
                if helper_cls is not None:
                    peer = median(ratios[f"peer:{key}"])
                    diff = max_diff(latents[f"ours:{key}"], latents[f"peer:{key}"])
                    row += [f"{peer:.2f}x", f"{ours / peer:.3f}", f"{diff:.2e}"]
                else:
                    row += ["-", "-", "-"]
                rows.append(row + [f"{nonuni:.2f}x", f"{100 * nonuni / limit:.0f}%"])
        head = ["N", "b", "S(N) all ops (paper)", "ours s", "ours speed-up", "% of S(N)", "helper speed-up",
                "helper/ours time", "max abs diff ours vs helper", "ours non-uniform", "% of S(N)"]
        name = {"ddim": "DDIM", "pndm": "PLMS (PNDM, skip_prk_steps)"}[scheduler]
        run.report.write(
            f"### {name}\n\nNo cache: {plain_s:.3f} s; in the blocks min / median / max "
            + " / ".join(f"{f(times.get('none', [plain_s])):.3f}" for f in (min, median, max)) + " s (the spread is "
            f"the timing noise); "
            f"latents finite: {bool(torch.isfinite(plain).all())}. **N = 1 vs no cache: "
            f"{'bit-identical' if same_bits(once, plain) else 'DIFFERENT'}** "
            f"(max abs diff {max_diff(once, plain):.1e}, "
            f"{once_s:.3f} s). Blocks run: {done} of {len(blocks) * s.repeats}."
            + (f" The helper left bound `forward` attributes on {max(leftovers)} modules after disable() (removed "
               "before the next run)." if leftovers else "") + "\n\n" + table(head, rows))


# -------------------------------------------------------------------------------------------- part 2


def part_sdxl(run: Run) -> None:
    from vision.deepcache import DeepCache
    from vision.engines.generate import build_pipeline

    s = run.scale
    run.resident(["sdxl_unet", "sdxl_vae", "sdxl_text_encoder", "sdxl_text_encoder_2"])
    pipe = build_pipeline(run.hub, family="sdxl", scheduler="ddim")
    pipe.set_progress_bar_config(disable=True)
    call = latent_call(run, pipe, s.sdxl_size, s.sdxl_steps, pooled=pipe.text_encoder_2.config.projection_dim)
    denoise(run, pipe, call, num_inference_steps=2)  # warm-up
    modes = {f"{n}:{b}": functools.partial(DeepCache, pipe, interval=n, branch=b)
             for n in s.sdxl_intervals for b in s.branches}
    times, ratios, _, done = run_blocks(run, pipe, call, modes, [list(modes)], s.sdxl_repeats)
    rows = [["no cache", "-", f"{min(times['none']):.3f}", "1.00x"]] if "none" in times else []
    rows += [[key.split(":")[0], key.split(":")[1], f"{min(times[key]):.3f}", f"{median(ratios[key]):.2f}x"]
             for key in modes if key in ratios]
    run.report.write(f"Settings: {s.sdxl_size}^2, {s.sdxl_steps} DDIM steps, CFG {s.guidance} (UNet batch 2), "
                     f"{pipe.unet.dtype}, uniform schedule, seed {SEED}; {done} block(s) of back-to-back runs; "
                     "speed-up = median of no-cache / mode within blocks, time = min.\n\n"
                     + table(["N", "b", "seconds", "speed-up"], rows))


@contextlib.contextmanager
def recompile_limit(limit: int):
    """Room for the graphs of several DeepCache settings (each is a recompilation of one function)."""
    import torch._dynamo

    key = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    with torch._dynamo.config.patch(**{key: limit}):
        yield


def part_compile(run: Run) -> None:
    import torch._dynamo

    from vision.deepcache import DeepCache

    s = run.scale
    options: dict = {"backend": "eager"} if run.smoke else {}  # the dry run checks tracing, not Inductor
    pipe = sd15_pipe(run)
    unet = pipe.unet
    call = latent_call(run, pipe, s.sd_size, s.sd_steps)
    denoise(run, pipe, call, num_inference_steps=2)
    eager, eager_s = denoise(run, pipe, call)
    compile_s = COMPILE_PRIOR_S[run.mode]
    settings = [("torch.compile(unet), no cache", None)] + [
        (f"ours compiled, N={n} b=1", n) for n in s.compile_intervals] + [("ours compiled, N=1", 1)]
    rows, results = [], {}
    torch._dynamo.reset()
    try:
        with recompile_limit(64):
            for label, interval in settings:
                if run.budget.left() < compile_s + 3 * eager_s:
                    rows.append([label, "not run (budget)", "-", "-", "-", "-"])
                    continue
                cache = None  # a DeepCache is enabled and disabled again by each generation
                if interval is None:
                    pipe.unet = torch.compile(unet, **options)
                else:
                    cache = DeepCache(pipe, interval=interval, branch=1, compile=options or True)
                try:
                    _, first = denoise(run, pipe, call, cache)  # compiles
                    runs = [denoise(run, pipe, call, cache) for _ in range(2)]
                finally:
                    pipe.unet = unet
                latents, seconds = runs[0][0], min(r[1] for r in runs)
                results[label] = (latents, seconds)
                base = results.get(settings[0][0])
                rows.append([label, f"{first:.1f}", f"{seconds:.3f}", f"{eager_s / seconds:.2f}x",
                             f"{base[1] / seconds:.2f}x" if base else "-", f"{max_diff(latents, eager):.1e}"])
    finally:
        torch._dynamo.reset()
    plain, once = results.get(settings[0][0]), results.get(settings[-1][0])
    same = plain and once and same_bits(once[0], plain[0])
    identity = (f"N = 1 compiled vs the compiled plain UNet: **{'bit-identical' if same else 'not bit-identical'}** "
                f"(max abs diff {max_diff(once[0], plain[0]):.1e}; different graphs may fuse differently). "
                if plain and once else "")
    run.report.write(
        f"Settings: DDIM, as part 1 ({s.sd_size}^2, {s.sd_steps} steps, CFG); torch.compile "
        f"{options or 'defaults (Inductor)'}; eager no cache {eager_s:.3f} s. First call = compilation + one "
        "generation; time = best of two more.\n\n" + identity + "\n\n"
        + table(["setting", "first call s", "seconds", "vs eager no cache", "vs compiled no cache",
                 "max abs diff vs eager no cache"], rows))
