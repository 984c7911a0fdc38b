"""The harness of ``python -m vision bench gpu``: sizes, budget, report, the shared run state and helpers."""

from __future__ import annotations

import dataclasses
import gc
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import put_full_size

SEED = 1234


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of one run: the issue's (default) or the dry run's (:data:`SMOKE`)."""

    sd_size: int = 512
    sd_steps: int = 50
    guidance: float = 7.5
    intervals: tuple[int, ...] = (2, 3, 5, 8)
    branches: tuple[int, ...] = (0, 1)
    repeats: int = 1  # part 1's sweep: its no-cache run in every block shows the timing spread
    sdxl_repeats: int = 2
    sdxl_size: int = 1024
    sdxl_steps: int = 30
    sdxl_intervals: tuple[int, ...] = (3, 5)
    compile_intervals: tuple[int, ...] = (3, 5)
    images: int = 16
    image_size: tuple[int, int] = (500, 375)  # W, H: a VOC-size image
    trident_repeats: int = 5
    dino_size: int = 840
    ipseg_sd_size: int = 960
    ipseg_targets: int = 4
    ipseg_repeats: int = 5
    gfsam_dino_size: int = 518  # GF-SAM beside IPSeg: the reference's DINOv2 input
    gfsam_points: int = 128  # GF-SAM's most point prompts (the reference's)
    story_size: int = 512
    story_steps: int = 50
    story_frames: int = 8
    story_references: int = 20
    story_generated: int = 2  # frames made in the 20-reference round (its peak memory is per frame)
    memory_steps: int = 10
    story_sdxl_size: int = 1024
    story_sdxl_steps: int = 4  # DeepCache N = 3 over 4 steps: full and partial steps (the peak is per step)
    story_sdxl_references: int = 4


# The dry run: every code path of every part once, at the smallest sizes that still exercise it (N = 3 over 4
# steps has full and partial steps; one branch; one image in the batch runner).
SMOKE = Scale(sd_size=64, sd_steps=4, intervals=(3,), branches=(0,), sdxl_repeats=1, sdxl_size=64, sdxl_steps=4,
              sdxl_intervals=(3,), compile_intervals=(3,), images=1, trident_repeats=1, dino_size=112,
              ipseg_sd_size=128, ipseg_targets=2, ipseg_repeats=1, gfsam_dino_size=112, gfsam_points=4,
              story_size=64, story_steps=3, story_frames=2, story_references=3, story_generated=1, memory_steps=2,
              story_sdxl_size=64, story_sdxl_steps=2, story_sdxl_references=2)

# Seconds per part: guesses for an H200 (full) and 2 shared CPU cores (smoke), builds included; rescaled by
# measured / REFERENCE_S once part 1 has timed one no-cache generation.
PRIOR_S = {"full": {"deepcache": 90, "sdxl": 45, "trident": 30, "ipseg": 25, "story": 35, "memory": 20,
                    "story_sdxl": 60, "compile": 200},
           "smoke": {"deepcache": 8, "sdxl": 3, "trident": 5, "ipseg": 5, "story": 4, "memory": 6, "story_sdxl": 15,
                     "compile": 6}}
REFERENCE_S = {"full": 1.2, "smoke": 0.15}
COMPILE_PRIOR_S = {"full": 90.0, "smoke": 3.0}  # one UNet graph's compilation


class Budget:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.perf_counter()

    def used(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.used()


class Report:
    """The Markdown report: every piece is printed and appended (flushed) as soon as it is written."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")

    def write(self, text: str) -> None:
        print(text, flush=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text.rstrip("\n") + "\n\n")


class Run:
    """What every part shares: the device, the sizes, the budget, the report and one model hub (full-size
    random-weight models are built once, on first need, and stay resident)."""

    def __init__(self, device: str, smoke: bool, budget_s: float, out: Path):
        from vision.hub import ModelHub

        self.device, self.smoke = device, smoke
        self.cuda = device.startswith("cuda")
        self.mode = "smoke" if smoke else "full"
        self.scale = SMOKE if smoke else Scale()
        self.budget = Budget(budget_s)
        self.report = Report(out)
        self.hub = ModelHub(tiny=smoke, device=device)
        self.reference_s: float | None = None  # one no-cache SD1.5 generation, measured by part 1
        self.built: dict[str, float] = {}

    def resident(self, names: list[str]) -> None:
        """Make exactly ``names`` resident (besides the hub's tokenizers and schedulers), so that a part's
        memory figures are its own: other models are unloaded, missing ones built full size (tiny mode
        builds its own lazily). Peak statistics restart after a build (models are built, then cast)."""
        from vision.hub import ENTRIES

        for name in ENTRIES:
            if self.hub.is_loaded(name) and name not in names and ENTRIES[name].local is None:
                self.hub.unload(name)
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        if self.smoke:
            return
        built = put_full_size(self.hub, names)
        self.built.update(built)
        if built and self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def estimate(self, key: str) -> float:
        prior = PRIOR_S[self.mode][key]
        if self.reference_s is None or key == "compile":
            return prior
        return prior * self.reference_s / REFERENCE_S[self.mode]

    def out_of_time(self) -> bool:
        return self.budget.left() <= 0


def table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (NaNs included)."""
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def memory_text(run: Run) -> str:
    if not run.cuda:
        return "GPU memory: n/a (no CUDA)"
    return (f"peak allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, peak reserved "
            f"{torch.cuda.max_memory_reserved() / 2**30:.2f} GiB (since the last model build; the part's "
            "models resident)")


def photo(index: int) -> np.ndarray:
    """Photograph ``index`` of scikit-image's bundled ones (a seeded noise image where that data is missing:
    the GPU machine's scikit-image is not ours, and a missing file must not cost a part)."""
    from vision.imaging import SAMPLE_IMAGES, sample_image

    name = SAMPLE_IMAGES[index % len(SAMPLE_IMAGES)]
    try:
        return sample_image(name)
    except Exception as err:  # skimage raises several kinds for absent data files
        print(f"note: skimage.data.{name} unavailable ({type(err).__name__}); using a noise image", file=sys.stderr)
        return np.random.default_rng(index).integers(0, 256, (480, 640, 3), dtype=np.uint8)


PROMPT_IMAGE, PROMPT_BOX = 2, (120, 40, 340, 290)  # chelsea the cat, and a box around her


def voc_images(count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """``count`` RGB photographs resized to ``size`` (W, H), every other one mirrored."""
    from PIL import Image

    images = []
    for i in range(count):
        array = np.asarray(Image.fromarray(photo(i % 4)).resize(size, Image.BICUBIC))
        images.append(np.ascontiguousarray(array[:, ::-1]) if i % 2 else array)
    return images
