"""Video input and output: probe a video file or a folder of frames, stream its frames, write H.264 mp4.

Frames are decoded one at a time (FFmpeg through PyAV, ``av`` on PyPI, whose wheels carry FFmpeg with
libx264) and never held together, so memory does not grow with a video's length.

* :func:`probe` checks a source before any model loads and returns a :class:`VideoInfo`: a video file
  (``.mp4``, ``.webm``, ``.mov``, ``.gif``, ``.mkv``, ``.avi``, ``.m4v``; any container FFmpeg reads) or a
  folder of frame images (sorted by name, digits compared as numbers). Refused with a
  :class:`VideoError` naming the file: a missing, empty (0-byte) or non-video file, a video with no video
  stream or no decodable frame, one over the limits of :mod:`vision.limits` (bytes, pixels per side),
  a folder with no frame image or with frames of different sizes. A file that ends early (truncated)
  keeps its readable frames and says so in ``info.notes``.
* :func:`read_frames` streams the chosen frames (``every``, ``max_frames``, ``start``) as
  :class:`Frame` objects; a frame that cannot be decoded comes as a ``Frame`` with ``image=None`` and
  ``error`` saying why (the run logs it and goes on).
* :class:`VideoWriter` writes RGB frames to an H.264 mp4 (yuv420p, ``+faststart``) that browsers play;
  odd sides are padded by one black pixel (H.264 4:2:0 needs even sides).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Self

import numpy as np
from PIL import Image, UnidentifiedImageError

from vision import limits
from vision.imaging import ImageError, load_image

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".gif", ".mkv", ".avi", ".m4v")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FPS = 24.0  # a folder of frames, or a file that states no rate


class VideoError(ValueError):
    """A video (file or frame folder) that cannot be used; the message names the file and says why."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` found. ``count``: frames that can be read (a file's video packets; a folder's
    frame files); ``declared``: frames the container states (None when it states none); ``fps``: frames
    per second; ``width`` x ``height`` in pixels."""

    path: Path
    kind: str  # "file" or "frames"
    count: int
    fps: float
    width: int
    height: int
    declared: int | None = None
    frame_files: tuple[Path, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def digits(self) -> int:
        """Width of zero-padded frame numbers (at least 5), so names sort in frame order."""
        return max(5, len(str(max(self.count - 1, 0))))

    def frame_name(self, index: int) -> str:
        """The zero-padded name of frame ``index``, e.g. ``"00012"``."""
        return f"{index:0{self.digits}d}"

    def selected(self, every: int = 1, max_frames: int | None = None, start: int = 0) -> list[int]:
        """Indices of the frames a run processes: ``start``, ``start + every``, ... (at most ``max_frames``)."""
        indices = list(range(start, self.count, every))
        return indices if max_frames is None else indices[:max_frames]


@dataclass
class Frame:
    """One frame: its index in the source (0-based), time in seconds, RGB uint8 [H, W, 3] image, or
    ``image=None`` and ``error`` when it could not be decoded."""

    index: int
    time: float
    image: np.ndarray | None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.image is not None


# ----------------------------------------------------------------------------------------------- probe
def probe(source: str | os.PathLike) -> VideoInfo:
    """Check a video file or frame folder and describe it (see the module docstring for what is refused)."""
    path = Path(source)
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    if path.is_dir():
        return _probe_folder(path)
    size = path.stat().st_size
    if size == 0:
        raise VideoError(f"{path}: empty file (0 bytes), not a video")
    if size > limits.MAX_VIDEO_BYTES:
        raise VideoError(f"{path}: {size / 2**30:.1f} GiB exceeds the video size limit of "
                         f"{limits.MAX_VIDEO_BYTES / 2**30:.1f} GiB (VISION_MAX_VIDEO_BYTES)")
    return _probe_file(path)


def _probe_file(path: Path) -> VideoInfo:
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise VideoError(f"{path}: not a video file, or truncated or damaged ({_reason(err)})") from None
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream (not a video, or truncated before its index)")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_side(path, width, height)
        declared = int(stream.frames) or None
        fps = float(stream.average_rate or stream.guessed_rate or 0) or DEFAULT_FPS
        count, stop = 0, None
        try:
            for packet in container.demux(stream):
                count += packet.size > 0
        except av.error.FFmpegError as err:  # a cut file may end inside a packet
            stop = _reason(err)
    if count == 0:
        raise VideoError(f"{path}: no decodable frame (no video data{': ' + stop if stop else ''})")
    first = next(read_frames(VideoInfo(path, "file", count, fps, width, height), max_frames=1), None)
    if first is None or not first.ok:
        why = first.error if first is not None else "the decoder gave no frame"
        raise VideoError(f"{path}: no decodable frame ({why})")
    notes = []
    if declared is not None and declared > count or stop:
        notes.append(f"{path.name}: truncated: {count} of {declared or '?'} frames can be read; the rest are "
                     "missing (the file ends early)")
    return VideoInfo(path, "file", count, fps, width, height, declared, notes=tuple(notes))


def _probe_folder(path: Path) -> VideoInfo:
    files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() in FRAME_EXTENSIONS), key=lambda p: _natural_key(p.name))
    if not files:
        raise VideoError(f"{path}: no frame images ({', '.join(FRAME_EXTENSIONS)}) in this folder")
    first_size, first_file = None, None
    for file in files:
        try:
            with Image.open(file) as image:  # reads the header only
                size = image.size
        except (UnidentifiedImageError, OSError):
            continue  # an unreadable frame fails when it is read, and the run logs it
        if first_size is None:
            first_size, first_file = size, file
            _check_side(file, *size)
        elif size != first_size:
            raise VideoError(f"{file}: {size[0]}x{size[1]} pixels, but {first_file.name} (the first frame) is "
                             f"{first_size[0]}x{first_size[1]}: every frame of a folder must have the same size")
    if first_size is None:
        raise VideoError(f"{path}: no decodable frame (none of its {len(files)} images can be read)")
    return VideoInfo(path, "frames", len(files), DEFAULT_FPS, first_size[0], first_size[1], len(files),
                     tuple(files))


def check_length(info: VideoInfo, selected: int) -> None:
    """Refuse a run of more than :data:`vision.limits.MAX_VIDEO_FRAMES` frames, naming the video."""
    if selected > limits.MAX_VIDEO_FRAMES:
        raise VideoError(f"{info.path}: {selected} frames to process exceeds the limit of {limits.MAX_VIDEO_FRAMES} "
                         "(VISION_MAX_VIDEO_FRAMES); take every N-th frame (--every) or the first N (--max-frames)")


def _check_side(path: Path, width: int, height: int) -> None:
    if max(width, height) > limits.MAX_VIDEO_SIDE or min(width, height) < 1:
        raise VideoError(f"{path}: {width}x{height} pixels per frame is outside the video limit of 1.."
                         f"{limits.MAX_VIDEO_SIDE} pixels per side (VISION_MAX_VIDEO_SIDE); resize it first")


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _reason(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return text.strip().rstrip(".") or type(err).__name__


# ------------------------------------------------------------------------------------------------- read
def read_frames(info: VideoInfo, every: int = 1, max_frames: int | None = None, start: int = 0,
                wanted: Sequence[int] | None = None) -> Iterator[Frame]:
    """Stream the frames ``info.selected(every, max_frames, start)`` in order (or exactly ``wanted``,
    sorted indices). Frames in between are decoded (a video is read forward) but not converted."""
    indices = sorted(wanted) if wanted is not None else info.selected(every, max_frames, start)
    if not indices:
        return
    if info.kind == "frames":
        for index in indices:
            yield _folder_frame(info, index)
        return
    yield from _file_frames(info, indices)


def read_frame(info: VideoInfo, index: int) -> np.ndarray:
    """Frame ``index`` as RGB uint8 [H, W, 3]; :class:`VideoError` naming the file when it cannot be read."""
    if not 0 <= index < info.count:
        raise VideoError(f"{info.path}: frame {index} does not exist (frames 0..{info.count - 1})")
    frame = next(read_frames(info, wanted=[index]), None)
    if frame is None or not frame.ok:
        raise VideoError(f"{info.path}: frame {index} cannot be decoded ({frame.error if frame else 'missing'})")
    return frame.image


def _folder_frame(info: VideoInfo, index: int) -> Frame:
    file = info.frame_files[index]
    try:
        image = load_image(file)
    except ImageError as err:
        return Frame(index, index / info.fps, None, str(err))
    if (image.shape[1], image.shape[0]) != (info.width, info.height):
        return Frame(index, index / info.fps, None, f"{file}: {image.shape[1]}x{image.shape[0]} pixels, not the "
                     f"{info.width}x{info.height} of the first frame")
    return Frame(index, index / info.fps, image)


def _file_frames(info: VideoInfo, indices: list[int]) -> Iterator[Frame]:
    """Decode packet by packet; a packet that fails to decode counts as one (failed) frame."""
    import av

    todo = iter(indices)
    want = next(todo)
    index = 0
    with av.open(str(info.path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for packet in _packets(container, stream):
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as err:
                decoded = [f"{info.path}: frame {index} cannot be decoded ({_reason(err)})"]
            for item in decoded:
                if index == want:
                    yield _to_frame(info, index, item)
                    want = next(todo, None)
                    if want is None:
                        return
                index += 1
    for missing in [want, *todo]:  # the file ended before these frames
        yield Frame(missing, missing / info.fps, None, f"{info.path}: frame {missing} is missing (the file ends early)")


def _packets(container, stream) -> Iterator:
    import av

    try:
        yield from container.demux(stream)
    except av.error.FFmpegError:
        return  # a truncated file: what was read is used


def _to_frame(info: VideoInfo, index: int, item) -> Frame:
    if isinstance(item, str):
        return Frame(index, index / info.fps, None, item)
    time = float(item.time) if item.time is not None else index / info.fps
    image = item.to_ndarray(format="rgb24")
    rotation = int(getattr(item, "rotation", 0) or 0) % 360
    if rotation:  # phone videos: the display matrix turns the picture (counter-clockwise degrees)
        image = np.ascontiguousarray(np.rot90(image, rotation // 90))
    return Frame(index, time, image)


# ------------------------------------------------------------------------------------------------ write
class VideoWriter:
    """An H.264 mp4 that browsers play: ``with VideoWriter(path, fps) as out: out.write(rgb)``.

    RGB uint8 [H, W, 3] frames of one size; yuv420p at ``crf`` (18: visually lossless); ``lossless``
    writes libx264rgb at crf 0 instead (bit-exact RGB, for tests; browsers do not play it). The moov
    index goes first (``+faststart``) so a browser can start before the whole file arrives.
    """

    def __init__(self, path: str | os.PathLike, fps: float, crf: int = 18, lossless: bool = False):
        import av

        self.path = Path(path)
        self.container = av.open(str(self.path), "w", format="mp4", options={"movflags": "+faststart"})
        rate = Fraction(fps).limit_denominator(1001)
        codec, options = ("libx264rgb", {"crf": "0"}) if lossless else ("libx264", {"crf": str(crf)})
        self.stream = self.container.add_stream(codec, rate=rate, options={**options, "preset": "veryfast"})
        self.stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        self.lossless = lossless
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        import av

        if not self.lossless and (image.shape[0] % 2 or image.shape[1] % 2):
            image = np.pad(image, ((0, image.shape[0] % 2), (0, image.shape[1] % 2), (0, 0)))
        if self.size is None:
            self.size = image.shape[:2]
            self.stream.height, self.stream.width = self.size
        elif image.shape[:2] != self.size:
            raise VideoError(f"{self.path}: frame {self.frames} is {image.shape[1]}x{image.shape[0]}, not "
                             f"{self.size[1]}x{self.size[0]} like the first")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image, dtype=np.uint8), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self.container is None:
            return
        try:
            if self.frames:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()
            self.container = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_video(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = DEFAULT_FPS,
                lossless: bool = False) -> Path:
    """Write RGB uint8 frames to an H.264 mp4 (see :class:`VideoWriter`); returns the path."""
    with VideoWriter(path, fps, lossless=lossless) as out:
        for frame in frames:
            out.write(frame)
    return Path(path)
