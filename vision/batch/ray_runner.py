"""The Ray Data runner of :mod:`vision.batch` (``--ray``; ``pip install 'ray[data]'``, an optional dependency).

The driver turns the to-do items into a Ray dataset, maps the engine over it in a pool of actors (each
calls ``make_processor()`` once, so models load once per actor, on the GPU Ray gives it) and receives
each item's encoded files and record back; the driver then writes them with the same
:class:`vision.batch.writer.Writer` as the local runner, so a cluster run and a local run produce identical
files (and the same resume, safety and ``results.jsonl`` rules). The actors read the input files by
path: on a multi-machine cluster the input folder must be on a filesystem every node can see.

Options (``run_batch(..., ray=True, ray_options={...})`` or the ``--ray-*`` flags): ``address`` (a
cluster; default a local Ray started and stopped here), ``num_actors`` (default: one per GPU, else 2),
``num_gpus`` per actor (default 1 when the cluster has GPUs, else 0), ``num_cpus`` per actor
(default 1), ``init`` (extra ``ray.init`` keywords, e.g. ``{"num_cpus": 2}``), ``env`` (extra
environment variables for the workers), ``tiny`` / ``device`` (the hub the actors build).
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vision.batch.errors import BatchError
from vision.batch.items import Item
from vision.batch.worker import Outcome, start_processor
from vision.wording import pip_install

_ROW_KEYS = ("id", "index", "path", "text", "params", "kind", "stem", "input_label")


def available() -> tuple[bool, str]:
    """(True, "") when Ray Data can be imported, else (False, why)."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except Exception as err:  # ImportError, or a broken install
        return False, f"ray[data] is not importable ({type(err).__name__}: {err}); {pip_install(repr('ray[data]'))}"
    return True, ""


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:  # NaN for a missing string
        return None
    return value


class _RayWorker:
    """One Ray actor: builds the processor once, then maps batches of item rows to outcomes."""

    def __init__(self, make_processor: Callable[[], Any], tiny: bool = False, device: str | None = None):
        if tiny:
            os.environ["VISION_TINY"] = "1"
        if tiny or device:
            import ray

            from vision.hub import ModelHub, set_hub

            if device and device.startswith("cuda") and ray.get_gpu_ids():
                device = "cuda"  # Ray narrows CUDA_VISIBLE_DEVICES to this actor's GPU(s)
            set_hub(ModelHub(tiny=tiny, device=device))
        self.worker = start_processor(make_processor)

    def __call__(self, columns: dict) -> dict:
        count = len(columns["id"])
        items = [Item.from_row({key: _plain(columns[key][i]) for key in _ROW_KEYS}) for i in range(count)]
        outcomes = self.worker.run(items)
        return {"id": np.array([o.id for o in outcomes], dtype=object),
                "payload": np.array([pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL) for o in outcomes],
                                    dtype=object)}


def run(todo: list[Item], make_processor: Callable[[], Any], record: Callable[[Item, Outcome], None], *,
        batch_size: int = 1, options: dict | None = None) -> None:
    """Process ``todo`` in Ray actors; ``record(item, outcome)`` is called on the driver for each."""
    ok, why = available()
    if not ok:
        raise BatchError(f"--ray: {why}")
    import ray
    import ray.data

    options = dict(options or {})
    started_here = False
    if not ray.is_initialized():
        env = {k: v for k, v in os.environ.items() if k.startswith("VISION_")}
        if options.get("tiny"):
            env["VISION_TINY"] = "1"
        env.update(options.get("env") or {})
        # Workers import what the driver imports: this `vision` package and the driver's sys.path.
        root = str(Path(__file__).resolve().parents[2])
        paths = [root, *env.get("PYTHONPATH", os.environ.get("PYTHONPATH", "")).split(os.pathsep),
                 *(p for p in sys.path if p and os.path.isdir(p) and "-packages" not in p)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
        init = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": True,
                "runtime_env": {"env_vars": env}}
        if options.get("address"):
            init["address"] = options["address"]
        init.update(options.get("init") or {})
        ray.init(**init)
        started_here = True
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # results.jsonl in the local runner's order
        context.enable_progress_bars = False  # our tqdm bar counts items as the driver writes them
        gpus_total = float(ray.cluster_resources().get("GPU", 0))
        num_gpus = options.get("num_gpus")
        if num_gpus is None:
            num_gpus = 1.0 if gpus_total >= 1 else 0.0
        num_actors = options.get("num_actors") or (max(1, int(gpus_total // num_gpus)) if num_gpus else 2)
        num_actors = max(1, min(int(num_actors), len(todo)))
        by_id = {item.id: item for item in todo}
        dataset = ray.data.from_items([item.to_row() for item in todo],
                                      override_num_blocks=max(1, min(len(todo), 4 * num_actors)))
        mapped = dataset.map_batches(
            _RayWorker,
            fn_constructor_args=(make_processor, bool(options.get("tiny")), options.get("device")),
            batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_actors),
            num_gpus=num_gpus or None, num_cpus=options.get("num_cpus", 1),
        )
        for row in mapped.iter_rows():
            outcome: Outcome = pickle.loads(row["payload"])
            record(by_id[outcome.id], outcome)
    finally:
        if started_here:
            ray.shutdown()
