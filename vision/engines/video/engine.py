"""The video engine: find a concept through a whole video from one exemplar, a click, a box or a mask.

Pipeline (:class:`VideoEngine`; frames are decoded and processed one at a time, so memory does not
grow with the video's length):

1. **Video.** :func:`vision.videoio.probe` checks the file or frame folder (limits, decodability) and
   the frames to process are chosen: every ``every``-th frame, at most ``max_frames``
   (:class:`~vision.engines.video.config.VideoConfig`); ``track="sam2"`` starts at the prompt's frame.
2. **Prompt** (:class:`~vision.engines.video.prompt.VideoPrompt`). An exemplar is prepared once by the
   image-prompt engine (its prototypes are cached). A mask, click or box names the object on frame
   ``prompt.frame``: with ``track="exemplar"`` that frame and the object's mask (a click or box becomes
   SAM's mask, :func:`~vision.engines.video.adapters.click_mask`) become the exemplar.
3. **Frames.** ``track="exemplar"``: each frame is segmented by the image-prompt engine with the temporal
   prior of :mod:`~vision.engines.video.exemplar` (what it is and why is documented there).
   ``track="sam2"``: SAM 2.1's video model is conditioned on the prompt frame (the mask, the clicks or
   box, or the exemplar's mask found there) and propagates it forward
   (:mod:`~vision.engines.video.sam2`).
4. **Results.** One :class:`~vision.engines.video.results.FrameResult` per frame: instance masks with
   ids stable across frames, a score, ``present``, what carried over from earlier frames (``prior``:
   ``"none"``, ``"search-region"`` (exemplar), ``"prompt"``, ``"memory"``, ``"resumed-mask"`` (sam2)).
   A frame that cannot be decoded or segmented is a ``FrameResult`` with ``error`` set, and the video
   goes on (the next frame is found without a prior).

Progress: one :class:`~vision.engines.contract.Progress` per frame as it starts, position
``{"frame": k, "frames": n}`` (k 0-based among the frames to process), then ``"done"``.

Resuming (batch runs, :mod:`vision.batch.video`): :meth:`VideoEngine.track` takes the frames still to do
and a loader of the finished frames' masks; the frame before each one to do is read again and its saved
mask carried over (the exemplar prior; SAM 2 is conditioned on it, its memory restarting there).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from vision.engines.contract import Cancelled, Engine, ProgressCallback, ProgressReporter
from vision.engines.video import adapters
from vision.engines.video.config import VideoConfig, VideoError
from vision.engines.video.prompt import VideoPrompt
from vision.engines.video.results import FrameResult, FrameSummary, VideoResult
from vision.videoio import Frame, VideoInfo, check_length, probe, read_frame, read_frames
from vision.weights import WeightsError

DoneMasks = Callable[[int], dict[str, np.ndarray]]  # finished frame index -> concept -> bool [H, W] mask


class VideoEngine(Engine):
    """``VideoEngine(config=None, hub=None)``; ``engine(video, prompt)`` -> :class:`VideoResult`, or
    ``engine.track(info, prompt)`` streaming one :class:`FrameResult` per frame.

    >>> engine = VideoEngine(VideoConfig.from_preset("fast"))
    >>> result = engine("clip.mp4", VideoPrompt(exemplar=Prompt("cup.jpg", mask="cup_mask.png")))
    >>> [f.score for f in result.frames], result.frames[3].masks()
    >>> for frame in engine.track(probe("clip.mp4"), VideoPrompt(points=[(120, 80)], frame=0)): ...
    """

    CONFIG: ClassVar[type[VideoConfig]] = VideoConfig

    def __init__(self, config: VideoConfig | None = None, hub: Any = None):
        super().__init__(config, hub)
        self.image_config = self.config.image_config().validate()
        self._image_engine: Any = None

    @property
    def image_engine(self) -> Any:
        """The image-prompt engine (made on first use: a SAM 2 run from a click never needs it)."""
        if self._image_engine is None:
            self._image_engine = adapters.image_engine(self.image_config, self.hub)
        return self._image_engine

    # ----------------------------------------------------------------------------------------- public
    def __call__(self, video: Any, prompt: VideoPrompt, progress: ProgressCallback | None = None) -> VideoResult:
        """Follow ``prompt`` through ``video`` (a path, or a :class:`~vision.videoio.VideoInfo`)."""
        start = time.perf_counter()
        info = video if isinstance(video, VideoInfo) else probe(video)
        frames = [FrameSummary.of(f) for f in self.track(info, prompt, progress=progress)]
        described = {"path": str(info.path), "frames": info.count, "fps": info.fps, "width": info.width,
                     "height": info.height}
        return VideoResult(frames, self.config, described, self.tiny, {"total": time.perf_counter() - start},
                           list(info.notes))

    def frames_to_process(self, info: VideoInfo, prompt: VideoPrompt) -> list[int]:
        """The source indices of the frames a run processes (checked against the length limit)."""
        start = prompt.frame if self.config.track == "sam2" else 0
        selected = info.selected(self.config.every, self.config.max_frames, start)
        check_length(info, len(selected))
        return selected

    def track(self, info: VideoInfo, prompt: VideoPrompt, todo: Sequence[int] | None = None,
              done: DoneMasks | None = None, progress: ProgressCallback | None = None) -> Iterator[FrameResult]:
        """Stream one :class:`FrameResult` per frame of ``todo`` (default: :meth:`frames_to_process`).

        ``done(index)`` gives the saved masks of a finished frame (a resumed run): the frame before each
        frame of ``todo``, when finished, is decoded again and carried over (see the module docstring).
        """
        prompt.check(info)
        selected = self.frames_to_process(info, prompt)
        todo = selected if todo is None else sorted(todo)
        carried = _carried_frames(selected, set(todo)) if done is not None else set()
        tracker = self._tracker(info, prompt)
        report = ProgressReporter(progress)
        positions = {index: k for k, index in enumerate(todo)}
        for frame in read_frames(info, wanted=sorted(positions.keys() | carried)):
            if frame.index in carried:
                if frame.ok:
                    tracker.observe(frame, done(frame.index))
                continue
            position = positions[frame.index]
            report(position / max(len(todo), 1), f"frame {frame.index} ({position + 1}/{len(todo)})",
                   frame=position, frames=len(todo))
            yield self._frame_result(tracker, info, frame)
        report.done()

    # ---------------------------------------------------------------------------------------- internals
    def _tracker(self, info: VideoInfo, prompt: VideoPrompt) -> Any:
        if self.config.track == "sam2":
            from vision.engines.video.tracks import Sam2Track

            return Sam2Track(self, info, prompt)
        from vision.engines.video.tracks import ExemplarTrack

        return ExemplarTrack(self, info, prompt)

    def _frame_result(self, tracker: Any, info: VideoInfo, frame: Frame) -> FrameResult:
        name = info.frame_name(frame.index)
        if not frame.ok:
            tracker.forget()
            return self._failed(frame, name, frame.error or "cannot be decoded")
        start = time.perf_counter()
        try:
            instances, score, present, prior, timings, notes = tracker.step(frame, name)
        except (Cancelled, WeightsError):  # a stop, or missing weights: no frame can run
            raise
        except Exception as err:  # noqa: BLE001 -- one bad frame is reported and the video goes on
            tracker.forget()
            text = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            where = f"frame {frame.index}" if str(info.path) in text else f"{info.path}: frame {frame.index}"
            return self._failed(frame, name, f"{where}: {text}")
        timings = {**timings, "frame": time.perf_counter() - start}
        return FrameResult(frame.index, name, frame.time, frame.image, instances, score, present, self.config,
                           self.tiny, prior, timings, notes)

    def _failed(self, frame: Frame, name: str, error: str) -> FrameResult:
        return FrameResult(frame.index, name, frame.time, frame.image, [], None, False, self.config, self.tiny,
                           error=error)

    def prompt_frame(self, info: VideoInfo, prompt: VideoPrompt) -> np.ndarray:
        """The prompt's frame, RGB uint8 [H, W, 3]."""
        return read_frame(info, prompt.frame)

    def object_mask(self, info: VideoInfo, prompt: VideoPrompt, image: np.ndarray) -> np.ndarray:
        """The object's mask on the prompt frame from a mask, a click or a box (bool [H, W])."""
        if prompt.kind == "mask":
            return prompt.load_mask(info)
        mask = adapters.click_mask(self.hub, self.image_config.sam_model, image, prompt.points, prompt.point_labels,
                                   prompt.box)
        if not mask.any():
            raise VideoError(f"{info.path}: SAM found no object at the prompt's points/box on frame {prompt.frame}")
        return mask


def _carried_frames(selected: list[int], todo: set[int]) -> set[int]:
    """Finished frames directly before a frame to do (their saved masks are carried over)."""
    return {prev for prev, cur in itertools.pairwise(selected) if cur in todo and prev not in todo}
