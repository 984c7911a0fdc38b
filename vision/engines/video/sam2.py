"""``track="sam2"``: SAM 2.1's video model propagates one object's mask, frame by frame, as a stream.

**Why transformers' SAM 2 and not the ``sam2`` package.** ``transformers`` (already a dependency, 4.57
here) ships ``Sam2VideoModel`` with a *streaming* session: frames are given one at a time
(``model(inference_session=..., frame=...)``), which is exactly a decode-as-you-go video, while the
``sam2`` package's predictor loads the whole video (a JPEG folder or every decoded frame) into its
state first. ``sam2`` on PyPI is also a source distribution only (``sam2-1.1.0.tar.gz``: a local build, an
optional CUDA extension, Hydra and iopath as new dependencies), and the checkpoints in transformers'
format load with ``from_pretrained`` like the other models of :mod:`vision.builders`; the tiny random
model for tests is the same class built from a small config (:func:`vision.tiny.sam2`).

**Bounded memory.** transformers' session keeps every frame's pixels and every frame's memory features
for the whole video. :class:`BoundedSession` (a subclass, using the session's own public containers)
forgets what the model can no longer read: a frame's pixels once it is processed, and non-conditioning
outputs older than the model's window (``num_maskmem`` memory frames and ``max_object_pointers_in_encoder``
object pointers); conditioning frames (the prompt) are kept. Masks are identical with and without it
(``tests/test_video_engine.py`` checks this on the tiny model).

Shapes: frames RGB uint8 [H, W, 3]; masks bool [H, W]; the object score is sigmoid of SAM 2's object
logit, 0..1 (> 0.5: the object is visible).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

OBJECT_ID = 1  # one object per run


def _session_class() -> type:
    from transformers.models.sam2_video.modeling_sam2_video import (
        Sam2VideoInferenceSession,
    )

    class BoundedSession(Sam2VideoInferenceSession):
        """A streaming session that keeps only what the model reads next (see the module docstring)."""

        def forget_before(self, frame_idx: int, window: int) -> None:
            """Drop the pixels of frames before ``frame_idx`` and the non-conditioning outputs of frames
            more than ``window`` frames before it."""
            for index in [i for i in (self.processed_frames or {}) if i < frame_idx]:
                del self.processed_frames[index]
            for outputs in self.output_dict_per_obj.values():
                stale = [i for i in outputs["non_cond_frame_outputs"] if i < frame_idx - window]
                for index in stale:
                    del outputs["non_cond_frame_outputs"][index]
            for tracked in self.frames_tracked_per_obj.values():
                for index in [i for i in tracked if i < frame_idx - window]:
                    del tracked[index]

    return BoundedSession


class Sam2Tracker:
    """One object through a stream of frames: :meth:`condition` on a frame with a mask, points or a box,
    then :meth:`step` on each following frame. ``bounded=False`` keeps transformers' full history."""

    def __init__(self, model: Any, bounded: bool = True):
        from transformers import Sam2ImageProcessorFast, Sam2VideoProcessor
        from transformers.models.sam2_video.video_processing_sam2_video import (
            Sam2VideoVideoProcessor,
        )

        self.model = model
        side = int(model.config.image_size)
        size = {"height": side, "width": side}
        self.processor = Sam2VideoProcessor(Sam2ImageProcessorFast(size=size), Sam2VideoVideoProcessor(size=size))
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        self.session = _session_class()(inference_device=device, inference_state_device=device,
                                        video_storage_device=device, dtype=dtype)
        self.window = max(int(model.config.num_maskmem), int(model.config.max_object_pointers_in_encoder))
        self.bounded = bounded
        self.position = 0  # the session's frame index: consecutive, whatever frames the video skips

    def condition(self, image: np.ndarray, mask: np.ndarray | None = None,
                  points: Sequence[Sequence[float]] = (), labels: Sequence[int] = (),
                  box: Sequence[float] | None = None) -> tuple[np.ndarray, float]:
        """Prompt the object on this frame with a mask (bool [H, W]) or points ((x, y) pixels, labels 1/0)
        and/or a box (x0, y0, x1, y1 pixels); returns SAM 2's mask and object score on it."""
        h, w = image.shape[:2]
        if mask is not None:
            self.processor.add_inputs_to_inference_session(self.session, frame_idx=self.position, obj_ids=OBJECT_ID,
                                                           input_masks=np.asarray(mask, dtype=bool))
        else:
            given: dict[str, Any] = {}
            if len(points):
                given["input_points"] = [[[[float(x), float(y)] for x, y in points]]]
                given["input_labels"] = [[[int(v) for v in labels]]]
            if box is not None:
                given["input_boxes"] = [[[float(v) for v in box]]]
            self.processor.add_inputs_to_inference_session(self.session, frame_idx=self.position, obj_ids=OBJECT_ID,
                                                           original_size=(h, w), **given)
        return self._run(image, conditioning=True)

    def step(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Propagate to the next frame: (mask bool [H, W], object score 0..1)."""
        return self._run(image, conditioning=False)

    @torch.no_grad()
    def _run(self, image: np.ndarray, conditioning: bool) -> tuple[np.ndarray, float]:
        inputs = self.processor(images=np.require(image, requirements="W"), return_tensors="pt")
        pixels = inputs.pixel_values[0].to(self.session.inference_device, self.session.dtype)
        out = self.model(inference_session=self.session, frame=pixels, frame_idx=self.position)
        masks = self.processor.post_process_masks([out.pred_masks], original_sizes=inputs.original_sizes,
                                                  binarize=True)[0]
        logit = self.session.get_output(0, self.position, "object_score_logits", is_conditioning_frame=conditioning)
        score = float(torch.sigmoid(logit.float()).reshape(-1)[0])
        if self.bounded:
            self.session.forget_before(self.position + 1, self.window)
        self.position += 1
        return masks[0, 0].cpu().numpy().astype(bool), score
