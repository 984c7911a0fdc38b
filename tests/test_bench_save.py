"""#20.8: ``bench`` commands overwrote tracked files in ``bench/results/`` on a user's machine. They write
there only with ``--save`` (``--out``/``--results`` elsewhere); otherwise they print (``bench gpu``, which
writes its report as the parts finish, writes to the temporary folder)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from bench import (  # noqa: E402
    common,
    deepcache,
    gpu,  # noqa: E402
    trident,
)


def _target(name: str, argv: list[str]) -> Path | None:
    if name == "deepcache":
        args = deepcache.parse_args(argv)
        return common.report_path(args, "", args.results)
    if name == "trident":
        args = trident.parse_args(argv)
        return common.report_path(args, "trident", args.out)
    return gpu.report_output(gpu.parse_args(argv))


@pytest.mark.parametrize("name", ["deepcache", "trident", "gpu"])
def test_a_benchmark_writes_into_bench_results_only_with_save(name, tmp_path):
    default = _target(name, [])
    assert default is None or not default.resolve().is_relative_to(RESULTS)
    if name == "gpu":
        assert default.parent == Path(tempfile.gettempdir())
    assert _target(name, ["--save"]).resolve().is_relative_to(RESULTS)
    option = "--results" if name == "deepcache" else "--out"
    assert _target(name, [option, str(tmp_path / "x")]) == tmp_path / "x"
