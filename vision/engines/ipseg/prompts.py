"""IPSeg's inputs (:class:`Prompt`, :class:`Concept`) and the prompt region on the feature grid.

A grid is [g, g] over the *image* (see :mod:`vision.engines.ipseg.features`), indexed ``[row, col]``;
masks are bool [H, W].
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vision.engines.ipseg.config import IPSegError, IPSegWarning
from vision.imaging import ImageError, ImageInput, load_mask


@dataclass
class Prompt:
    """One prompt image with at most one of: ``mask`` (array, image or path; nonzero = concept),
    ``box`` (x0, y0, x1, y1 in pixels) or ``scribble`` (strokes on the concept, array/image/path).
    None of them: automatic foreground."""

    image: ImageInput
    mask: Any = None
    box: Sequence[float] | None = None
    scribble: Any = None


@dataclass
class Concept:
    """A concept to find: one or more prompt images (k-shot) and a name for the outputs."""

    prompts: list[Prompt]
    name: str = "concept"


def as_concepts(concepts: Any) -> list[Concept]:
    """Normalise what :meth:`IPSeg.segment` accepts into a list of :class:`Concept`.

    An image (path, array, PIL, bytes) or a :class:`Prompt` is one single-shot concept; a
    :class:`Concept` is itself; a list of images/Prompts is ONE k-shot concept; a list of Concepts is
    several concepts; a dict ``{name: image | Prompt | list of them}`` is several named concepts.
    """
    def prompts_of(value: Any) -> list[Prompt]:
        values = value if isinstance(value, (list, tuple)) else [value]
        return [v if isinstance(v, Prompt) else Prompt(v) for v in values]

    if isinstance(concepts, Concept):
        out = [concepts]
    elif isinstance(concepts, Mapping):
        out = [Concept(prompts_of(v), str(k)) for k, v in concepts.items()]
    elif isinstance(concepts, (list, tuple)) and concepts and all(isinstance(c, Concept) for c in concepts):
        out = list(concepts)
    else:
        out = [Concept(prompts_of(concepts))]
    if not out or any(not c.prompts for c in out):
        raise IPSegError("no prompt image given")
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise IPSegError(f"concept names must differ, got {names}")
    return out


# ------------------------------------------------------------------------------------ masks on the grid
def box_to_mask(box: Sequence[float], image_hw: tuple[int, int]) -> np.ndarray:
    """Box (x0, y0, x1, y1) in pixels (clipped to the image) -> bool mask [H, W]."""
    h, w = image_hw
    x0, y0, x1, y1 = (float(v) for v in box)
    c0, c1 = int(np.clip(np.floor(min(x0, x1)), 0, w)), int(np.clip(np.ceil(max(x0, x1)), 0, w))
    r0, r1 = int(np.clip(np.floor(min(y0, y1)), 0, h)), int(np.clip(np.ceil(max(y0, y1)), 0, h))
    mask = np.zeros((h, w), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def mask_to_grid(mask: np.ndarray, grid: int, mode: str = "nearest-exact") -> np.ndarray:
    """bool mask [H, W] -> bool [grid, grid] by nearest sampling (the spec's resize of M): at cell centres
    (``"nearest-exact"``) or at each cell's top-left pixel (PyTorch ``"nearest"``, the reference's)."""
    t = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    return (F.interpolate(t, size=(grid, grid), mode=mode)[0, 0] > 0.5).numpy()


def mask_touches_grid(mask: np.ndarray, grid: int) -> np.ndarray:
    """bool mask [H, W] -> bool [grid, grid]: True where any pixel of the cell is inside the mask."""
    mask = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    return (F.adaptive_max_pool2d(mask, (grid, grid))[0, 0] > 0).numpy()


def erode3x3(region: np.ndarray) -> np.ndarray:
    """3x3 min-pool of a bool grid (the image border does not erode: padding counts as inside)."""
    t = torch.as_tensor(np.asarray(region, dtype=np.float32))[None, None]
    return (-F.max_pool2d(-t, 3, stride=1, padding=1) > 0.5)[0, 0].numpy()


def region_from_mask(mask: np.ndarray, grid: int, erode: bool = True,
                     mode: str = "nearest-exact") -> tuple[np.ndarray, str]:
    """The prompt region R on the grid from a non-empty pixel mask, and how it was obtained.

    Nearest resize to the grid (``mode``, see :func:`mask_to_grid`), then a 3x3 erosion (``erode``).
    Fallbacks, in order, when a step leaves nothing: the un-eroded grid mask ("uneroded"), then every
    cell the mask touches ("touched": masks thinner than a cell).
    """
    grid_mask = mask_to_grid(mask, grid, mode)
    if erode:
        eroded = erode3x3(grid_mask)
        if eroded.any():
            return eroded, "eroded"
    if grid_mask.any():
        return grid_mask, "uneroded" if erode else "nearest"
    return mask_touches_grid(mask, grid), "touched"


def first_pc_foreground(tokens: torch.Tensor, centre_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Automatic foreground from patch tokens [C, g, g]: the first principal component of the
    L2-normalised tokens, thresholded at 0 (its mean), with the sign chosen so that the central
    ``centre_fraction`` of the grid scores higher on average than the rest (the salient side).

    Returns (foreground bool [g, g], projection float32 [g, g]).
    """
    c, g1, g2 = tokens.shape
    x = F.normalize(tokens.reshape(c, -1).T.double(), dim=1)
    x = x - x.mean(dim=0, keepdim=True)
    _, vectors = torch.linalg.eigh(x.T @ x)
    proj = (x @ vectors[:, -1]).reshape(g1, g2)
    centre = np.zeros((g1, g2), dtype=bool)
    m1, m2 = round(g1 * (1 - centre_fraction) / 2), round(g2 * (1 - centre_fraction) / 2)
    centre[m1 : g1 - m1, m2 : g2 - m2] = True
    centre_t = torch.as_tensor(centre)
    if proj[centre_t].mean() < proj[~centre_t].mean():
        proj = -proj
    proj = proj.float().numpy()
    return proj > 0, proj


# -------------------------------------------------------------------------------- the prompt's region
def user_region(prompt: Prompt, hw: tuple[int, int]) -> tuple[str, np.ndarray, list[str]] | None:
    """The user's region of a prompt image [H, W] as (kind, bool mask [H, W], notes), or None when the
    prompt has none. A mask of another size is resized (nearest, with a warning) when its aspect ratio
    matches within 5%; empty or malformed regions are refused."""
    given = [n for n in ("mask", "box", "scribble") if getattr(prompt, n) is not None]
    if len(given) > 1:
        raise IPSegError(f"give at most one of mask, box or scribble for a prompt image (got {given})")
    if not given:
        return None
    kind = given[0]
    notes: list[str] = []
    if kind == "box":
        box = np.asarray(prompt.box, dtype=np.float64).reshape(-1)
        if box.size != 4 or not np.isfinite(box).all():
            raise IPSegError(f"a prompt box is (x0, y0, x1, y1) in pixels, got {prompt.box!r}")
        mask = box_to_mask(box, hw)
        if not mask.any():
            raise IPSegError(f"the prompt box {box.tolist()} covers no pixel of the {hw[1]}x{hw[0]} image")
        return "box", mask, notes
    try:
        mask = load_mask(getattr(prompt, kind))
    except (ImageError, OSError) as err:
        raise IPSegError(f"prompt {kind}: {err}") from None
    if mask.shape != tuple(hw):
        mh, mw = mask.shape
        if abs(np.log((mw / mh) / (hw[1] / hw[0]))) > np.log(1.05):
            raise IPSegError(f"the prompt {kind} is {mw}x{mh} but the prompt image is {hw[1]}x{hw[0]}: "
                             "the shapes differ too much to be the same picture")
        note = f"prompt {kind} resized from {mw}x{mh} to the image's {hw[1]}x{hw[0]} (nearest)"
        warnings.warn(note, IPSegWarning, stacklevel=4)
        notes.append(note)
        mask = load_mask(mask, size=hw)
    if not mask.any():
        raise IPSegError(f"the prompt {kind} is empty (no pixel set): mark the concept, or give no "
                         f"{kind} to use the automatic foreground")
    return kind, mask, notes


def grid_region(kind: str, mask: np.ndarray, grid: int, mode: str) -> tuple[np.ndarray, str]:
    """A user region on the grid: masks and boxes by nearest sampling and erosion
    (:func:`region_from_mask`), scribbles (thin strokes) by "any pixel in the cell", not eroded."""
    if kind == "scribble":
        return mask_touches_grid(mask, grid), "touched"
    return region_from_mask(mask, grid, mode=mode)


def auto_region(image: np.ndarray, tokens: torch.Tensor) -> tuple[np.ndarray, str]:
    """The automatic prompt region from the prompt's tokens [C, g, g] (:func:`first_pc_foreground`,
    eroded when that leaves something); refuses near-uniform images and splits that find nothing."""
    advice = "give a mask or a box of the concept on the prompt image"
    if float(image.reshape(-1, 3).astype(np.float32).std(axis=0).max()) < 2.0:
        raise IPSegError(f"no salient region in the prompt image (its pixels are nearly uniform): {advice}")
    fg, _ = first_pc_foreground(tokens)
    if not fg.any() or fg.all():
        raise IPSegError(f"no salient region found in the prompt image: {advice}")
    eroded = erode3x3(fg)
    return (eroded, "auto-eroded") if eroded.any() else (fg, "auto-uneroded")
