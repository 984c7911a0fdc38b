"""PNG charts written next to each evaluation table (matplotlib's object API: no global pyplot state,
no display needed). In tiny mode every title says the numbers are random-weight noise."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

TINY_TITLE = "\nTINY MODE: random-weight models, these numbers are noise"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _title(text: str, tiny: bool) -> str:
    return text + (TINY_TITLE if tiny else "")


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v if v is not None and math.isfinite(v) else math.nan for v in values]


def class_bars(names: Sequence[str], values: Sequence[float | None], path: str | Path, title: str,
               mean: float | None = None, ylabel: str = "IoU (%)", tiny: bool = False) -> Path:
    """One bar per class (values are fractions, drawn as percent), with the mean as a dashed line."""
    fig = _figure(min(40.0, max(6.0, 0.28 * len(names) + 2)), 4.2)  # FSS-1000: 240 bars in 4000 px
    ax = fig.add_subplot()
    heights = [100 * v for v in _finite(values)]
    ax.bar(range(len(names)), heights, color="#4c72b0")
    ax.set_xticks(range(len(names)), list(names), rotation=90, fontsize=7 if len(names) > 30 else 9)
    if mean is not None and math.isfinite(mean):
        ax.axhline(100 * mean, color="#c44e52", linestyle="--", label=f"mean {100 * mean:.2f}")
        ax.legend(loc="upper right")
    ax.set_ylim(0, 100)
    ax.set_ylabel(ylabel)
    ax.set_title(_title(title, tiny), fontsize=10)
    fig.savefig(path)
    return Path(path)


def speedup_scatter(points: Sequence[dict], path: str | Path, title: str, tiny: bool = False) -> Path:
    """CLIP score (y) against measured speed-up (x); each point {"label", "speedup", "score"}."""
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    for p in points:
        if p["speedup"] is None or p["score"] is None:
            continue
        ax.scatter([p["speedup"]], [p["score"]], color="#c44e52" if p.get("baseline") else "#4c72b0")
        ax.annotate(p["label"], (p["speedup"], p["score"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.set_xlabel("measured speed-up over no cache (x)")
    ax.set_ylabel("CLIP score")
    ax.grid(alpha=0.3)
    ax.set_title(_title(title, tiny), fontsize=10)
    fig.savefig(path)
    return Path(path)


def round_curves(rounds: Sequence[int], series: dict[str, Sequence[float | None]], path: str | Path, title: str,
                 tiny: bool = False) -> Path:
    """One panel per metric (e.g. aCCS and CLIP-T) against the round, sharing the x axis."""
    fig = _figure(6.4, 2.4 * len(series) + 0.6)
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, values) in zip(axes, series.items()):
        ax.plot(list(rounds), _finite(values), marker="o")
        ax.set_ylabel(name)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("round")
    axes[-1].set_xticks(list(rounds))
    axes[0].set_title(_title(title, tiny), fontsize=10)
    fig.savefig(path)
    return Path(path)
