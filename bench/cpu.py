"""CPU benchmark (issue 24): ``bench sam`` with the IPSeg target too, i.e. everything a CPU user runs
interactively, torch beside ONNX Runtime and OpenVINO in one run, with the machine and its load.

    python -m vision bench cpu --out bench/results/cpu.md
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/cpu.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import sam


def main(argv: list[str] | None = None) -> int:
    return sam.main(argv, ipseg_default=True, title="CPU")


if __name__ == "__main__":
    sys.exit(main())
