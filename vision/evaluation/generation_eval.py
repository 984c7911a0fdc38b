"""``python -m vision eval generate``: DeepCache's quality / speed table (CLIP score, measured speed-up,
MACs per step) for one or more (N, branch) settings against the uncached baseline in the same run.

Prompts (``--prompts FILE``, ``--format auto`` picks by suffix):

* ``lines``: a text file, one prompt per non-blank line;
* ``parti``: the PartiPrompts TSV (``PartiPrompts.tsv``, a header with a ``Prompt`` column), as
  DeepCache's ``generate.py --dataset parti`` reads it;
* ``coco``: a COCO captions JSON (``captions_val2017.json``): the first caption of every image, images
  in id order (DeepCache's ``--dataset coco2017`` takes ``captions[0]`` of every validation image).

Every prompt batch (``--batch``) runs the baseline (no cache) and then each setting back to back, with
the same seeds (image i uses ``seed + i``), after one short warm-up; a setting's speed-up is the
baseline's total pipeline time over its own (text encoding, denoising and VAE decoding included, as
the paper times whole generations). CLIP score: :mod:`vision.evaluation.clip_scoring` (100 x max(cos, 0)
with ViT-g/14 by default, DeepCache's ``clip_score.py``). MACs per UNet call for one image at the run's
size, full and retrieval, are counted with ``FlopCounterMode`` on the meta device
(``bench/deepcache.py``'s ``count_macs``; "all ops" and the paper's convention without the attention
matmuls), with the MAC-count speed-up bound of the run's exact full/retrieval step counts.

Outputs in ``--out``: ``images/baseline/00000.png ...`` and ``images/N{N}_b{B}/...`` (one folder per
setting, so FID can be computed with a standard tool, e.g. ``python -m pytorch_fid REAL_DIR
OUT/images/N3_b1``), ``prompts.txt`` (prompt i = image i), ``items.jsonl`` (one line per image and
setting), ``settings.csv`` (one row per (N, B): the layout of the paper's Tables 13/14),
``summary.json``, ``table.txt`` and ``clip_vs_speedup.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vision.evaluation import records as R

PROMPT_FORMATS = ("auto", "lines", "parti", "coco")
CSV_NAME = "settings.csv"
PLOT = "clip_vs_speedup.png"
CSV_COLUMNS = ("setting", "N", "branch", "schedule", "steps", "scheduler", "images", "seconds", "seconds_per_image",
               "speedup", "clip_score", "clip_score_baseline", "clip_score_delta", "gmacs_full", "gmacs_partial",
               "gmacs_full_paper", "gmacs_partial_paper", "full_steps", "mac_speedup_bound")


# ------------------------------------------------------------------------------------------------ prompts


def load_prompts(path: str | Path, fmt: str = "auto", limit: int | None = None) -> list[str]:
    """Prompts from a plain text file, the PartiPrompts TSV or a COCO captions JSON (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise R.EvalError(f"{path}: no such prompt file")
    if fmt == "auto":
        fmt = {".tsv": "parti", ".json": "coco"}.get(path.suffix.lower(), "lines")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise R.EvalError(f"{path}: not a UTF-8 text file ({err})") from None
    if fmt == "parti":
        prompts = _parti(path, text)
    elif fmt == "coco":
        prompts = _coco(path, text)
    elif fmt == "lines":
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        raise R.EvalError(f"unknown prompt format {fmt!r}; choose one of {', '.join(PROMPT_FORMATS)}")
    if limit is not None:
        prompts = prompts[: max(0, limit)]
    if not prompts:
        raise R.EvalError(f"{path} has no prompts (read as {fmt}): give at least one")
    return prompts


def _parti(path: Path, text: str) -> list[str]:
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    columns = {c.strip().lower(): c for c in (rows[0].keys() if rows else [])}
    if rows and "prompt" not in columns:
        raise R.EvalError(f"{path}: a PartiPrompts TSV needs a 'Prompt' column, found {list(rows[0].keys())}")
    return [row[columns["prompt"]].strip() for row in rows if (row[columns["prompt"]] or "").strip()]


def _coco(path: Path, text: str) -> list[str]:
    try:
        data = json.loads(text)
    except ValueError as err:
        raise R.EvalError(f"{path}: not a JSON file ({err})") from None
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise R.EvalError(f"{path}: a COCO captions file has an 'annotations' list of {{image_id, caption}}")
    first: dict[Any, str] = {}
    for a in annotations:
        if isinstance(a, dict) and "image_id" in a and str(a.get("caption", "")).strip():
            first.setdefault(a["image_id"], str(a["caption"]).strip())
    return [first[k] for k in sorted(first)]


# ----------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    """One DeepCache setting; interval 0 is the uncached baseline."""

    interval: int
    branch: int

    @property
    def label(self) -> str:
        return "baseline" if self.interval == 0 else f"N{self.interval}_b{self.branch}"


@dataclass
class Totals:
    """What one setting accumulated over the prompt batches."""

    seconds: float = 0.0
    scores: list[float] = field(default_factory=list)
    images: int = 0
    full_steps: list[int] | None = None
    partial_calls: int = 0


def count_step_macs(unet: Any, size: tuple[int, int], branches: Sequence[int]) -> dict | None:
    """{"full": (all ops, paper), b: (all ops, paper)} GMACs per UNet call for one image, or None when
    the UNet is not SD1.x-like (the counter passes no SDXL added conditioning)."""
    if getattr(unet.config, "addition_embed_type", None) is not None or size[0] != size[1]:
        return None  # count_macs passes no added conditioning and works on square latents
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    count_macs = R.bench_module("deepcache").count_macs
    return count_macs(config, size[0], 1, list(branches), unet.config.cross_attention_dim)


def _sig(value: float) -> float:
    """Four significant digits (GMACs span 0.001 for tiny UNets to 338 for SD1.5)."""
    return float(f"{value:.4g}")


def mac_bound(steps: int, full_steps: int, full: float, part: float) -> float:
    """Speed-up bound from MAC counts: T x C_full / (F x C_full + (T - F) x C_part)."""
    return steps * full / (full_steps * full + (steps - full_steps) * part)


def evaluate_settings(prompts: Sequence[str], base: Any, settings: Sequence[Setting], out: Path,
                      scorer: Any = None, batch: int = 1, log: R.ItemLog | None = None,
                      on_run: Any = None) -> dict[Setting, Totals]:
    """Generate every prompt with the baseline and each setting (same seeds), write the images, score
    them; returns the totals per setting (the baseline first)."""
    from vision.engines.generate import GenerateEngine

    runs = [Setting(0, base.branch), *settings]
    totals = {s: Totals() for s in runs}
    GenerateEngine(base.replace(deepcache=0, steps=min(2, base.steps), compare=False))(list(prompts[:1]))
    for start in range(0, len(prompts), batch):
        chunk = list(prompts[start:start + batch])
        for setting in runs:
            config = base.replace(deepcache=setting.interval, branch=setting.branch, seed=base.seed + start,
                                  compare=False)
            result = GenerateEngine(config)(chunk)
            scores = scorer.clip_score(result.images, chunk) if scorer is not None else [None] * len(chunk)
            total = totals[setting]
            total.seconds += result.seconds
            total.images += len(chunk)
            if result.deepcache is not None:
                total.full_steps = result.deepcache["full_steps"]
                total.partial_calls += result.deepcache["partial_calls"]
            folder = out / "images" / setting.label
            folder.mkdir(parents=True, exist_ok=True)
            for i, (image, score) in enumerate(zip(result.images, scores)):
                index = start + i
                Image.fromarray(image).save(folder / f"{index:05d}.png")
                total.scores.append(score)
                if log is not None:
                    log.write({"index": index, "setting": setting.label, "N": setting.interval,
                               "branch": setting.branch, "prompt": chunk[i], "seed": result.seeds[i],
                               "clip_score": R.clean(score), "batch_seconds": round(result.seconds, 4),
                               "image": f"images/{setting.label}/{index:05d}.png"})
            if on_run is not None:
                on_run(setting, len(chunk))
    return totals


def settings_rows(totals: dict[Setting, Totals], base: Any, macs: dict | None) -> list[dict]:
    """One row per setting (baseline first), the columns of :data:`CSV_COLUMNS`."""
    baseline = totals[next(iter(totals))]

    def mean(scores: list) -> float | None:
        values = [s for s in scores if s is not None]
        return float(np.mean(values)) if values else None

    base_score = mean(baseline.scores)
    rows = []
    for setting, t in totals.items():
        score = mean(t.scores)
        row = {"setting": setting.label, "N": setting.interval, "branch": setting.branch if setting.interval else "",
               "schedule": base.schedule if setting.interval else "", "steps": base.steps, "scheduler": base.scheduler,
               "images": t.images, "seconds": round(t.seconds, 3), "seconds_per_image": round(t.seconds / t.images, 4),
               "speedup": round(baseline.seconds / t.seconds, 3) if t.seconds else None,
               "clip_score": R.clean(score, 4), "clip_score_baseline": R.clean(base_score, 4),
               "clip_score_delta": R.clean(score - base_score, 4) if score is not None and base_score is not None
               else None}
        full_steps = len(t.full_steps) if t.full_steps is not None else base.steps
        row["full_steps"] = full_steps
        if macs is not None:
            full_all, full_paper = macs["full"]
            part_all, part_paper = macs[setting.branch] if setting.interval else macs["full"]
            row.update(gmacs_full=_sig(full_all), gmacs_partial=_sig(part_all) if setting.interval else "",
                       gmacs_full_paper=_sig(full_paper),
                       gmacs_partial_paper=_sig(part_paper) if setting.interval else "",
                       mac_speedup_bound=round(mac_bound(base.steps, full_steps, full_all, part_all), 3))
        rows.append({c: row.get(c, "") for c in CSV_COLUMNS})
    return rows


def render(rows: list[dict]) -> str:
    header = ["setting", "s/image", "speed-up", "CLIP", "dCLIP", "GMACs full", "GMACs part", "MAC bound"]
    body = [[r["setting"], r["seconds_per_image"], r["speedup"], r["clip_score"] if r["clip_score"] is not None
             else "n/a", r["clip_score_delta"] if r["clip_score_delta"] is not None else "n/a",
             r["gmacs_full"], r["gmacs_partial"] or "-", r["mac_speedup_bound"]] for r in rows]
    return R.format_table(header, body, rule_before=[1] if len(body) > 1 else [])


# ----------------------------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vision.engines.generate import SCHEDULERS

    parser.add_argument("--prompts", required=True, metavar="FILE", help="text lines, PartiPrompts .tsv or COCO "
                        "captions .json")
    parser.add_argument("--format", choices=PROMPT_FORMATS, default="auto",
                        help="prompt file format (default: by suffix)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for images, JSONL, CSV, summary, plot")
    parser.add_argument("--limit", type=int, metavar="N", help="the first N prompts only")
    parser.add_argument("--deepcache", type=int, nargs="+", metavar="N", help="cache interval(s) N to compare with "
                        "the baseline (default: the config's, 3)")
    parser.add_argument("--branch", type=int, nargs="+", metavar="B", help="skip branch(es) (default: the config's, 1)")
    parser.add_argument("--schedule", help="uniform | nonuniform")
    parser.add_argument("--center", type=int, help="non-uniform schedule centre c")
    parser.add_argument("--power", type=float, help="non-uniform schedule power p")
    parser.add_argument("--steps", type=int, metavar="T", help="denoising steps (default 50)")
    parser.add_argument("--scheduler", help=f"one of {', '.join(SCHEDULERS)} or an alias (plms, dpm, ...)")
    parser.add_argument("--guidance", type=float, help="CFG scale (default 7.5)")
    parser.add_argument("--seed", type=int, help="seed of image 0 (image i uses seed + i)")
    parser.add_argument("--size", type=int, help="square image side (default 512 SD1.5, 64 tiny)")
    parser.add_argument("--family", help="sd15 | sdxl")
    parser.add_argument("--batch", type=int, default=1, help="prompts per pipeline call (default 1)")
    parser.add_argument("--scorer", default="clip_g14", help="hub CLIP model for the CLIP score (default clip_g14, "
                        "ViT-g/14 laion2b_s34b_b88k; 'none' to skip scoring)")
    parser.add_argument("--preset", help="GenerateConfig.from_preset(NAME)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other GenerateConfig field")
    parser.add_argument("--json", metavar="FILE", help="also write the summary here")


def base_config(args: argparse.Namespace) -> Any:
    from vision.engines.generate import GenerateConfig

    overrides = {**R.parse_settings(args.set), "steps": args.steps, "scheduler": args.scheduler,
                 "guidance": args.guidance, "seed": args.seed, "schedule": args.schedule, "center": args.center,
                 "power": args.power, "family": args.family, "width": args.size, "height": args.size}
    return R.make_config(GenerateConfig, args.preset, overrides)


def make_settings(args: argparse.Namespace, base: Any, unet: Any) -> list[Setting]:
    """Every (N, B) of the command line, each checked on the UNet before anything runs."""
    from vision.deepcache import DeepCache

    intervals = args.deepcache if args.deepcache is not None else [base.deepcache]
    branches = args.branch if args.branch is not None else [base.branch]
    if any(n < 1 for n in intervals):
        raise R.EvalError(f"--deepcache intervals must be >= 1 (the baseline without cache always runs), "
                          f"got {intervals}")
    settings = [Setting(n, b) for n in intervals for b in branches]
    for s in settings:
        base.replace(deepcache=s.interval, branch=s.branch).validate()
        DeepCache(unet, interval=s.interval, branch=s.branch, schedule=base.schedule, center=base.center,
                  power=base.power)  # refuses a branch the UNet does not have (never enabled here)
    return settings


def run(args: argparse.Namespace) -> int:
    from vision.engines.generate import FAMILIES
    from vision.evaluation.clip_scoring import ClipScorer
    from vision.hub import get_hub

    hub = get_hub()
    try:
        if args.batch < 1:
            raise R.EvalError("--batch must be at least 1")
        out = R.output_folder(args.out)
        prompts = load_prompts(args.prompts, args.format, args.limit)
        base = base_config(args).validate()
        unet = hub.get(FAMILIES[base.family]["unet"])
        settings = make_settings(args, base, unet)
        scorer = None if args.scorer.lower() == "none" else ClipScorer.from_hub(args.scorer, hub)
    except R.USER_ERRORS as err:
        print(f"error: {R.message(err)}", file=sys.stderr)
        return 2
    tiny = bool(getattr(hub, "tiny", False))
    (out / "prompts.txt").write_text("".join(p.replace("\n", " ") + "\n" for p in prompts), encoding="utf-8")
    bar = R.progress(len(prompts) * (len(settings) + 1), "generate", "image")
    started = time.perf_counter()
    with R.ItemLog(out / R.ITEMS) as log:
        try:
            totals = evaluate_settings(prompts, base, settings, out, scorer, args.batch, log,
                                       lambda s, n: bar.update(n))
        except KeyboardInterrupt:
            bar.close()
            print(f"interrupted: the images and per-image scores so far are in {out}", file=sys.stderr)
            return 130
        except R.USER_ERRORS as err:
            bar.close()
            print(f"error: {R.message(err)}", file=sys.stderr)
            return 2
    bar.close()
    write_report(out, args, prompts, base, settings, totals, unet, scorer, tiny, time.perf_counter() - started)
    print(f"results: {out}")
    return 0


def write_report(out: Path, args: argparse.Namespace, prompts: list[str], base: Any, settings: list, totals: Any,
                 unet: Any, scorer: Any, tiny: bool, seconds: float) -> None:
    """The CSV, the printed table, ``summary.json`` and the speed-up plot of a finished evaluation."""
    from vision.engines.generate import default_size
    from vision.hub import get_hub

    side = base.width or default_size(get_hub(), base.family)
    macs = count_step_macs(unet, (base.height or side, side), sorted({s.branch for s in settings}))
    rows = settings_rows(totals, base, macs)
    with open(out / CSV_NAME, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    notice = R.tiny_notice(tiny)
    header = (f"DeepCache on {base.family}: {len(prompts)} prompts, {base.steps} {base.scheduler} steps, "
              f"{side}px, guidance {base.guidance}, {base.schedule} schedule; scorer "
              f"{scorer.name if scorer else 'none'}; {seconds:.1f} s")
    notes = [] if macs is not None else ["MACs not counted (SDXL or non-square images: the counter handles "
                                         "square SD1.x UNets only)"]
    text = "\n".join(filter(None, [notice, header, render(rows), *notes,
                                   f"FID: images per setting in {out / 'images'} (e.g. python -m pytorch_fid "
                                   f"REAL_IMAGES {out / 'images' / settings[0].label})"]))
    print(text)
    summary = {"engine": "generate", "prompts_file": str(args.prompts), "prompts": len(prompts), "tiny": tiny,
               "notice": notice, "config": R.config_record(base), "scorer": scorer.name if scorer else None,
               "clip_score": "100 x max(cos(image, prompt), 0), mean over images",
               "speedup": "baseline total pipeline seconds / setting's, same prompts and seeds, back to back per batch",
               "gmacs": None if macs is None else {str(k): v for k, v in macs.items()},
               "machine": R.machine(), "rows": rows,
               "files": {"csv": CSV_NAME, "items": R.ITEMS, "images": "images/", "plot": PLOT}}
    R.write_results(out, summary, text, args.json)
    from vision.evaluation.plots import speedup_scatter

    speedup_scatter([{"label": r["setting"], "speedup": r["speedup"], "score": r["clip_score"],
                      "baseline": r["N"] == 0} for r in rows], out / PLOT,
                    f"DeepCache {base.steps} {base.scheduler} steps: CLIP score vs speed-up", tiny=tiny)
