"""``track="exemplar"``: every frame segmented from the exemplar by the image-prompt engine, with a
temporal prior, and instance ids kept across frames.

**The temporal prior** (``prior=True``): the previous processed frame, with the mask the engine gave it,
is added to each concept as a second prompt shot, so the concept's prototype is the mean of the
exemplar's and the previous frame's (``kshot="mean"``; the image engine's own k-shot path, with every
method and feature source). Why: the exemplar shows the object in another photo (other light, scale,
background), while the previous frame shows it as it looks in *this* video a moment ago; the mean keeps
the exemplar's identity (so a drifting mask cannot take over) and adds the video's appearance, which
lifts the object's similarity above look-alike background and keeps pieces of a partly hidden object
together. A previous frame whose mask is empty (object absent or the frame failed) gives no prior: the
next frame is found from the exemplar alone. Cost: one more feature pass per frame (the previous frame
as a prompt). A resumed run takes the prior from the last finished frame's mask on disk.

**Instance ids**: instances of a frame are matched to the previous frame's by mask IoU (Hungarian
assignment, IoU >= ``MATCH_IOU``); an unmatched instance gets the next new id.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vision.engines.video import adapters
from vision.engines.video.results import TrackedInstance

MATCH_IOU = 0.1  # least mask IoU for an instance to keep the id of one in the previous frame


class IdAssigner:
    """Stable instance ids: each frame's masks matched to the previous frame's by IoU."""

    def __init__(self) -> None:
        self.previous: list[tuple[int, str, np.ndarray]] = []  # (id, concept, mask)
        self.next_id = 1

    def assign(self, found: list[tuple[str, np.ndarray]]) -> list[int]:
        """Ids for ``found`` ((concept, bool [H, W] mask) in order): matched ones keep their id."""
        from scipy.optimize import linear_sum_assignment

        ids: list[int | None] = [None] * len(found)
        if found and self.previous:
            iou = np.array([[_iou(m, pm) if c == pc else 0.0 for _, pc, pm in self.previous] for c, m in found])
            for row, col in zip(*linear_sum_assignment(-iou)):
                if iou[row, col] >= MATCH_IOU:
                    ids[row] = self.previous[col][0]
        for k, ident in enumerate(ids):
            if ident is None:
                ids[k], self.next_id = self.next_id, self.next_id + 1
        self.previous = [(i, c, m) for i, (c, m) in zip(ids, found)]
        return ids  # type: ignore[return-value]


class ExemplarTracker:
    """Finds the concept(s) in each frame with the image engine; see the module docstring."""

    def __init__(self, engine: Any, concepts: list[Any], prior: bool = True):
        self.engine = engine
        self.concepts = concepts  # the image engine's Concept objects (prompt images decoded)
        self.use_prior = prior
        self.last: tuple[np.ndarray, dict[str, np.ndarray]] | None = None  # (frame, concept -> union mask)
        self.ids = IdAssigner()

    def observe(self, image: np.ndarray, masks: dict[str, np.ndarray]) -> None:
        """Take a finished frame (e.g. from a run being resumed) as the prior of the next one."""
        self.last = (image, masks)
        self.ids.assign([(c, m) for c, m in masks.items() if m.any()])

    def forget(self) -> None:
        """No prior for the next frame (the previous one failed)."""
        self.last = None

    def step(self, image: np.ndarray, name: str) -> tuple[list[TrackedInstance], float, bool, str, dict, list[str]]:
        """(instances, presence score, present, prior used, timings, notes) for one RGB uint8 [H, W, 3] frame."""
        concepts, prior = self._with_prior()
        result = adapters.segment_image(self.engine, concepts, image, name=name)
        found = [(c.name, inst) for c in result.concepts for inst in c.instances]
        ids = self.ids.assign([(concept, inst.mask) for concept, inst in found])
        instances = [TrackedInstance(i, inst.mask, inst.score, concept) for i, (concept, inst) in zip(ids, found)]
        present = any(c.present for c in result.concepts)
        unions = {c.name: (c.mask if c.mask is not None else np.zeros(image.shape[:2], bool)) for c in result.concepts}
        self.last = (image, unions)
        return instances, float(result.presence), present, prior, dict(result.timings), list(result.notes)

    def _with_prior(self) -> tuple[list[Any], str]:
        if not self.use_prior or self.last is None:
            return self.concepts, "none"
        frame, masks = self.last
        out, used = [], False
        for concept in self.concepts:
            mask = masks.get(concept.name)
            if mask is not None and mask.any():
                shot = dataclasses.replace(concept.prompts[0], image=frame, mask=mask, box=None, scribble=None)
                concept = dataclasses.replace(concept, prompts=[*concept.prompts, shot])
                used = True
            out.append(concept)
        return out, "previous-frame-shot" if used else "none"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
