"""Video input and output (vision/videoio.py): every container the issue names, frame folders, the
frame selection, the H.264 writer, and every bad input with its message naming the file. No models."""

import av
import numpy as np
import pytest
from PIL import Image

from vision import limits, videoio
from vision.videoio import VideoError


def frames(n=6, h=48, w=64):
    """Frames whose pixel value encodes their index (20 * k), so decoded frames can be told apart."""
    return [np.full((h, w, 3), 20 * k, np.uint8) for k in range(n)]


def encode(path, images, codec, pix_fmt, rate=10):
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = images[0].shape[1], images[0].shape[0], pix_fmt
        for image in images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("name,codec,pix_fmt", [("clip.mp4", None, None), ("clip.webm", "libvpx-vp9", "yuv420p"),
                                                ("clip.mov", "png", "rgb24"), ("clip.gif", "pil", None)])
def test_every_container_streams_its_frames(tmp_path, name, codec, pix_fmt):
    path = tmp_path / name
    if codec is None:
        videoio.write_video(frames(), path, fps=10)
    elif codec == "pil":  # an animated GIF as most tools write one
        first, *rest = [Image.fromarray(f) for f in frames()]
        first.save(path, save_all=True, append_images=rest, duration=100, loop=0)
    else:
        encode(path, frames(), codec, pix_fmt)
    info = videoio.probe(path)
    assert (info.kind, info.count, info.width, info.height) == ("file", 6, 64, 48)
    got = list(videoio.read_frames(info, every=2))
    assert [f.index for f in got] == [0, 2, 4]
    for frame in got:  # the frame's own content (lossy codecs: within a few levels)
        assert frame.ok and frame.image.shape == (48, 64, 3)
        assert abs(float(frame.image.mean()) - 20 * frame.index) < 6
    assert [f.index for f in videoio.read_frames(info, every=2, max_frames=2)] == [0, 2]
    assert [f.index for f in videoio.read_frames(info, wanted=[5])] == [5]


def test_frame_folder_in_natural_order_and_names(tmp_path):
    for k, image in enumerate(frames(12)):
        Image.fromarray(image).save(tmp_path / f"frame{k}.png")  # frame10 sorts after frame9
    info = videoio.probe(tmp_path)
    assert info.kind == "frames" and info.count == 12
    assert [p.name for p in info.frame_files][9:] == ["frame9.png", "frame10.png", "frame11.png"]
    assert [int(f.image[0, 0, 0]) for f in videoio.read_frames(info, start=9)] == [180, 200, 220]
    assert info.frame_name(7) == "00007" and info.selected(every=5) == [0, 5, 10]


def test_h264_writer_plays_in_browsers(tmp_path):
    path = videoio.write_video(frames(5, h=47, w=63), tmp_path / "out.mp4", fps=8)  # odd sides are padded
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (64, 48)
        assert float(stream.average_rate) == 8
    head = path.read_bytes()[:4096]
    assert head.find(b"moov") < head.find(b"mdat") or b"mdat" not in head  # +faststart: the index comes first
    lossless = videoio.write_video(frames(3), tmp_path / "exact.mp4", fps=8, lossless=True)
    decoded = [f.image for f in videoio.read_frames(videoio.probe(lossless))]
    assert all(np.array_equal(a, b) for a, b in zip(decoded, frames(3), strict=True))


# ------------------------------------------------------------------------------------------- bad input
def test_not_a_video_and_empty_file_name_the_file(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoError, match=r"notes\.mp4: not a video file"):
        videoio.probe(text)
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match=r"empty\.webm: empty file \(0 bytes\)"):
        videoio.probe(empty)
    with pytest.raises(VideoError, match=r"missing\.mp4: no such file"):
        videoio.probe(tmp_path / "missing.mp4")


def test_truncated_video(tmp_path):
    big = [np.random.default_rng(k).integers(0, 255, (96, 128, 3), dtype=np.uint8) for k in range(12)]
    whole = videoio.write_video(big, tmp_path / "whole.mp4", fps=10)  # +faststart: the index is first
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    info = videoio.probe(cut)  # the readable frames are kept, and the note says the rest is missing
    assert 0 < info.count < 12 and info.declared == 12
    assert "cut.mp4: truncated" in info.notes[0]
    headless = tmp_path / "headless.mp4"
    headless.write_bytes(data[:200])  # not even the index survived
    with pytest.raises(VideoError, match=r"headless\.mp4: (not a video file|no video stream|no decodable frame)"):
        videoio.probe(headless)


def test_no_decodable_frame(tmp_path):
    path = encode(tmp_path / "blank.mov", frames(3), "png", "rgb24")
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    data = bytearray(path.read_bytes())
    for pos, size in packets:  # every picture's bytes zeroed: the container is fine, no frame decodes
        data[pos + 8: pos + size - 4] = bytes(size - 12)
    path.write_bytes(bytes(data))
    with pytest.raises(VideoError, match=r"blank\.mov: no decodable frame"):
        videoio.probe(path)


def test_a_frame_failing_mid_video_is_reported_and_the_rest_read(tmp_path):
    path = encode(tmp_path / "bad3.mov", frames(6), "png", "rgb24")
    with av.open(str(path)) as container:
        pos, size = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size][3]
    data = bytearray(path.read_bytes())
    data[pos + 8: pos + size - 4] = bytes(size - 12)
    path.write_bytes(bytes(data))
    got = list(videoio.read_frames(videoio.probe(path)))
    assert [f.ok for f in got] == [True, True, True, False, True, True]
    assert "bad3.mov: frame 3 cannot be decoded" in got[3].error and int(got[4].image[0, 0, 0]) == 80
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, image in enumerate(frames(4)):
        Image.fromarray(image).save(folder / f"{k:03d}.png")
    (folder / "002.png").write_bytes(b"\x89PNG broken")
    got = list(videoio.read_frames(videoio.probe(folder)))
    assert [f.ok for f in got] == [True, True, False, True] and "002.png" in got[2].error


def test_frame_folder_problems_name_the_file(tmp_path):
    with pytest.raises(VideoError, match="no frame images"):
        videoio.probe(tmp_path)
    Image.fromarray(frames(1)[0]).save(tmp_path / "000.png")
    Image.fromarray(frames(1, h=40)[0]).save(tmp_path / "001.png")
    with pytest.raises(VideoError, match=r"001\.png: 64x40 pixels, but 000\.png \(the first frame\) is 64x48"):
        videoio.probe(tmp_path)


def test_limits_name_the_file_and_the_setting(tmp_path, monkeypatch):
    path = videoio.write_video(frames(4), tmp_path / "clip.mp4", fps=10)
    monkeypatch.setattr(limits, "MAX_VIDEO_SIDE", 32)
    with pytest.raises(VideoError, match=r"clip\.mp4: 64x48 pixels per frame .*\(VISION_MAX_VIDEO_SIDE\)"):
        videoio.probe(path)
    monkeypatch.setattr(limits, "MAX_VIDEO_SIDE", 4096)
    monkeypatch.setattr(limits, "MAX_VIDEO_BYTES", 100)
    with pytest.raises(VideoError, match=r"clip\.mp4: .* exceeds the video size limit"):
        videoio.probe(path)
    monkeypatch.setattr(limits, "MAX_VIDEO_BYTES", 2**30)
    monkeypatch.setattr(limits, "MAX_VIDEO_FRAMES", 3)
    info = videoio.probe(path)
    with pytest.raises(VideoError, match=r"clip\.mp4: 4 frames to process exceeds the limit of 3 .*--every"):
        videoio.check_length(info, len(info.selected()))
    videoio.check_length(info, len(info.selected(every=2)))  # --every brings it under the limit
