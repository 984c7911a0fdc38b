"""The two ways the video engine follows an object, behind one interface the engine drives frame by frame:
``step(frame, name)`` -> (instances, score, present, prior, timings, notes), ``observe(frame, masks)``
(a finished frame carried over on resume) and ``forget()`` (the previous frame failed)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vision.engines.video import adapters
from vision.engines.video.config import VideoError
from vision.engines.video.exemplar import ExemplarTracker
from vision.engines.video.prompt import VideoPrompt
from vision.engines.video.results import TrackedInstance
from vision.videoio import Frame, VideoInfo


class ExemplarTrack:
    """``track="exemplar"``: the image-prompt engine on every frame (see :mod:`.exemplar`). A mask, click or
    box on frame K makes frame K with the object's mask the exemplar."""

    def __init__(self, engine: Any, info: VideoInfo, prompt: VideoPrompt):
        from vision.engines.ipseg import Concept, Prompt

        if prompt.kind == "exemplar":
            exemplar = prompt.exemplar
        else:
            image = engine.prompt_frame(info, prompt)
            exemplar = Concept([Prompt(image, mask=engine.object_mask(info, prompt, image))], name="object")
        try:
            concepts = engine.image_engine.prepare(exemplar)
        except adapters.image_error() as err:
            raise VideoError(f"exemplar: {err}") from None
        self.tracker = ExemplarTracker(engine.image_engine, concepts, engine.config.prior, engine.config.prior_margin)

    def observe(self, frame: Frame, masks: dict[str, np.ndarray]) -> None:
        self.tracker.observe(frame.image, masks)

    def forget(self) -> None:
        self.tracker.forget()

    def step(self, frame: Frame, name: str) -> tuple:
        return self.tracker.step(frame.image, name)


class Sam2Track:
    """``track="sam2"``: SAM 2.1 conditioned on the prompt frame, then propagating (see :mod:`.sam2`)."""

    def __init__(self, engine: Any, info: VideoInfo, prompt: VideoPrompt):
        from vision.engines.video.sam2 import Sam2Tracker

        self.engine, self.info, self.prompt = engine, info, prompt
        self.tracker = Sam2Tracker(engine.hub.get(engine.config.sam2_model))
        self.conditioned = False
        self.resumed = False

    def observe(self, frame: Frame, masks: dict[str, np.ndarray]) -> None:
        """Condition on a finished frame's saved mask; when it is empty (the object was lost there), on the
        original prompt and its frame again."""
        union = np.logical_or.reduce(list(masks.values())) if masks else None
        if union is not None and union.any():
            self.tracker.condition(frame.image, mask=union)
        else:
            self._condition(self.engine.prompt_frame(self.info, self.prompt))
        self.conditioned = self.resumed = True

    def forget(self) -> None:
        """SAM 2's memory simply lacks the failed frame."""

    def step(self, frame: Frame, name: str) -> tuple:
        if frame.index == self.prompt.frame and not self.conditioned:
            mask, score = self._condition(frame.image)
            prior = "prompt"
        elif not self.conditioned:
            raise VideoError(f"{self.info.path}: SAM 2 has no prompt yet (frame {self.prompt.frame}, the prompt "
                             "frame, failed or was not processed)")
        else:
            mask, score = self.tracker.step(frame.image)
            prior = "resumed-mask" if self.resumed else "memory"
            self.resumed = False
        present = bool(score > 0.5 and mask.any())
        instances = [TrackedInstance(1, mask, score)] if mask.any() else []
        return instances, score, present, prior, {}, []

    def _condition(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        prompt = self.prompt
        self.conditioned = True
        if prompt.kind in ("points", "box"):
            return self.tracker.condition(image, points=prompt.points, labels=prompt.point_labels, box=prompt.box)
        if prompt.kind == "mask":
            return self.tracker.condition(image, mask=prompt.load_mask(self.info))
        found = adapters.segment_image(self.engine.image_engine, prompt.exemplar, image, name="prompt frame")
        if not found.mask.any():
            raise VideoError(f"{self.info.path}: the exemplar's concept was not found on frame {prompt.frame} "
                             f"(presence {found.presence:.3f}): give a click, box or mask, or another --frame")
        return self.tracker.condition(image, mask=found.mask)
