"""The :class:`DeepCache` object: attaches to a pipeline or UNet, decides full vs retrieval per step, and
holds the cached feature of the current generation (see the package docstring)."""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from vision.deepcache.controlnet import check_controlnet_layout, shallow_residuals
from vision.deepcache.layout import check_branch, unet_layout, unwrap
from vision.deepcache.schedules import DeepCacheError, check_interval, check_schedule, check_steps, nonuniform
from vision.deepcache.steps import StepPlan, timestep_value
from vision.deepcache.unet_forward import LoraScale, unet_forward, warn_if_mirror_is_stale

HOOK_NAME = "vision.deepcache"  # the name of our hook in the UNet's diffusers HookRegistry
_ATTACH_LOCK = threading.RLock()


class DeepCacheHook(ModelHook):
    """The UNet's forward while at least one :class:`DeepCache` is enabled on it.

    Registered once per UNet in diffusers' :class:`~diffusers.hooks.HookRegistry` (the mechanism the
    library's own caches use) under :data:`HOOK_NAME`; the registry installs and removes it. It routes
    each call to the DeepCache enabled in the calling thread, else to the forward it wraps (the plain
    UNet, or whatever forward the UNet had before). Stateful for diffusers: ``reset_stateful_hooks``
    (diffusers' generation-boundary signal) begins a new generation in every attached cache.
    """

    _is_stateful = True

    def __init__(self, route: str = "unet") -> None:
        super().__init__()
        self.route = route  # "unet", or "controlnet": the pipeline's ControlNet (partial on retrieval steps)
        self.by_thread: dict[int, DeepCache] = {}

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        cache = self.by_thread.get(threading.get_ident())
        if cache is None:
            return self.plain(*args, **kwargs)
        if self.route == "controlnet":
            return cache._controlnet_forward(self, args, kwargs)
        return cache._forward(args, kwargs)

    def plain(self, *args: Any, **kwargs: Any) -> Any:
        """The forward this hook wraps (the UNet without DeepCache)."""
        return self.fn_ref.original_forward(*args, **kwargs)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        for cache in list(self.by_thread.values()):
            cache.begin()
        return module


def attached_hook(unet: torch.nn.Module) -> DeepCacheHook | None:
    """The DeepCache hook registered on ``unet`` (None when no DeepCache is enabled on it)."""
    return HookRegistry.check_if_exists_or_initialize(unet).get_hook(HOOK_NAME)


def _attach(module: torch.nn.Module, route: str, thread: int, cache: DeepCache) -> DeepCacheHook:
    """Route ``module``'s calls from ``thread`` to ``cache`` (registering the hook if it is the first)."""
    registry = HookRegistry.check_if_exists_or_initialize(module)
    hook = registry.get_hook(HOOK_NAME)
    if hook is None:
        hook = DeepCacheHook(route)
        registry.register_hook(hook, HOOK_NAME)
    hook.by_thread[thread] = cache
    return hook


def _detach(module: torch.nn.Module, hook: DeepCacheHook, thread: int | None) -> None:
    """Stop routing ``thread``'s calls; remove the hook when no thread uses it."""
    hook.by_thread.pop(thread, None)
    registry = HookRegistry.check_if_exists_or_initialize(module)
    if not hook.by_thread and registry.get_hook(HOOK_NAME) is hook:
        registry.remove_hook(HOOK_NAME, recurse=False)


def _single_controlnet(pipeline: Any) -> Any:
    """The pipeline's ControlNet when it is one ``ControlNetModel`` (a MultiControlNet runs in full)."""
    from diffusers import ControlNetModel

    controlnet = getattr(pipeline, "controlnet", None)
    return controlnet if isinstance(controlnet, ControlNetModel) else None


@dataclass
class _Generation:
    fresh: bool = True
    signature: tuple | None = None
    plan: StepPlan | None = None
    num_steps: int | None = None
    step: int = -1  # current step (absolute with a plan, relative without; see vision.deepcache.steps)
    last_value: float | None = None
    first_step: int = 0
    full: bool = True  # decision of the current step
    feature: torch.Tensor | None = None
    calls: list[tuple[int, str]] = field(default_factory=list)  # (step, "full" | "partial" | "plain")
    controlnet_calls: list[str] = field(default_factory=list)  # "full" | "partial" per ControlNet call


class DeepCache:
    """DeepCache on a diffusers SD/SDXL pipeline or a bare ``UNet2DConditionModel``.

    Args:
        target: a diffusers pipeline with a ``unet`` (its ``scheduler`` gives the step plan; each call's
            ``set_timesteps`` begins a generation) or a ``UNet2DConditionModel``.
        interval: N >= 1, full steps every N steps (1: every step full, output equals the plain UNet).
        branch: skip branch b (0..11 for SD1.5, 0..8 for SDXL); see the package docstring.
        schedule: ``"uniform"`` or ``"nonuniform"`` (``center`` c, an integer step, and ``power`` p > 1;
            :mod:`vision.deepcache.schedules`).
        reference: number steps as the paper's pipeline loop does (PNDM's duplicated timestep is a step
            of its own; :mod:`vision.deepcache.steps`); off: one step per distinct timestep.
        scheduler: for a bare UNet, the scheduler whose ``timesteps`` the calls follow (optional).
        num_steps: for a bare UNet without a scheduler, T of the non-uniform schedule.
        compile: ``True`` or a dict of ``torch.compile`` options to compile the UNet computation.
        partial_controlnet: on a pipeline with one ``ControlNetModel``, run only the part of it that a
            retrieval step consumes (:mod:`vision.deepcache.controlnet`); off: the whole ControlNet always.

    ``enable()`` / ``disable()`` or ``with DeepCache(...):``. ``begin()`` starts a new generation
    explicitly (the cache is also reset automatically, see the package docstring). ``last_generation()``
    summarises the decisions of the current (or last) generation.
    """

    def __init__(self, target: Any, interval: int = 3, branch: int = 1, schedule: str = "uniform",
                 center: int = 15, power: float = 1.4, *, reference: bool = False, scheduler: Any = None,
                 num_steps: int | None = None, compile: bool | dict = False, partial_controlnet: bool = True):
        warn_if_mirror_is_stale()
        unet = getattr(target, "unet", target)
        self.pipeline = target if unet is not target else None
        self.unet = unet
        self._model = unwrap(unet)
        self.layout = unet_layout(unet)
        check_interval(interval)
        check_branch(branch, self.layout)
        self.controlnet = _single_controlnet(self.pipeline) if partial_controlnet else None
        if self.controlnet is not None:
            check_controlnet_layout(self.controlnet, self.layout)
            self._controlnet_signature = inspect.signature(type(self.controlnet).forward)
        self.interval, self.branch = int(interval), int(branch)
        self.schedule = check_schedule(schedule, center, power)
        self.center, self.power = center, power  # checked above when the schedule uses them
        self.reference = bool(reference)
        if num_steps is not None:
            check_steps(num_steps, 1)
        self.num_steps = num_steps
        self.scheduler = scheduler
        self._signature = inspect.signature(type(self._model).forward)
        self._fn = self._unet_forward
        if compile:
            self._fn = torch.compile(self._unet_forward, **(compile if isinstance(compile, dict) else {}))
        self._gen = _Generation()
        self._thread: int | None = None
        self._hook: DeepCacheHook | None = None
        self._controlnet_hook: DeepCacheHook | None = None
        self.totals = {"generations": 0, "full": 0, "partial": 0, "plain": 0}

    # -- attach / detach ----------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self._hook is not None

    def enable(self) -> DeepCache:
        """Attach to the UNet for calls from this thread (through diffusers' hook registry)."""
        with _ATTACH_LOCK:
            if self._hook is not None:
                raise RuntimeError("this DeepCache is already enabled")
            if hasattr(self.unet, "_hf_hook"):  # read only: accelerate's offload hook would be bypassed
                raise DeepCacheError("DeepCache does not support accelerate's offload hooks on the UNet "
                                     "(enable_model_cpu_offload / enable_sequential_cpu_offload): move the "
                                     "pipeline to one device instead")
            thread = threading.get_ident()
            registry = HookRegistry.check_if_exists_or_initialize(self.unet)
            hook = registry.get_hook(HOOK_NAME)
            if hook is not None and thread in hook.by_thread:
                raise RuntimeError("another DeepCache is already enabled on this UNet in this thread; disable it first")
            if hook is None:
                hook = DeepCacheHook()
                registry.register_hook(hook, HOOK_NAME)
            hook.by_thread[thread] = self
            self._hook, self._thread = hook, thread
            if self.controlnet is not None:
                self._controlnet_hook = _attach(self.controlnet, "controlnet", thread, self)
            self.begin()
        return self

    def disable(self) -> None:
        """Detach: the UNet behaves exactly as before :meth:`enable` (the hook leaves the registry when
        the last DeepCache on this UNet is disabled)."""
        with _ATTACH_LOCK:
            hook = self._hook
            if hook is None:
                return
            _detach(self.unet, hook, self._thread)
            if self._controlnet_hook is not None:
                _detach(self.controlnet, self._controlnet_hook, self._thread)
            self._hook, self._controlnet_hook, self._thread = None, None, None
            self.end()

    def __enter__(self) -> DeepCache:
        return self.enable()

    def __exit__(self, *exc: Any) -> None:
        self.disable()

    # -- generations --------------------------------------------------------------------------------

    def begin(self, num_steps: int | None = None) -> None:
        """Start a new generation: drop the cache; the next step is full. ``num_steps`` gives T for the
        non-uniform schedule when neither a pipeline nor a scheduler tells it."""
        if num_steps is not None:
            check_steps(num_steps, 1)
        self._gen = _Generation(num_steps=num_steps)

    def end(self) -> None:
        """Release the cached feature now (also done on :meth:`disable`; otherwise the feature of the last
        generation is held, one tensor of the branch's size, until the next generation begins)."""
        self._gen.feature = None
        self._gen.fresh = True

    def last_generation(self) -> dict:
        """Decisions of the current or last generation: steps, full steps and counts per call kind. Steps
        are numbered as ``numbering`` says (``"paper loop index"`` in reference mode, else ``"distinct
        timesteps"``; :mod:`vision.deepcache.steps`)."""
        calls = self._gen.calls
        full = sorted({s for s, kind in calls if kind == "full"})
        return {"numbering": "paper loop index" if self.reference else "distinct timesteps",
                "calls": len(calls), "steps": len({s for s, _ in calls}), "full_steps": full,
                "full_calls": sum(k == "full" for _, k in calls),
                "partial_calls": sum(k == "partial" for _, k in calls),
                "plain_calls": sum(k == "plain" for _, k in calls), "kinds": [k for _, k in calls],
                "controlnet_partial_calls": self._gen.controlnet_calls.count("partial"),
                "controlnet_full_calls": self._gen.controlnet_calls.count("full")}

    def _scheduler(self) -> Any:
        return getattr(self.pipeline, "scheduler", None) if self.pipeline is not None else self.scheduler

    def _start(self, signature: tuple) -> None:
        gen = self._gen
        if not gen.fresh or gen.calls:
            self._gen = gen = _Generation(num_steps=gen.num_steps)
        gen.fresh = False
        gen.signature = signature
        scheduler = self._scheduler()
        gen.plan = StepPlan.of(getattr(scheduler, "timesteps", None)) if scheduler is not None else None
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
        step = gen.plan.step_of(timestep, self.reference) if gen.plan is not None else None
        if gen.plan is not None and step is None:
            gen.plan = None  # the calls do not follow the scheduler's timesteps: count steps by value
        if gen.plan is None:
            value = timestep_value(timestep)
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
        if self.interval == 1:
            return True
        if self.reference:  # the paper's loop: i counted from the first step run, T = the steps run
            i = step - gen.first_step
            uniform = self.schedule == "uniform"
            total = (gen.plan.steps_from(gen.first_step) if gen.plan is not None
                     else self._total(gen, required=not uniform))
            if uniform:
                return i % self.interval == 0 and (total is None or i < total)
            return i in self._nonuniform(total)
        if self.schedule == "uniform":
            return (step - gen.first_step) % self.interval == 0
        total = gen.plan.num_steps if gen.plan is not None else self._total(gen)
        return step in self._nonuniform(total)

    def _nonuniform(self, total: int) -> tuple[int, ...]:
        return nonuniform(int(total), self.interval, int(self.center), float(self.power))[0]

    def _total(self, gen: _Generation, required: bool = True) -> int | None:
        """T given by ``begin(num_steps=)`` or ``num_steps=`` (no scheduler to read it from)."""
        total = gen.num_steps or self.num_steps
        if total is None and required:
            raise DeepCacheError("the non-uniform schedule needs the number of steps T: attach DeepCache to the "
                                 "pipeline, pass scheduler= or num_steps=, or call begin(num_steps=T)")
        return total

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
            out = self._hook.plain(*args, **kwargs)
            gen.feature = None
            gen.calls.append((gen.step, "plain"))
            self.totals["plain"] += 1
            return out
        full = self._decide(a["sample"], a["timestep"])
        gen = self._gen
        mid = a["mid_block_additional_residual"]
        if full and mid is not None and mid.numel() == 0:  # a partial ControlNet output on a full step
            raise RuntimeError("DeepCache: the ControlNet ran its retrieval part but the UNet step is full")
        cached = None if full else gen.feature
        cak = a.pop("cross_attention_kwargs")
        scale = 1.0
        if cak is not None:
            cak = dict(cak)
            scale = cak.pop("scale", 1.0)
        with LoraScale(self._model, scale):
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


    def _controlnet_forward(self, hook: DeepCacheHook, args: tuple, kwargs: dict) -> Any:
        """The ControlNet's call: in full on a full step; on a retrieval step only the residuals the shallow
        path consumes (:mod:`vision.deepcache.controlnet`), the others empty placeholders it never reads."""
        bound = self._controlnet_signature.bind(self.controlnet, *args, **kwargs)
        bound.apply_defaults()
        a = dict(bound.arguments)
        if a["guess_mode"] or self._decide(a["sample"], a["timestep"]):  # guess mode: the UNet call decides
            self._gen.controlnet_calls.append("full")
            return hook.plain(*args, **kwargs)
        residuals = shallow_residuals(
            self.controlnet, self.layout, self.branch, a["sample"], a["timestep"], a["encoder_hidden_states"],
            a["controlnet_cond"], a["conditioning_scale"], a["class_labels"], a["timestep_cond"], a["attention_mask"],
            a["added_cond_kwargs"], a["cross_attention_kwargs"])
        empty = a["sample"].new_zeros(0)
        down = residuals + [empty] * (self.layout.num_skips - len(residuals))
        self._gen.controlnet_calls.append("partial")
        if not a["return_dict"]:
            return down, empty
        from diffusers.models.controlnets.controlnet import ControlNetOutput

        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=empty)

    def _unet_forward(self, cached: torch.Tensor | None, **inputs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The UNet computation on this cache's branch (what ``compile=True`` compiles); see
        :func:`vision.deepcache.unet_forward.unet_forward`."""
        return unet_forward(self._model, self.layout, self.branch, cached, **inputs)


def cache_for(pipe: Any, error: type[Exception], interval: int, **options: Any) -> DeepCache | None:
    """The engines' one way to put DeepCache on a pipeline: ``DeepCache(pipe, interval, **options)``, or
    None when ``interval`` is 0 (off); an unusable setting (a branch the UNet does not have, a bad
    schedule) is re-raised as the engine's ``error`` with DeepCache's message, which names the setting."""
    if not interval:
        return None
    try:
        return DeepCache(pipe, interval=interval, **options)
    except DeepCacheError as err:
        raise error(str(err)) from None
