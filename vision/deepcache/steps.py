"""Which denoising step a UNet call belongs to: the step plan of a generation and two numberings.

A pipeline's denoising loop runs ``for i, t in enumerate(scheduler.timesteps)``. Most schedulers list
each timestep once, and then every convention below agrees. PNDM/PLMS (SD's default sampler, with
``skip_prk_steps``) lists its second timestep twice (T steps, T + 1 entries: ``[981, 961, 961, 941, ...]``
for T = 50), Heun every timestep after the first. Three ways to number the steps exist:

* **paper loop index** (``reference=True``): the step is the loop index ``i`` of the entry, counted from
  the first entry this generation runs; T = the number of distinct timesteps it runs (the pipeline's
  ``num_inference_steps``). PNDM's duplicated timestep is a step of its own, and its last entry
  ``i = T`` lies outside every schedule (``range(0, T, N)``), so it is always a retrieval step. This is
  how the paper's pipeline (horseee/DeepCache ``DeepCache/sd/pipeline_stable_diffusion.py``) decides.
* **first index of the value** (the PyPI ``DeepCacheSDHelper``: ``list(timesteps).index(t)``): both
  calls of a duplicated timestep get the index of its first entry; the index of every later entry is
  its entry position, so after a duplicate one index is skipped. Not implemented here (documented only).
* **distinct timesteps** (ours, ``reference=False``): consecutive entries with the same timestep are
  one step and share one decision (``Heun``'s two evaluations, PNDM's duplicate), steps are numbered
  ``0..T-1`` over the whole ``scheduler.timesteps`` (so img2img, which starts late, keeps the absolute
  indices of the non-uniform schedule), and every distinct timestep is one step of the schedule.

With DDIM, Euler or DPM-Solver++ the three agree: our DDIM results equal the helper's bit for bit.

A call's entry is found by its timestep tensor's position in ``scheduler.timesteps`` (diffusers' loops
pass a view of that tensor: no host sync), else by value (the first entry with that value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class StepPlan:
    """The scheduler's timestep sequence of one generation, on the host (read once per generation)."""

    source: torch.Tensor  # scheduler.timesteps (its identity marks the generation)
    groups: list[int]  # entry -> distinct-timestep index (consecutive equal timesteps share one)
    first_entry: dict[float, int]  # timestep value -> its first entry

    @classmethod
    def of(cls, timesteps: Any) -> StepPlan | None:
        if not isinstance(timesteps, torch.Tensor) or timesteps.ndim != 1 or timesteps.numel() == 0:
            return None
        values = timesteps.detach().to("cpu", torch.float64).tolist()
        groups, first_entry = [], {}
        for i, v in enumerate(values):
            groups.append(groups[-1] + (v != values[i - 1]) if i else 0)
            first_entry.setdefault(v, i)
        return cls(timesteps, groups, first_entry)

    @property
    def num_steps(self) -> int:
        """Distinct timesteps of the whole sequence."""
        return self.groups[-1] + 1

    def steps_from(self, entry: int) -> int:
        """Distinct timesteps from ``entry`` to the end (the steps a generation starting there runs)."""
        return self.groups[-1] - self.groups[entry] + 1

    def entry_of(self, timestep: Any) -> int | None:
        """The entry of a UNet call's timestep: by storage offset into ``source``, else by value."""
        if isinstance(timestep, torch.Tensor):
            src = self.source
            if (timestep.device == src.device and timestep.numel() >= 1
                    and timestep.untyped_storage().data_ptr() == src.untyped_storage().data_ptr()):
                entry, rem = divmod(timestep.storage_offset() - src.storage_offset(), src.stride(0) or 1)
                if rem == 0 and 0 <= entry < len(self.groups):
                    return entry
        return self.first_entry.get(timestep_value(timestep))

    def step_of(self, timestep: Any, reference: bool) -> int | None:
        """The call's step: its entry (paper loop numbering) or its distinct-timestep index (ours)."""
        entry = self.entry_of(timestep)
        if entry is None or reference:
            return entry
        return self.groups[entry]


def timestep_value(timestep: Any) -> float:
    """The timestep as a float (a host read for an accelerator tensor that is not from the plan)."""
    if isinstance(timestep, torch.Tensor):
        return float(timestep.detach().reshape(-1)[0].to("cpu", torch.float64))
    return float(timestep)
