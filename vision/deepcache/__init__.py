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

The package: :mod:`~vision.deepcache.schedules` (which steps are full: uniform, non-uniform with its
exact formula), :mod:`~vision.deepcache.steps` (which step a UNet call is: the three step-numbering
conventions), :mod:`~vision.deepcache.layout` (branches of a UNet), :mod:`~vision.deepcache.unet_forward`
(the full and the retrieval computation), :mod:`~vision.deepcache.cache` (:class:`DeepCache`).

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
feature is the output of ``up_blocks[3]``'s first layer (the branch of the paper's SD experiments). These
are the same branches as the reference ``DeepCacheSDHelper`` (outputs agree with it, see
``bench/deepcache.py``).

Schedules and steps
-------------------
``uniform`` (step ``i`` full when ``(i - i0) % N == 0``, ``i0`` = the first step run) or ``nonuniform``
(``k = ceil(T / N)`` full steps denser around a centre step ``c``, power ``p``: the reference code's
``sample_from_quad_center`` sets exactly, formula and test vectors in :mod:`vision.deepcache.schedules`).
The first step of a generation is always full; ``N = 1`` makes every step full. Steps are numbered
(:mod:`vision.deepcache.steps`) by distinct timesteps (ours: consecutive UNet calls with the same
timestep, i.e. PNDM's duplicated first timestep, Heun's two evaluations or separate cond/uncond calls,
form one step and share one decision), or with ``reference=True`` by the paper pipeline's loop index.

Reference mode (``reference=True``; on in the generation engine's ``paper`` preset) changes one thing:
steps are numbered by the denoising loop's index over ``scheduler.timesteps``, counted from the first
step run, with T = the number of steps run, as the paper's pipeline does. Why: the paper's numbers (SD1.5,
PLMS) were measured with it. With PNDM this makes the duplicated timestep a step of its own and the loop's
last entry (index T) a retrieval step; with DDIM, Euler or DPM-Solver++ it changes nothing; for img2img
it makes the non-uniform schedule relative to the first step run (ours keeps absolute indices).
Kept the same in both modes: the cache is reset at every generation (the helper's state leaks across
calls), and a missing power falls back to the uniform schedule (the reference raises).

Generations and the cache
-------------------------
The cache (one tensor, both CFG halves in one batch) is dropped at the start of every generation, which
is detected by, whichever comes first: a new ``scheduler.timesteps`` tensor (every diffusers pipeline call
runs ``set_timesteps`` before its loop, so each ``pipe(...)`` begins one), an explicit
:meth:`DeepCache.begin`, diffusers' ``reset_stateful_hooks`` on the UNet's hook registry, the timestep
going up (bare UNet without a scheduler), or a change of the batch's shape, dtype or device (never reused
across batch sizes). The last generation's feature is held until the next begins or :meth:`DeepCache.end`
/ :meth:`DeepCache.disable` releases it.

Mechanics
---------
DeepCache attaches through diffusers' own hook mechanism: one :class:`~vision.deepcache.cache.DeepCacheHook`
(a ``diffusers.hooks.ModelHook`` with ``new_forward``) registered per UNet in its
``diffusers.hooks.HookRegistry`` under :data:`~vision.deepcache.cache.HOOK_NAME`; the hook runs the full or
the shallow path by calling the blocks itself (whole blocks where possible, layer by layer around the
branch). No block is patched, no class swapped, no attribute of the UNet or the pipeline written by us.
:meth:`DeepCache.disable` removes the hook from the registry (diffusers then restores the forward it
wrapped), so the UNet behaves exactly as before. A DeepCache is active only in the thread that enabled it
(other threads sharing the hub's UNet see the plain UNet through the same hook), and several threads may
each enable their own. :mod:`~vision.deepcache.unet_forward` mirrors ``UNet2DConditionModel.forward`` of
the diffusers version it names; a test fails when the installed one differs.

The decision is made in Python from step counters, without reading tensors back: a pipeline's timestep
is located by its position in ``scheduler.timesteps`` (storage offset), so the loop has no host sync
(bare UNets without a scheduler read the timestep value). ``compile=True`` (or a dict of
``torch.compile`` options) compiles the UNet computation ``_unet_forward`` (two graphs: full and
retrieval) while the decisions stay outside the graph. Full steps are bit-identical to the plain UNet;
with ``N = 1`` every step is full, so outputs equal the uncached pipeline exactly.

ControlNet: on a pipeline with one ``ControlNetModel``, DeepCache also hooks the ControlNet (the same
registry): on a full step it runs whole; on a retrieval step only its part that the shallow path consumes
(the residuals of skips ``0..b``: embeddings, ``conv_in`` + hint encoder, down layers ``1..b``, their zero
convolutions; :mod:`vision.deepcache.controlnet`), which equals the first ``b + 1`` residuals of a full run.
Guess mode and MultiControlNet run the whole ControlNet every step.

Not supported on retrieval steps (those calls run the plain UNet and the next step is full): T2I-Adapter
intra-block residuals. ControlNet residuals, IP-Adapter, LoRA scales, FreeU, GLIGEN and class/added
conditioning are supported.
"""

from vision.deepcache.cache import DeepCache, cache_for
from vision.deepcache.layout import branch_info, num_branches
from vision.deepcache.schedules import (
                                        SCHEDULES,
                                        DeepCacheError,
                                        check_schedule,
                                        full_steps,
                                        nonuniform_full_steps,
                                        uniform_full_steps,
)

__all__ = ["DeepCache", "cache_for", "uniform_full_steps", "nonuniform_full_steps", "full_steps", "check_schedule",
           "DeepCacheError", "num_branches", "branch_info", "SCHEDULES"]
