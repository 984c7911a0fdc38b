"""Caches for the SD3.5 transformer (DiT): the ones diffusers ships, through its own API (never a copy).

``taylorseer`` (TaylorSeer: full computation every ``interval`` steps, Taylor-series predictions of the
attention outputs in between; ``TaylorSeerCacheConfig``) and ``pab`` (Pyramid Attention Broadcast: the
attention output reused for ``interval`` steps in the middle of the schedule, ``PyramidAttentionBroadcastConfig``),
applied with ``diffusers.hooks.apply_*`` and removed with ``HookRegistry.remove_hook``.

Not offered, with the reason (diffusers 0.39): first-block cache fails on SD3 (its tail hook subtracts the
last block's text stream, which SD3's last block, ``context_pre_only``, does not return); FasterCache's
attention reuse changes nothing on SD3's joint attention and its unconditional-batch skipping breaks on
its batch layout.

Mechanics, through diffusers' public hooks only: the stateful caches need a state context, which
pipelines whose transformer is a ``CacheMixin`` set with ``cache_context``; SD3's transformer is not one in
0.39, so the run is wrapped in ``CacheMixin.cache_context`` called on it (a public method taking the
module). Registries are created for every submodule first, so the context reaches hooks registered later
(the registry caches its list of child registries on first use). PAB reads the current timestep from a
hook of ours on the transformer's forward (SD3's pipeline exposes none). Each run applies the cache
afresh and removes it afterwards, so no state crosses generations.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

TIMESTEP_HOOK = "vision.timestep"
# method -> the names of the hooks diffusers registers for it (what removal removes)
HOOK_NAMES = {"taylorseer": ("taylorseer_cache",), "pab": ("pyramid_attention_broadcast",)}


class TimestepTracker(ModelHook):
    """Remembers the timestep of the transformer's latest call (for PAB's ``current_timestep_callback``)."""

    def __init__(self) -> None:
        super().__init__()
        self.timestep: torch.Tensor | None = None

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        self.timestep = kwargs.get("timestep", args[2] if len(args) > 2 else None)
        return args, kwargs

    def current(self) -> int:
        return int(self.timestep.reshape(-1)[0]) if isinstance(self.timestep, torch.Tensor) else 1000


class DiTCache:
    """``with DiTCache(pipe.transformer, "taylorseer", interval=2):`` one generation with the cache."""

    def __init__(self, transformer: torch.nn.Module, method: str, interval: int = 2):
        if method not in HOOK_NAMES:
            raise ValueError(f"unknown DiT cache {method!r}; choose one of {', '.join(HOOK_NAMES)}")
        self.transformer, self.method, self.interval = transformer, method, int(interval)
        self.tracker = TimestepTracker()
        self._context: Any = None

    def settings(self) -> dict[str, Any]:
        """What the record states about this cache."""
        if self.method == "taylorseer":
            return {"method": "taylorseer", "cache_interval": self.interval, "disable_cache_before_step": 1,
                    "max_order": 1}
        return {"method": "pab", "spatial_attention_block_skip_range": self.interval,
                "spatial_attention_timestep_skip_range": [100, 800]}

    def _config(self) -> Any:
        from diffusers.hooks import PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

        if self.method == "taylorseer":
            return TaylorSeerCacheConfig(cache_interval=self.interval, disable_cache_before_step=1, max_order=1)
        return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=self.interval,
                                               spatial_attention_timestep_skip_range=(100, 800),
                                               current_timestep_callback=self.tracker.current)

    def __enter__(self) -> DiTCache:
        from diffusers.hooks import apply_pyramid_attention_broadcast, apply_taylorseer_cache
        from diffusers.models.cache_utils import CacheMixin

        for module in self.transformer.modules():  # see the module docstring: the context must reach them
            HookRegistry.check_if_exists_or_initialize(module)
        apply = apply_taylorseer_cache if self.method == "taylorseer" else apply_pyramid_attention_broadcast
        apply(self.transformer, self._config())
        HookRegistry.check_if_exists_or_initialize(self.transformer).register_hook(self.tracker, TIMESTEP_HOOK)
        self._context = CacheMixin.cache_context(self.transformer, "vision")
        self._context.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(None, None, None)
        registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        registry.remove_hook(TIMESTEP_HOOK, recurse=False)
        for name in HOOK_NAMES[self.method]:
            registry.remove_hook(name, recurse=True)
