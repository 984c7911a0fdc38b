"""The Models tab's contents: the device summary and the models and weights tables (rows, Markdown)."""

from __future__ import annotations

from typing import Any

from vision.ui.memory import process_rss_mb

MODELS_HEADERS = ["model", "loaded", "device", "dtype", "memory (MiB)", "weights"]
WEIGHTS_HEADERS = ["weights", "description", "size (MB)", "status", "licence"]


def models_table(hub) -> list[list[Any]]:
    """Rows of the models panel: the hub's view of every model (loaded, device, memory, weights)."""
    return [[r["name"], "yes" if r["loaded"] else "no", r["device"], r["dtype"], r["memory_mb"], r["weights"]]
            for r in hub.status()]


def weights_table() -> list[list[Any]]:
    """Rows of the weights registry: which downloads are present on disk (never touches the network)."""
    from vision import weights

    return [[s.name, s.description, s.size_mb, weights.status(s.name), s.license] for s in weights.REGISTRY.values()]


def device_summary(hub) -> str:
    """One Markdown paragraph: mode, device, accelerator and process memory."""
    import torch

    from vision.tiny import TINY_NOTICE

    lines = [f"**Mode:** {'tiny (random weights)' if hub.tiny else 'full models'}",
             f"**Device:** `{hub.device}`  |  torch {torch.__version__}"]
    if hub.tiny:
        lines.append(f"**{TINY_NOTICE}**")
    if hub.device.startswith("cuda") and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        lines.append(f"**GPU:** {torch.cuda.get_device_name()}  |  allocated "
                     f"{torch.cuda.memory_allocated() / 2**30:.2f} GiB, in use {(total - free) / 2**30:.2f} "
                     f"of {total / 2**30:.1f} GiB")
    rss = process_rss_mb()
    if rss is not None:
        lines.append(f"**Server process memory (RSS):** {rss:.0f} MiB")
    loaded = sum(1 for r in hub.status() if r["loaded"])
    lines.append(f"**Models loaded:** {loaded} (models load on first use; missing weights download then)")
    return "\n\n".join(lines)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table of ``rows`` under ``headers`` (a '|' inside a cell is escaped; empty cells stay empty)."""
    def cells(values) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    return "\n".join([cells(headers), "|" + "---|" * len(headers), *(cells(row) for row in rows)])
