"""``python -m vision eval ipseg``: IPSeg's (or GF-SAM's) one-shot (k-shot) segmentation on PerSeg, FSS-1000,
COCO-20i and PASCAL-5i.

Every episode gives IPSeg the K prompt images with their ground-truth masks (the standard few-shot
protocol; the reference's ``--oneshot`` path) and the query image, and compares IPSeg's mask (the union
of its instances; empty when the concept is judged absent) with the query's ground truth at the
original image size. Metrics (:mod:`vision.evaluation.segmentation_metrics`): mIoU per fold (mean of the
class IoUs accumulated over each class's episodes) and FB-IoU; for PerSeg also bIoU. With several
folds the table's last row is the mean over folds (how COCO-20i / PASCAL-5i results are reported).

Engine settings come from ``--method`` (``ipseg``, ``gfsam`` or both), ``--preset``
(``IPSegConfig.from_preset``; without it each method's own preset, ``default`` / ``gfsam_fast``),
``--features`` (the config's ``features`` field), ``--sam`` (``sam_model``) and ``--set KEY=VALUE`` for any
other config field; the engine validates them. An episode the engine refuses (e.g. an empty prompt mask)
counts as an empty prediction and is listed in the summary. With several methods every method runs the
same episodes, each method's outputs go to ``--out/<method>/`` and ``--out`` gets the comparison
(``table.txt``: one row per method; ``summary.json``: each method's metrics and config).

Outputs in ``--out``: ``episodes.jsonl`` (the episode list: give it back with ``--episode-file`` to rerun
exactly the same episodes), ``items.jsonl`` (one line per episode: IoU, FB-IoU, bIoU, presence,
seconds), ``summary.json``, ``table.txt`` and ``miou_per_class.png``.

A real-weight smoke check on a synthetic PerSeg-layout dataset (exact masks, see
:mod:`vision.evaluation.synthetic_datasets`)::

    python -m vision eval synthetic --layout perseg --root /tmp/perseg_synth --classes 8 --images 6
    python -m vision eval ipseg --dataset perseg --root /tmp/perseg_synth --sam sam_t --features sam \\
        --out /tmp/ipseg_eval_sam_t --json bench/results/ipseg_eval_sam_t.json
    cp /tmp/ipseg_eval_sam_t/table.txt bench/results/ipseg_eval_sam_t.txt

and both methods on the same episodes, SAM features and ``sam_t`` for each::

    python -m vision eval ipseg --dataset perseg --root /tmp/perseg_synth --method ipseg gfsam --sam sam_t \
        --features sam --out /tmp/ipseg_gfsam_sam_t --json bench/results/ipseg_gfsam_eval_sam_t.json
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vision.evaluation import fewshot_datasets as D
from vision.evaluation import records as R
from vision.evaluation.segmentation_metrics import FewShotMeter

EPISODES = "episodes.jsonl"
PLOT = "miou_per_class.png"
MAX_PRINTED_CLASSES = 80  # longer per-class tables go to table.txt only


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=D.DATASETS, help="benchmark (layouts: "
                        "vision/evaluation/fewshot_datasets.py)")
    parser.add_argument("--root", required=True, metavar="DIR", help="the dataset folder")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for episodes, per-episode JSONL, "
                        "summary, table and plot")
    parser.add_argument("--folds", type=int, nargs="+", metavar="K",
                        help="COCO-20i / PASCAL-5i folds (default 0 1 2 3)")
    parser.add_argument("--shots", type=int, default=1, metavar="K", help="prompt images per episode (default 1)")
    parser.add_argument("--episodes", type=int, metavar="N", help="episodes per fold (default 1000 for coco and "
                        "pascal; one per query image for perseg and fss, where N keeps the first N)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episode draws (default 0)")
    parser.add_argument("--episode-file", metavar="FILE", help="rerun the episodes of an earlier run's episodes.jsonl")
    parser.add_argument("--split", metavar="FILE", help="FSS-1000 test split file (default ROOT/test.txt)")
    parser.add_argument("--method", nargs="+", choices=("ipseg", "gfsam"), metavar="METHOD",
                        help="ipseg and/or gfsam (several: the same episodes for each, and a comparison table); "
                             "default: the preset's")
    parser.add_argument("--preset", help="IPSegConfig.from_preset(NAME) (e.g. paper, gfsam); default: each method's "
                        "own (default, gfsam_fast)")
    parser.add_argument("--features", help="feature set: dino+sd | dino | sam (the config's 'features' field)")
    parser.add_argument("--sam", help="SAM model of the hub (the config's 'sam_model': sam_b, sam_h, sam_t, ...)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other IPSegConfig field (repeatable)")
    parser.add_argument("--json", metavar="FILE", help="also write the summary here")


def engine_config(args: argparse.Namespace, method: str | None = None) -> Any:
    """The config of one run: ``--preset`` (or ``method``'s own preset) with ``method`` and the overrides."""
    from vision.engines.ipseg import IPSegConfig
    from vision.engines.ipseg.config import METHOD_PRESETS

    overrides = {**R.parse_settings(args.set), "features": args.features, "sam_model": args.sam, "method": method}
    return R.make_config(IPSegConfig, args.preset or (METHOD_PRESETS[method] if method else None), overrides)


def episode_prompts(dataset: D.FewShotDataset, episode: D.Episode, masks: D.EpisodeMasks) -> Any:
    """The IPSeg concept of an episode: its prompt images with their ground-truth masks."""
    from vision.engines.ipseg import Concept, Prompt

    prompts = [Prompt(D.load_rgb(dataset.root / s), mask=m) for s, m in zip(episode.supports, masks.supports)]
    return Concept(prompts, name=episode.category)


def evaluate_episodes(engine: Any, dataset: D.FewShotDataset, episodes: Sequence[D.Episode],
                      log: R.ItemLog | None = None, on_episode: Callable[[D.Episode], None] | None = None,
                      boundary: bool = False, meters: dict[Any, FewShotMeter] | None = None,
                      failures: list[dict] | None = None) -> tuple[dict[Any, FewShotMeter], list[dict]]:
    """Run every episode; returns ({fold: meter}, failures). ``engine(concept, image)`` must
    return a result with ``.mask`` (bool [H, W]); an ``IPSegError`` counts as an empty prediction.
    ``meters`` / ``failures`` given by the caller are filled in place (kept if the run is interrupted)."""
    from vision.engines.ipseg import IPSegError

    meters = {} if meters is None else meters
    failures = [] if failures is None else failures
    for episode in episodes:
        masks = dataset.masks(episode)
        query = D.load_rgb(dataset.root / episode.query)
        start = time.perf_counter()
        record: dict[str, Any] = {"episode": episode.id, "fold": episode.fold, "category": episode.category,
                                  "query": episode.query, "supports": list(episode.supports)}
        try:
            result = engine(episode_prompts(dataset, episode, masks), query)
            pred = result.mask
            record.update(presence=R.clean(result.presence), present=bool(result.concepts[0].present),
                          instances=len(result.masks))
        except IPSegError as err:
            pred = np.zeros(masks.query.shape, dtype=bool)
            record["error"] = str(err)
            failures.append({"episode": episode.id, "fold": episode.fold, "error": str(err)})
        if pred.shape != masks.query.shape:
            raise D.DatasetError(f"the prediction for {dataset.root / episode.query} is "
                                 f"{pred.shape[1]}x{pred.shape[0]} "
                                 f"but its mask is {masks.query.shape[1]}x{masks.query.shape[0]}")
        meter = meters.setdefault(episode.fold, FewShotMeter(boundary=boundary))
        numbers = meter.update(episode.category, pred, masks.query, masks.ignore)
        record.update({k: R.clean(v) for k, v in numbers.items()})
        record["seconds"] = round(time.perf_counter() - start, 4)
        if log is not None:
            log.write(record)
        if on_episode is not None:
            on_episode(episode)
    return meters, failures


def summarise(meters: dict[Any, FewShotMeter], boundary: bool) -> tuple[dict, str]:
    """(metrics for JSON, text tables): per fold, the mean over folds and per class."""
    folds = sorted(meters, key=lambda f: -1 if f is None else f)
    per_fold = {}
    for fold in folds:
        m = meters[fold]
        per_fold["all" if fold is None else str(fold)] = {
            "mIoU": R.clean(m.miou()), "FB-IoU": R.clean(m.fb_iou()), "episodes": sum(m.episodes.values()),
            "classes": len(m.classes), **({"bIoU": R.clean(m.biou())} if boundary else {})}
    keys = ["mIoU", "FB-IoU"] + (["bIoU"] if boundary else [])

    def mean_of(key: str) -> float | None:
        values = [v[key] for v in per_fold.values() if v[key] is not None]
        return R.clean(sum(values) / len(values)) if values else None

    mean = {k: mean_of(k) for k in keys}
    header = ["fold", "episodes", "classes", *keys]
    rows = [[fold, v["episodes"], v["classes"], *(R.pct(v[k]) for k in keys)] for fold, v in per_fold.items()]
    rule = []
    if len(per_fold) > 1:
        rule = [len(rows)]
        rows.append(["mean", sum(v["episodes"] for v in per_fold.values()),
                     sum(v["classes"] for v in per_fold.values()), *(R.pct(mean[k]) for k in keys)])
    fold_table = R.format_table(header, rows, rule)

    per_class, class_rows = {}, []
    for fold in folds:
        m = meters[fold]
        ious, bious = m.class_iou(), m.class_biou()
        for name in m.classes:
            entry = {"fold": fold, "episodes": m.episodes[name], "IoU": R.clean(ious[name])}
            if boundary:
                entry["bIoU"] = R.clean(bious.get(name, math.nan))
            per_class[name] = entry
            class_rows.append([name, "-" if fold is None else fold, m.episodes[name], R.pct(entry["IoU"]),
                               *([R.pct(entry["bIoU"])] if boundary else [])])
    class_table = R.format_table(["class", "fold", "episodes", "IoU", *(["bIoU"] if boundary else [])], class_rows)
    return {"folds": per_fold, "mean": mean, "per_class": per_class}, f"{fold_table}\n\n{class_table}"


def _episodes(args: argparse.Namespace, dataset: D.FewShotDataset, out: Path) -> list[D.Episode]:
    target = out / EPISODES
    if args.episode_file:
        episodes = D.read_episodes(args.episode_file, dataset.name)
        if Path(args.episode_file).resolve() != target.resolve():
            shutil.copyfile(args.episode_file, target)
        return episodes
    folds = args.folds if args.folds is not None else dataset.folds()
    count = args.episodes if args.episodes is not None else D.DEFAULT_EPISODES[dataset.name]
    if count is not None and count < 1:
        raise R.EvalError("--episodes must be at least 1")
    episodes = D.make_episodes(dataset, folds, args.shots, count, args.seed)
    if not episodes:
        raise D.DatasetError(f"empty split: no episode could be made from {dataset.root}")
    D.write_episodes(target, episodes)
    return episodes


def run(args: argparse.Namespace) -> int:
    from vision.engines.ipseg import IPSegEngine

    methods = list(dict.fromkeys(args.method or [None]))
    try:
        out = R.output_folder(args.out)
        configs = [engine_config(args, method) for method in methods]
        engines = [IPSegEngine(config) for config in configs]
        dataset = D.open_dataset(args.dataset, args.root, cache_dir=out, split=args.split)
        episodes = _episodes(args, dataset, out)
        folders = [out] if len(engines) == 1 else [R.output_folder(out / e.config.method) for e in engines]
    except R.USER_ERRORS as err:
        print(f"error: {R.message(err)}", file=sys.stderr)
        return 2
    summaries = []
    for engine, folder in zip(engines, folders, strict=True):
        code, summary = _run_engine(args, engine, dataset, episodes, folder)
        if code not in (0, 130):
            return code
        summaries.append(summary)
        if code == 130:
            break
    if len(engines) > 1:
        _write_comparison(args, out, summaries)
    return 130 if any(s["interrupted"] for s in summaries) else 0


def _write_comparison(args: argparse.Namespace, out: Path, summaries: list[dict]) -> None:
    """``--out``'s table.txt / summary.json with one row per method (the same episodes for each)."""
    boundary = any("bIoU" in s["mean"] for s in summaries)
    keys = ["mIoU", "FB-IoU"] + (["bIoU"] if boundary else [])
    rows = [[s["config"]["method"], s["config"].get("preset", "-"), s["config"].get("mode", "-"),
             s["config"]["fields"]["sam_model"], s["config"]["fields"]["features"], s["episodes"],
             *(R.pct(s["mean"][k]) for k in keys), f"{s['seconds'] / max(1, s['episodes']):.2f}"] for s in summaries]
    table = R.format_table(["method", "preset", "mode", "sam", "features", "episodes", *keys, "s/episode"], rows)
    notice = summaries[0]["notice"]
    header = f"{summaries[0]['dataset']} ({args.shots}-shot), the same episodes for each method"
    text = "\n".join(filter(None, [notice, header, table]))
    print(text)
    summary = {"engine": "ipseg", "dataset": summaries[0]["dataset"], "root": summaries[0]["root"],
               "shots": args.shots, "tiny": summaries[0]["tiny"], "notice": notice, "machine": R.machine(),
               "methods": {s["config"]["method"]: {k: s[k] for k in ("folds", "mean", "episodes", "seconds",
                                                                     "config", "failures")} for s in summaries}}
    R.write_results(out, summary, text, args.json)
    print(f"comparison: {out / R.TABLE}")


def _run_engine(args: argparse.Namespace, engine: Any, dataset: D.FewShotDataset, episodes: list[D.Episode],
                out: Path) -> tuple[int, dict]:
    """One method over the episodes: items.jsonl, summary.json, table.txt and the plot in ``out``.
    Returns (exit code, summary)."""
    tiny = bool(getattr(engine.hub, "tiny", False))
    boundary = dataset.name == "perseg"
    method = engine.config.method
    bar = R.progress(len(episodes), f"{method} {dataset.name}", "episode")
    started = time.perf_counter()
    interrupted = False
    meters: dict[Any, FewShotMeter] = {}
    failures: list[dict] = []
    with R.ItemLog(out / R.ITEMS) as log:
        try:
            evaluate_episodes(engine, dataset, episodes, log, lambda e: bar.update(1), boundary, meters, failures)
        except R.USER_ERRORS as err:
            bar.close()
            print(f"error: {R.message(err)}", file=sys.stderr)
            return 2, {}
        except KeyboardInterrupt:  # keep what was measured: the summary covers the episodes done
            interrupted = True
    bar.close()
    seconds = time.perf_counter() - started
    metrics, table = summarise(meters, boundary)
    done = sum(v["episodes"] for v in metrics["folds"].values())
    title = {"ipseg": "IPSeg", "gfsam": "GF-SAM"}.get(method, method)
    header = (f"{title} on {dataset.name} ({args.shots}-shot): {done} episodes, {seconds:.1f} s "
              f"({seconds / max(1, done):.2f} s/episode); preset={engine.config.preset} mode={engine.config.mode} "
              f"sam={engine.config.sam_model} features={engine.config.features}")
    notice = R.tiny_notice(tiny)
    notes = (["INTERRUPTED: the numbers cover the episodes done so far"] if interrupted else []) + (
        [f"{len(failures)} episode(s) refused by the engine counted as empty predictions (see summary.json)"]
        if failures else [])
    text = "\n".join(filter(None, [notice, header, table, *notes]))
    fold_table = table.split("\n\n")[0]
    shown = table if len(metrics["per_class"]) <= MAX_PRINTED_CLASSES else \
        f"{fold_table}\n({len(metrics['per_class'])} classes: the per-class table is in {out / R.TABLE})"
    print("\n".join(filter(None, [notice, header, shown, *notes])))
    summary = {"engine": "ipseg", "method": method, "dataset": dataset.name, "root": str(dataset.root),
               "shots": args.shots, "seed": args.seed, "episodes": done, "episodes_planned": len(episodes),
               "interrupted": interrupted, "tiny": tiny, "notice": notice, "config": R.config_record(engine.config),
               "prompt_region": "the ground-truth mask of each prompt image", "seconds": round(seconds, 2),
               "machine": R.machine(), "failures": failures, **metrics,
               "files": {"episodes": EPISODES, "items": R.ITEMS, "plot": PLOT}}
    single = args.method is None or len(set(args.method)) == 1
    R.write_results(out, summary, text, args.json if single else None)
    names = list(metrics["per_class"])
    from vision.evaluation.plots import class_bars

    class_bars(names, [metrics["per_class"][n]["IoU"] for n in names], out / PLOT,
               f"{title} {dataset.name} {args.shots}-shot: IoU per class", mean=metrics["mean"]["mIoU"], tiny=tiny)
    print(f"results: {out}")
    return (130 if interrupted else 0), summary
