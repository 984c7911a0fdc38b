"""Which denoising steps of a generation are full steps: the uniform and the non-uniform schedule.

Steps are numbered 0..T-1 (how a UNet call is mapped to a step is :mod:`vision.deepcache.steps`'s job).

* ``uniform``: step ``i`` is full when ``(i - i0) % N == 0``, ``i0`` = the first step that runs.
* ``nonuniform`` (the paper's Eq. 7 as its reference code ``sample_from_quad_center`` evaluates it), with
  centre ``c`` (an integer step) and power ``p > 1``, ``k = ceil(T / N)`` full steps::

      lo = (-c) ** (1 / p)          # Python's principal root: complex for c > 0, e.g. (-15) ** (1/1.4)
      hi = (T - c) ** (1 / p)       # real for c <= T (complex as well for c > T)
      L  = numpy.linspace(lo, hi, k + 1)                       # complex128 when lo or hi is complex
      V  = numpy.unique(int32(real(L ** p)))                   # L ** p: numpy's complex power; the real
                                                               #   part truncated toward zero, sorted
      F(p) = [0] + [v + c for v in V[1:-1]]                    # drop the smallest and the largest value

  ``p`` is lowered by 0.02 (``p -= 0.02``, float arithmetic as in the reference) while ``p > 1`` until
  ``len(F(p)) == k``; step ``i`` is full when ``i in F``. Because the start point is complex, the real
  parts of ``L ** p`` are not the signed powers the formula reads as; the paper's tuned (c, p) values
  (its Table 10) were found with exactly these sets. T = 50, c = 15, p = 1.4:
  N = 3 -> [0, 3, 6, 8, 11, 13, 15, 17, 20, 22, 25, 28, 32, 35, 38, 42, 46];
  N = 5 -> [0, 5, 9, 13, 17, 21, 26, 31, 37, 43]; N = 10 -> [0, 9, 17, 26, 37].
  ``N = 1`` (``k >= T``) makes every step full. Where the reference raises (no ``p > 1`` gives ``k``
  steps), we use the uniform schedule instead, so that a generation never fails half-way.

The reading of Eq. 7 with the real signed root (``sign(x) |x|^(1/p)``), which earlier versions of this
module used, is gone: no tuned (c, p) exists for it, so it had no use.
"""

from __future__ import annotations

import functools
import math

import numpy as np

SCHEDULES = ("uniform", "nonuniform")


class DeepCacheError(ValueError):
    """Unusable DeepCache settings or model (the message says why)."""


def check_steps(num_steps: int, interval: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise DeepCacheError(f"the number of steps must be a positive integer, got {num_steps!r}")
    check_interval(interval)


def check_interval(interval: int) -> None:
    if isinstance(interval, bool) or not isinstance(interval, (int, np.integer)) or interval < 1:
        raise DeepCacheError(f"DeepCache interval N must be an integer >= 1 (1 = every step full), got {interval!r}")


def check_schedule(schedule: str, center: int = 15, power: float = 1.4) -> str:
    """The canonical schedule name (``"non-uniform"`` -> ``"nonuniform"``); checks c and p for it."""
    name = str(schedule).lower().replace("-", "").replace("_", "")
    if name not in SCHEDULES:
        raise DeepCacheError(f"unknown DeepCache schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    if name == "nonuniform":
        _check_power_center(center, power)
    return name


def _check_power_center(center: int, power: float) -> None:
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not math.isfinite(power) or power <= 1:
        raise DeepCacheError(f"non-uniform power p must be a number > 1 (typically 1.3-1.5), got {power!r}")
    if (isinstance(center, bool) or not isinstance(center, (int, float, np.integer)) or not math.isfinite(center)
            or center < 0 or int(center) != center):
        raise DeepCacheError(f"non-uniform centre c must be a step index (an integer >= 0), got {center!r}")


def uniform_full_steps(num_steps: int, interval: int, first: int = 0) -> list[int]:
    """Full steps of the uniform schedule among steps ``first..num_steps-1``: ``(i - first) % N == 0``."""
    check_steps(num_steps, interval)
    return list(range(first, num_steps, interval))


def nonuniform_full_steps(num_steps: int, interval: int, center: int = 15, power: float = 1.4) -> list[int]:
    """Full steps of the non-uniform schedule of a T-step generation (formula in the module docstring)."""
    check_steps(num_steps, interval)
    _check_power_center(center, power)
    return list(nonuniform(int(num_steps), int(interval), int(center), float(power))[0])


def full_steps(num_steps: int, interval: int, schedule: str = "uniform", center: int = 15,
               power: float = 1.4) -> list[int]:
    """Full steps of a whole generation of ``num_steps`` steps (starting at step 0)."""
    if check_schedule(schedule, center, power) == "uniform":
        return uniform_full_steps(num_steps, interval)
    return nonuniform_full_steps(num_steps, interval, center, power)


@functools.lru_cache(maxsize=256)
def nonuniform(num_steps: int, interval: int, center: int, power: float) -> tuple[tuple[int, ...], float | None]:
    """(full steps, the power that gave them; None when no power did and the uniform schedule is used)."""
    k = math.ceil(num_steps / interval)
    if k >= num_steps:
        return tuple(range(num_steps)), power
    p = power
    while p > 1:
        steps = _quad_center(num_steps, k, center, p)
        if len(steps) == k:
            return tuple(sorted(set(steps))), p
        p -= 0.02
    return tuple(range(0, num_steps, interval)), None


def _quad_center(num_steps: int, k: int, center: int, power: float) -> list[int]:
    """``F(p)`` of the module docstring (a list: its length is what the search for p compares)."""
    lo = (-center) ** (1.0 / power)  # complex for center > 0: keep Python's semantics, as the reference
    hi = (num_steps - center) ** (1.0 / power)
    values = np.real(np.linspace(lo, hi, k + 1) ** power).astype(np.int32)
    return [0] + [int(v) + center for v in np.unique(values)[1:-1]]
