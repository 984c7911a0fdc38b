"""Where DeepCache's branches are in a diffusers ``UNet2DConditionModel`` (SD1.x/2.x and SDXL layouts).

Number the skip tensors ``s_0 = conv_in(x)``, then one per down layer in execution order (each
resnet(+attention) and each downsampler): SD1.5 has 12 (``s_0..s_11``), SDXL 9. Up layer ``j`` is the up
resnet(+attention) that consumes ``s_j`` (up layer 0 = ``up_blocks[-1].resnets[-1]``). Branch ``b``
caches the hidden state that enters up layer ``b``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vision.deepcache.schedules import DeepCacheError

_DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")


@dataclass(frozen=True)
class Layout:
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


def unwrap(unet: Any) -> Any:
    return getattr(unet, "_orig_mod", unet)  # torch.compile's OptimizedModule wraps the real module


def unet_layout(unet: Any) -> Layout:
    model = unwrap(unet)
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
    return Layout(tuple(down), tuple(up_first), up_len, tuple(levels))


def num_branches(unet: Any) -> int:
    """Number of valid branch ids (skip tensors) of a UNet: 12 for SD1.5, 9 for SDXL."""
    return unet_layout(unet).num_skips


def branch_info(unet: Any, branch: int) -> dict:
    """What branch ``b`` runs on a retrieval step of ``unet`` (for documentation and benchmarks)."""
    layout = unet_layout(unet)
    check_branch(branch, layout)
    k, r = layout.up_block_of(branch)
    down = ["conv_in"] + [f"down_blocks[{d}]." + ("downsamplers" if r2 == len(unwrap(unet).down_blocks[d].resnets)
                                                  else f"layer{r2}") for d, r2 in layout.down[:branch]]
    up = [f"up_blocks[{kk}].layer{rr}" for kk, rr in (layout.up_block_of(j) for j in range(branch, -1, -1))]
    return {"branch": branch, "level": layout.levels[branch], "down": down, "up": up,
            "cached": f"input of up_blocks[{k}].resnets[{r}]"}


def check_branch(branch: int, layout: Layout) -> None:
    if isinstance(branch, bool) or not isinstance(branch, (int, np.integer)) or not 0 <= branch < layout.num_skips:
        levels = layout.levels[-1] + 1
        raise DeepCacheError(f"branch {branch!r} is out of range for this UNet: valid branches are "
                             f"0..{layout.num_skips - 1} ({levels} resolution levels; 0 = shallowest and fastest)")

