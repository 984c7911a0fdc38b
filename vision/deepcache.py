"""DeepCache for diffusers' ``UNet2DConditionModel`` (SD1.x/2.x and SDXL layouts): our own implementation.

DeepCache (Ma et al., CVPR 2024) reuses the deep UNet features of a **full** step for the following
**retrieval** steps, which run only a shallow path: ``conv_in`` -> the first down layers up to branch
``b`` -> concat(skip, cached deep feature) -> the last up layers -> ``conv_out``.

Usage::

    from vision.deepcache import DeepCache

    with DeepCache(pipe, interval=3, branch=1):          # any diffusers SD / SDXL pipeline ...
        image = pipe("a red fox").images[0]

    cache = DeepCache(pipe.unet, interval=5).enable()     # ... or a bare UNet (with ``scheduler=`` if known)
    ...
    cache.disable()                                       # the UNet is exactly as before

Layers and branches
-------------------
Number the skip tensors of the UNet ``s_0 = conv_in(x)``, then one per down layer in execution order
(each resnet(+attention) and each downsampler); SD1.5 has 12 (``s_0..s_11``), SDXL 9. Up layers are
counted from the output end: up layer ``j`` is the up resnet(+attention) that consumes ``s_j`` (up layer
0 = ``up_blocks[-1].resnets[-1]``). Branch ``b`` (``0 <= b < number of skips``) caches the hidden state
that enters up layer ``b``; a retrieval step computes ``s_0..s_b`` (conv_in and down layers 1..b) and
up layers ``b..0`` (with the upsamplers between them) and the output head. With SD's three layers per
resolution level, ``b`` is level ``b // 3`` (0 = highest resolution) and layer ``b % 3``, as in the
paper. ``b = 1`` on SD1.5: conv_in, ``down_blocks[0]`` layer 0, ``up_blocks[3]`` layers 1-2; the cached
feature is the output of ``up_blocks[3]``'s first layer. These are the same branches as the reference
``DeepCacheSDHelper`` (outputs agree with it, see ``bench/deepcache.py``).

Schedules (T denoising steps of one generation, interval N)
-----------------------------------------------------------
Steps are the scheduler's distinct timesteps: consecutive UNet calls with the same timestep (PNDM's
duplicated first timestep, Heun's two evaluations, separate cond/uncond calls) form one step and share
one decision. A step that is not full is a retrieval step.

* ``uniform``: step ``i`` is full when ``(i - i0) % N == 0``, ``i0`` = the first step this generation
  runs (so img2img, which starts late, begins with a full step).
* ``nonuniform`` (paper Eq. 7), with centre ``c`` and power ``p > 1``: ``k = ceil(T / N)`` full steps,
  denser around step ``c`` (``c`` is clamped to ``[0, T - 1]``)::

      sroot(x) = sign(x) * |x| ** (1 / p)        # the real signed root, also for x < 0
      spow(x)  = sign(x) * |x| ** p
      L        = linspace(sroot(-c), sroot(T - c), k + 1)           # float64, both ends included
      F(p)     = {0} | { trunc(spow(l)) + c  for l in L[1:-1] }     # trunc rounds toward zero

  Use the first of ``p, p - 0.02, p - 0.04, ...`` (while ``> 1``) with ``len(F) == k``; if none has
  exactly ``k`` steps the uniform schedule is used. Step ``i`` is full when ``i in F`` (absolute step
  index in the scheduler's whole sequence), and the first step of a generation is always full. The
  reference code instead raises the negative start to ``1/p`` as a complex number and keeps the real
  part (``(-c) ** (1/p)`` in Python is complex), which gives a different schedule than the formula
  reads; we use the real signed root. T = 50, N = 5, c = 15, p = 1.4 gives
  ``[0, 6, 11, 14, 15, 19, 24, 29, 35, 42]`` (p = 1.4 already gives k = 10 steps).

Generations and the cache
-------------------------
The cache (one tensor, both CFG halves in one batch) is dropped at the start of every generation, which
is detected by, whichever comes first: a call of the attached pipeline (``pipe(...)`` begins one), an
explicit :meth:`DeepCache.begin`, a new ``scheduler.timesteps`` tensor (``set_timesteps`` was called),
the timestep going up (bare UNet without a scheduler), or a change of the batch's shape, dtype or device
(never reused across batch sizes). The first step of a generation is always full.

Mechanics
---------
The UNet's ``forward`` is wrapped once (an instance attribute, or accelerate's ``_old_forward`` when
offload hooks are installed); the wrapper owns the forward and runs the full or the shallow path by
calling the blocks itself (whole blocks where possible, layer by layer around the branch). No block is
patched. :meth:`DeepCache.disable` removes the attribute (or restores the previous one), so the UNet
behaves exactly as before. A DeepCache is active only in the thread that enabled it (other threads
sharing the hub's UNet see the plain UNet), and several threads may each enable their own.

The decision is made in Python from step counters, without reading tensors back: a pipeline's timestep
is located by its position in ``scheduler.timesteps`` (storage offset), so the loop has no host sync
(bare UNets without a scheduler read the timestep value). ``compile=True`` (or a dict of
``torch.compile`` options) compiles the UNet computation ``_unet_forward`` (two graphs: full and
retrieval) while the decisions stay outside the graph. Full steps are bit-identical to the plain UNet;
with ``N = 1`` every step is full, so outputs equal the uncached pipeline exactly.

Not supported on retrieval steps (those calls run the plain UNet and the next step is full): T2I-Adapter
intra-block residuals. ControlNet residuals, IP-Adapter, LoRA scales, FreeU, GLIGEN and class/added
conditioning are supported.
"""

from __future__ import annotations

import functools
import inspect
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["DeepCache", "uniform_full_steps", "nonuniform_full_steps", "full_steps", "DeepCacheError",
           "num_branches", "branch_info", "SCHEDULES"]

SCHEDULES = ("uniform", "nonuniform")
_ABSENT = object()
_ATTACH_LOCK = threading.RLock()


class DeepCacheError(ValueError):
    """Unusable DeepCache settings or model (the message says why)."""


# --------------------------------------------------------------------------------------------- schedules


def _check_steps(num_steps: int, interval: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise DeepCacheError(f"the number of steps must be a positive integer, got {num_steps!r}")
    _check_interval(interval)


def _check_interval(interval: int) -> None:
    if isinstance(interval, bool) or not isinstance(interval, (int, np.integer)) or interval < 1:
        raise DeepCacheError(f"DeepCache interval N must be an integer >= 1 (1 = every step full), got {interval!r}")


def uniform_full_steps(num_steps: int, interval: int, first: int = 0) -> list[int]:
    """Full steps of the uniform schedule among steps ``first..num_steps-1``: ``(i - first) % N == 0``."""
    _check_steps(num_steps, interval)
    return list(range(first, num_steps, interval))


@functools.lru_cache(maxsize=256)
def _nonuniform(num_steps: int, interval: int, center: float, power: float) -> tuple[tuple[int, ...], float | None]:
    """(full steps, the power used; None when it fell back to uniform)."""
    k = math.ceil(num_steps / interval)
    if k >= num_steps:
        return tuple(range(num_steps)), power
    c = int(min(max(center, 0), num_steps - 1))
    for i in range(1000):
        p = round(power - 0.02 * i, 10)
        if p <= 1.0:
            break
        lines = np.linspace(_signed_pow(-c, 1.0 / p), _signed_pow(num_steps - c, 1.0 / p), k + 1)
        steps = {0} | {int(_signed_pow(float(x), p)) + c for x in lines[1:-1]}
        if len(steps) == k:
            return tuple(sorted(steps)), p
    return tuple(range(0, num_steps, interval)), None


def _signed_pow(x: float, e: float) -> float:
    """sign(x) * |x| ** e: the real signed power (also for negative x)."""
    return math.copysign(abs(x) ** e, x)


def nonuniform_full_steps(num_steps: int, interval: int, center: float = 15, power: float = 1.4) -> list[int]:
    """Full steps of the non-uniform schedule (the formula is in the module docstring)."""
    _check_steps(num_steps, interval)
    _check_power_center(center, power)
    return list(_nonuniform(int(num_steps), int(interval), float(center), float(power))[0])


def full_steps(num_steps: int, interval: int, schedule: str = "uniform", center: float = 15,
               power: float = 1.4) -> list[int]:
    """Full steps of a whole generation of ``num_steps`` steps (starting at step 0)."""
    schedule = _check_schedule(schedule)
    if schedule == "uniform":
        return uniform_full_steps(num_steps, interval)
    return nonuniform_full_steps(num_steps, interval, center, power)


def _check_schedule(schedule: str) -> str:
    name = str(schedule).lower().replace("-", "").replace("_", "")
    if name not in SCHEDULES:
        raise DeepCacheError(f"unknown DeepCache schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    return name


def _check_power_center(center: float, power: float) -> None:
    if not isinstance(power, (int, float)) or not math.isfinite(power) or power <= 1:
        raise DeepCacheError(f"non-uniform power p must be a number > 1 (typically 1.3-1.5), got {power!r}")
    if not isinstance(center, (int, float)) or not math.isfinite(center) or center < 0:
        raise DeepCacheError(f"non-uniform centre c must be a step index >= 0, got {center!r}")


# ------------------------------------------------------------------------------------------------ layout

_DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")


@dataclass(frozen=True)
class _Layout:
    """Where every skip tensor comes from and which up layer consumes it."""

    down: tuple[tuple[int, int], ...]  # skip i >= 1 -> (down block, layer r; r == len(resnets) = downsampler)
    up_first: tuple[int, ...]  # up block k -> skip index j consumed by its resnets[0] (largest j)
    up_len: tuple[int, ...]  # up block k -> number of resnets
    levels: tuple[int, ...]  # skip i -> resolution level (number of downsamplers before it)

    @property
    def num_skips(self) -> int:
        return len(self.levels)

    def up_block_of(self, j: int) -> tuple[int, int]:
        for k, (first, n) in enumerate(zip(self.up_first, self.up_len)):
            if first - n < j <= first:
                return k, first - j
        raise IndexError(j)


def _model(unet: Any) -> Any:
    return getattr(unet, "_orig_mod", unet)  # torch.compile's OptimizedModule wraps the real module


def _layout(unet: Any) -> _Layout:
    model = _model(unet)
    down_blocks, up_blocks = getattr(model, "down_blocks", None), getattr(model, "up_blocks", None)
    if down_blocks is None or up_blocks is None or not hasattr(model, "conv_in"):
        raise DeepCacheError(f"DeepCache needs a diffusers UNet2DConditionModel, got {type(unet).__name__}")
    bad = [type(b).__name__ for b in down_blocks if type(b).__name__ not in _DOWN_TYPES]
    bad += [type(b).__name__ for b in up_blocks if type(b).__name__ not in _UP_TYPES]
    if bad:
        raise DeepCacheError(f"DeepCache supports UNets built from {', '.join(_DOWN_TYPES + _UP_TYPES)} "
                             f"(SD1.x/2.x, SDXL); this one has {', '.join(sorted(set(bad)))}")
    down, levels, level = [], [0], 0
    for d, block in enumerate(down_blocks):
        for r in range(len(block.resnets)):
            down.append((d, r))
            levels.append(level)
        if block.downsamplers is not None:
            level += 1
            down.append((d, len(block.resnets)))
            levels.append(level)
    up_len = tuple(len(b.resnets) for b in up_blocks)
    if sum(up_len) != len(levels):
        raise DeepCacheError(f"unsupported UNet layout: {len(levels)} skip tensors but {sum(up_len)} up layers")
    up_first, consumed = [], len(levels)
    for n in up_len:
        up_first.append(consumed - 1)
        consumed -= n
    return _Layout(tuple(down), tuple(up_first), up_len, tuple(levels))


def num_branches(unet: Any) -> int:
    """Number of valid branch ids (skip tensors) of a UNet: 12 for SD1.5, 9 for SDXL."""
    return _layout(unet).num_skips


def branch_info(unet: Any, branch: int) -> dict:
    """What branch ``b`` runs on a retrieval step of ``unet`` (for documentation and benchmarks)."""
    layout = _layout(unet)
    _check_branch(branch, layout)
    k, r = layout.up_block_of(branch)
    down = ["conv_in"] + [f"down_blocks[{d}]." + ("downsamplers" if r2 == len(_model(unet).down_blocks[d].resnets)
                                                  else f"layer{r2}") for d, r2 in layout.down[:branch]]
    up = [f"up_blocks[{kk}].layer{rr}" for kk, rr in (layout.up_block_of(j) for j in range(branch, -1, -1))]
    return {"branch": branch, "level": layout.levels[branch], "down": down, "up": up,
            "cached": f"input of up_blocks[{k}].resnets[{r}]"}


def _check_branch(branch: int, layout: _Layout) -> None:
    if isinstance(branch, bool) or not isinstance(branch, (int, np.integer)) or not 0 <= branch < layout.num_skips:
        levels = layout.levels[-1] + 1
        raise DeepCacheError(f"branch {branch!r} is out of range for this UNet: valid branches are 0..{layout.num_skips - 1} "
                             f"({levels} resolution levels; 0 = shallowest and fastest)")


# ------------------------------------------------------------------------------------- forward dispatch


class _Dispatch:
    """The UNet's forward while at least one DeepCache is enabled on it (one per UNet)."""

    def __init__(self, unet: Any, attr: str, previous: Any):
        self.attr, self.previous = attr, previous
        self.plain = previous if previous is not _ABSENT else type(unet).forward.__get__(unet)
        self.by_thread: dict[int, "DeepCache"] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        cache = self.by_thread.get(threading.get_ident())
        if cache is None:
            return self.plain(*args, **kwargs)
        return cache._forward(args, kwargs)


def _forward_attr(unet: Any) -> str:
    # accelerate's offload hooks replace forward and call ``_old_forward``: wrap that one instead
    return "_old_forward" if hasattr(unet, "_hf_hook") and "_old_forward" in unet.__dict__ else "forward"


def _pipeline_class(base: type, cache: "DeepCache") -> type:
    """A subclass of the pipeline's class whose ``__call__`` begins a DeepCache generation."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != cache._thread:
            return base.__call__(self, *args, **kwargs)
        cache.begin()
        try:
            return base.__call__(self, *args, **kwargs)
        finally:
            cache.end()

    return type(base.__name__, (base,), {"__call__": __call__, "__module__": base.__module__,
                                         "__qualname__": base.__qualname__, "_deepcache_base": base,
                                         "__doc__": base.__doc__})


# ------------------------------------------------------------------------------------------ generations


@dataclass
class _Plan:
    """The scheduler's timestep sequence of this generation, on the host (read once per generation)."""

    source: torch.Tensor  # scheduler.timesteps (identity marks the generation)
    groups: list[int]  # entry -> step index (consecutive equal timesteps share a step)
    by_value: dict[float, int]
    num_steps: int

    @classmethod
    def of(cls, timesteps: torch.Tensor) -> "_Plan | None":
        if not isinstance(timesteps, torch.Tensor) or timesteps.ndim != 1 or timesteps.numel() == 0:
            return None
        values = timesteps.detach().to("cpu", torch.float64).tolist()
        groups, by_value = [], {}
        for i, v in enumerate(values):
            step = groups[-1] + (v != values[i - 1]) if i else 0
            groups.append(step)
            by_value.setdefault(v, step)
        return cls(timesteps, groups, by_value, groups[-1] + 1)

    def step_of(self, timestep: Any) -> int | None:
        """The step of a UNet call's timestep: by storage offset into ``source`` (no host sync), else by value."""
        if isinstance(timestep, torch.Tensor):
            src = self.source
            if (timestep.device == src.device and timestep.numel() >= 1
                    and timestep.untyped_storage().data_ptr() == src.untyped_storage().data_ptr()):
                entry, rem = divmod(timestep.storage_offset() - src.storage_offset(), src.stride(0) or 1)
                if rem == 0 and 0 <= entry < len(self.groups):
                    return self.groups[entry]
        value = _timestep_value(timestep)
        return self.by_value.get(value)


def _timestep_value(timestep: Any) -> float:
    """The timestep as a float (a host read for an accelerator tensor that is not from the plan)."""
    if isinstance(timestep, torch.Tensor):
        return float(timestep.detach().reshape(-1)[0].to("cpu", torch.float64))
    return float(timestep)


@dataclass
class _Generation:
    fresh: bool = True
    signature: tuple | None = None
    plan: _Plan | None = None
    num_steps: int | None = None
    step: int = -1  # current step index (absolute with a plan, relative without)
    last_value: float | None = None
    first_step: int = 0
    full: bool = True  # decision of the current step
    feature: torch.Tensor | None = None
    calls: list[tuple[int, str]] = field(default_factory=list)  # (step, "full" | "partial" | "plain")


# -------------------------------------------------------------------------------------------- DeepCache


class DeepCache:
    """DeepCache on a diffusers SD/SDXL pipeline or a bare ``UNet2DConditionModel``.

    Args:
        target: a diffusers pipeline with a ``unet`` (its ``__call__`` then begins each generation and
            its ``scheduler`` gives the step plan) or a ``UNet2DConditionModel``.
        interval: N >= 1, full steps every N steps (1: every step full, output equals the plain UNet).
        branch: skip branch b (0..11 for SD1.5, 0..8 for SDXL); see the module docstring.
        schedule: ``"uniform"`` or ``"nonuniform"`` (``center`` c, ``power`` p > 1).
        scheduler: for a bare UNet, the scheduler whose ``timesteps`` the calls follow (optional).
        num_steps: for a bare UNet without a scheduler, T of the non-uniform schedule.
        compile: ``True`` or a dict of ``torch.compile`` options to compile the UNet computation.

    ``enable()`` / ``disable()`` or ``with DeepCache(...):``. ``begin()`` starts a new generation
    explicitly (the cache is also reset automatically, see the module docstring). ``last_generation()``
    summarises the decisions of the current (or last) generation.
    """

    def __init__(self, target: Any, interval: int = 3, branch: int = 1, schedule: str = "uniform",
                 center: float = 15, power: float = 1.4, *, scheduler: Any = None, num_steps: int | None = None,
                 compile: bool | dict = False):
        unet = getattr(target, "unet", target)
        self.pipeline = target if unet is not target else None
        self.unet = unet
        self._model = _model(unet)
        self.layout = _layout(unet)
        _check_interval(interval)
        _check_branch(branch, self.layout)
        self.interval, self.branch = int(interval), int(branch)
        self.schedule = _check_schedule(schedule)
        if self.schedule == "nonuniform":
            _check_power_center(center, power)
        self.center, self.power = center, power
        if num_steps is not None:
            _check_steps(num_steps, 1)
        self.num_steps = num_steps
        self.scheduler = scheduler
        self._signature = inspect.signature(type(self._model).forward)
        self._fn = self._unet_forward
        if compile:
            self._fn = torch.compile(self._unet_forward, **(compile if isinstance(compile, dict) else {}))
        self._gen = _Generation()
        self._thread: int | None = None
        self._dispatch: _Dispatch | None = None
        self.totals = {"generations": 0, "full": 0, "partial": 0, "plain": 0}

    # -- attach / detach ----------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self._dispatch is not None

    def enable(self) -> "DeepCache":
        """Attach to the UNet (and pipeline) for calls from this thread."""
        with _ATTACH_LOCK:
            if self._dispatch is not None:
                raise RuntimeError("this DeepCache is already enabled")
            thread = threading.get_ident()
            attr = _forward_attr(self.unet)
            current = self.unet.__dict__.get(attr, _ABSENT)
            dispatch = current if isinstance(current, _Dispatch) else None
            if dispatch is not None and thread in dispatch.by_thread:
                raise RuntimeError("another DeepCache is already enabled on this UNet in this thread; disable it first")
            if self.pipeline is not None and hasattr(type(self.pipeline), "_deepcache_base"):
                raise RuntimeError("this pipeline already has a DeepCache attached; disable it first")
            if dispatch is None:
                dispatch = _Dispatch(self.unet, attr, current)
                self.unet.__dict__[attr] = dispatch
            dispatch.by_thread[thread] = self
            if self.pipeline is not None:
                self.pipeline.__class__ = _pipeline_class(type(self.pipeline), self)
            self._dispatch, self._thread = dispatch, thread
            self.begin()
        return self

    def disable(self) -> None:
        """Detach: the UNet (and pipeline) behave exactly as before :meth:`enable`."""
        with _ATTACH_LOCK:
            dispatch = self._dispatch
            if dispatch is None:
                return
            dispatch.by_thread.pop(self._thread, None)
            if not dispatch.by_thread and self.unet.__dict__.get(dispatch.attr) is dispatch:
                if dispatch.previous is _ABSENT:
                    del self.unet.__dict__[dispatch.attr]
                else:
                    self.unet.__dict__[dispatch.attr] = dispatch.previous
            if self.pipeline is not None:
                base = type(self.pipeline).__dict__.get("_deepcache_base")
                if base is not None:
                    self.pipeline.__class__ = base
            self._dispatch, self._thread = None, None
            self.end()

    def __enter__(self) -> "DeepCache":
        return self.enable()

    def __exit__(self, *exc: Any) -> None:
        self.disable()

    # -- generations --------------------------------------------------------------------------------

    def begin(self, num_steps: int | None = None) -> None:
        """Start a new generation: drop the cache; the next step is full. ``num_steps`` gives T for the
        non-uniform schedule when neither a pipeline nor a scheduler tells it."""
        if num_steps is not None:
            _check_steps(num_steps, 1)
        self._gen = _Generation(num_steps=num_steps)

    def end(self) -> None:
        """Release the cached feature (called after each pipeline call and on disable)."""
        self._gen.feature = None
        self._gen.fresh = True

    def last_generation(self) -> dict:
        """Decisions of the current or last generation: steps, full steps and counts per call kind."""
        calls = self._gen.calls
        full = sorted({s for s, kind in calls if kind == "full"})
        return {"calls": len(calls), "steps": len({s for s, _ in calls}), "full_steps": full,
                "full_calls": sum(k == "full" for _, k in calls), "partial_calls": sum(k == "partial" for _, k in calls),
                "plain_calls": sum(k == "plain" for _, k in calls), "kinds": [k for _, k in calls]}

    def _scheduler(self) -> Any:
        return getattr(self.pipeline, "scheduler", None) if self.pipeline is not None else self.scheduler

    def _start(self, signature: tuple) -> None:
        gen = self._gen
        if not gen.fresh or gen.calls:
            self._gen = gen = _Generation(num_steps=gen.num_steps)
        gen.fresh = False
        gen.signature = signature
        scheduler = self._scheduler()
        gen.plan = _Plan.of(getattr(scheduler, "timesteps", None)) if scheduler is not None else None
        self.totals["generations"] += 1

    def _decide(self, sample: torch.Tensor, timestep: Any) -> bool:
        """Full step? One decision per step; starts a new generation when one is detected."""
        gen = self._gen
        signature = (tuple(sample.shape), sample.dtype, sample.device)
        scheduler = self._scheduler()
        if (gen.fresh or signature != gen.signature
                or (gen.plan is not None and getattr(scheduler, "timesteps", None) is not gen.plan.source)):
            self._start(signature)
            gen = self._gen
        step = gen.plan.step_of(timestep) if gen.plan is not None else None
        if gen.plan is not None and step is None:
            gen.plan = None  # the calls do not follow the scheduler's timesteps: count steps by value
        if gen.plan is None:
            value = _timestep_value(timestep)
            if gen.last_value is not None and value > gen.last_value:  # timestep went up: a new generation
                self._start(signature)
                gen = self._gen
                gen.plan = None
            step = gen.step if value == gen.last_value else gen.step + 1
            gen.last_value = value
        elif gen.step >= 0 and step < gen.step:  # went back in the plan: a new generation
            self._start(signature)
            gen = self._gen
        if step == gen.step and gen.calls:
            return gen.full or gen.feature is None
        if not gen.calls:
            gen.first_step = step
        gen.step = step
        gen.full = gen.feature is None or step == gen.first_step or self._is_full(step, gen)
        return gen.full

    def _is_full(self, step: int, gen: _Generation) -> bool:
        if self.schedule == "uniform":
            return (step - gen.first_step) % self.interval == 0
        total = gen.plan.num_steps if gen.plan is not None else (gen.num_steps or self.num_steps)
        if total is None:
            raise DeepCacheError("the non-uniform schedule needs the number of steps T: attach DeepCache to the "
                                 "pipeline, pass scheduler= or num_steps=, or call begin(num_steps=T)")
        return step in _nonuniform(int(total), self.interval, float(self.center), float(self.power))[0]

    # -- the forward ---------------------------------------------------------------------------------

    def _forward(self, args: tuple, kwargs: dict) -> Any:
        bound = self._signature.bind(self._model, *args, **kwargs)
        bound.apply_defaults()
        a = dict(bound.arguments)
        a.pop("self", None)
        return_dict = a.pop("return_dict")
        intrablock = a.pop("down_intrablock_additional_residuals")
        legacy_adapter = a["down_block_additional_residuals"] is not None and a["mid_block_additional_residual"] is None
        gen = self._gen
        if intrablock is not None or legacy_adapter:  # T2I-Adapter: run the plain UNet, next step full
            out = self._dispatch.plain(*args, **kwargs)
            gen.feature = None
            gen.calls.append((gen.step, "plain"))
            self.totals["plain"] += 1
            return out
        full = self._decide(a["sample"], a["timestep"])
        gen = self._gen
        cached = None if full else gen.feature
        cak = a.pop("cross_attention_kwargs")
        lora_scale = 1.0
        if cak is not None:
            cak = dict(cak)
            lora_scale = cak.pop("scale", 1.0)
        with _lora_scale(self._model, lora_scale):
            sample, feature = self._fn(cached, cross_attention_kwargs=cak, **a)
        if full:
            gen.feature = feature
        kind = "full" if full else "partial"
        gen.calls.append((gen.step, kind))
        self.totals[kind] += 1
        if not return_dict:
            return (sample,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=sample)

    def _unet_forward(self, cached: torch.Tensor | None, sample: torch.Tensor, timestep: Any,
                      encoder_hidden_states: torch.Tensor, class_labels: Any = None, timestep_cond: Any = None,
                      attention_mask: Any = None, cross_attention_kwargs: Any = None, added_cond_kwargs: Any = None,
                      down_block_additional_residuals: Any = None, mid_block_additional_residual: Any = None,
                      encoder_attention_mask: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The UNet on a full step (``cached is None``; returns the output and the feature to cache) or a
        retrieval step (returns the output and None). Mirrors ``UNet2DConditionModel.forward``."""
        u, layout, b = self._model, self.layout, self.branch
        forward_upsample_size = any(d % (2 ** u.num_upsamplers) != 0 for d in sample.shape[-2:])
        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask is not None:
            encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if u.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = u.time_embedding(u.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
        class_emb = u.get_class_embed(sample=sample, class_labels=class_labels)
        if class_emb is not None:
            emb = torch.cat([emb, class_emb], dim=-1) if u.config.class_embeddings_concat else emb + class_emb
        aug_emb = u.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                  added_cond_kwargs=added_cond_kwargs)
        if u.config.addition_embed_type == "image_hint":
            aug_emb, hint = aug_emb
            sample = torch.cat([sample, hint], dim=1)
        emb = emb + aug_emb if aug_emb is not None else emb
        if u.time_embed_act is not None:
            emb = u.time_embed_act(emb)
        ehs = u.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                              added_cond_kwargs=added_cond_kwargs)
        h = u.conv_in(sample)
        cak = cross_attention_kwargs
        if cak is not None and cak.get("gligen", None) is not None:
            cak = dict(cak)
            cak["gligen"] = {"objs": u.position_net(**cak.pop("gligen"))}
        ctx = {"encoder_hidden_states": ehs, "attention_mask": attention_mask, "cross_attention_kwargs": cak,
               "encoder_attention_mask": encoder_attention_mask}
        controlnet = down_block_additional_residuals is not None and mid_block_additional_residual is not None

        skips = [h]
        if cached is None:  # full step: whole down blocks and the mid block, as diffusers runs them
            for block in u.down_blocks:
                if getattr(block, "has_cross_attention", False):
                    h, res = block(hidden_states=h, temb=emb, **ctx)
                else:
                    h, res = block(hidden_states=h, temb=emb)
                skips.extend(res)
            if controlnet:
                skips = [s + r for s, r in zip(skips, down_block_additional_residuals)]
            if u.mid_block is not None:
                if getattr(u.mid_block, "has_cross_attention", False):
                    h = u.mid_block(h, emb, **ctx)
                else:
                    h = u.mid_block(h, emb)
            if controlnet:
                h = h + mid_block_additional_residual
        else:  # retrieval step: conv_in and the down layers up to the branch
            for d, r in layout.down[:b]:
                h = _down_layer(u.down_blocks[d], r, h, emb, ctx)
                skips.append(h)
            if controlnet:
                skips = [s + r for s, r in zip(skips, down_block_additional_residuals)]
            h = cached

        feature = None
        last = len(u.up_blocks) - 1
        for k, block in enumerate(u.up_blocks):
            first, n = layout.up_first[k], layout.up_len[k]
            if first - n + 1 > b:  # entirely deeper than the branch: full steps only, as a whole block
                if cached is not None:
                    continue
                res = tuple(skips[first - n + 1: first + 1])
                size = skips[first - n].shape[2:] if k != last and forward_upsample_size else None
                if getattr(block, "has_cross_attention", False):
                    h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, upsample_size=size,
                              encoder_hidden_states=ehs, cross_attention_kwargs=cak, attention_mask=attention_mask,
                              encoder_attention_mask=encoder_attention_mask)
                else:
                    h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, upsample_size=size)
                continue
            for r in range(n):
                j = first - r
                if j > b and cached is not None:
                    continue
                if j == b and cached is None:
                    feature = h
                h = _up_layer(block, r, h, skips[j], emb, ctx)
            if block.upsamplers is not None:
                size = skips[first - n].shape[2:] if k != last and forward_upsample_size else None
                for upsampler in block.upsamplers:
                    h = upsampler(h, size)

        if u.conv_norm_out is not None:
            h = u.conv_act(u.conv_norm_out(h))
        return u.conv_out(h), feature


def _down_layer(block: Any, r: int, h: torch.Tensor, emb: torch.Tensor, ctx: dict) -> torch.Tensor:
    if r == len(block.resnets):
        for downsampler in block.downsamplers:
            h = downsampler(h)
        return h
    h = block.resnets[r](h, emb)
    if getattr(block, "attentions", None) is not None:
        h = block.attentions[r](h, **ctx, return_dict=False)[0]
    return h


def _freeu(block: Any) -> bool:
    return bool(getattr(block, "s1", None) and getattr(block, "s2", None) and getattr(block, "b1", None)
                and getattr(block, "b2", None))


def _up_layer(block: Any, r: int, h: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor, ctx: dict) -> torch.Tensor:
    if _freeu(block):  # apply_freeu scales its input in place: never touch the cached tensor
        from diffusers.utils.torch_utils import apply_freeu

        h, skip = apply_freeu(block.resolution_idx, h.clone(), skip, s1=block.s1, s2=block.s2, b1=block.b1,
                              b2=block.b2)
    h = block.resnets[r](torch.cat([h, skip], dim=1), emb)
    if getattr(block, "attentions", None) is not None:
        h = block.attentions[r](h, **ctx, return_dict=False)[0]
    return h


class _lora_scale:
    """Scale PEFT LoRA layers for one call, as ``UNet2DConditionModel.forward`` does."""

    def __init__(self, model: Any, scale: float):
        self.model, self.scale = model, scale

    def __enter__(self) -> None:
        from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers

        self.active = USE_PEFT_BACKEND
        if self.active:
            scale_lora_layers(self.model, self.scale)

    def __exit__(self, *exc: Any) -> None:
        if self.active:
            from diffusers.utils import unscale_lora_layers

            unscale_lora_layers(self.model, self.scale)
