"""Image loader: odd formats become RGB uint8, bad files give clear errors; letterbox round trip."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vision import imaging
from vision.imaging import ImageError, load_image


def save(image: Image.Image, path, fmt="PNG", **kw):
    image.save(path, fmt, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_modes_become_rgb_uint8(tmp_path, mode):
    base = Image.fromarray(imaging.sample_image("chelsea")[:40, :60])
    image = base.convert("L").convert("I;16") if mode == "I;16" else base.convert(mode)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    out = load_image(save(image, tmp_path / f"x.{fmt.lower()}", fmt))
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8


def test_alpha_composited_on_white(tmp_path):
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert (load_image(save(clear, tmp_path / "a.png")) == 255).all()


def test_sixteen_bit_scaled_to_full_range(tmp_path):
    arr = np.full((8, 8), 65535, np.uint16)
    out = load_image(save(Image.fromarray(arr), tmp_path / "d.png"))
    assert out.max() == 255


def test_exif_orientation_applied(tmp_path):
    image = Image.new("RGB", (30, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    path = tmp_path / "r.jpg"
    image.save(path, "JPEG", exif=exif)
    assert load_image(path).shape == (30, 10, 3)


def test_zero_byte_file(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "z.png")


def test_text_file_named_png(tmp_path):
    (tmp_path / "t.png").write_text("hello, not an image")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "t.png")


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(imaging.sample_image("coffee")).save(buf, "JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "t.jpg")


def bomb_png(width=100_000, height=100_000) -> bytes:
    """A PNG whose header claims a huge image (the data is a few bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [9_000, 100_000])  # over our limit only; over Pillow's too
def test_decompression_bomb_refused_before_decoding(tmp_path, side):
    (tmp_path / "b.png").write_bytes(bomb_png(side, side))
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(tmp_path / "b.png")


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("arr", [np.zeros((5, 6)), np.zeros((5, 6, 1), np.uint8), np.zeros((5, 6, 4), np.uint8),
                                 np.zeros((5, 6), bool), np.ones((5, 6, 3), np.float32)])
def test_arrays_become_rgb(arr):
    out = load_image(arr)
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8


def test_bad_array_shape():
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((5, 6, 7)))


def test_letterbox_round_trip_and_valid_region():
    image = np.zeros((300, 600, 3), np.uint8)
    image[100:200, 200:400] = 255
    square, box = imaging.letterbox(image, 840)
    assert square.shape == (840, 840, 3)
    assert (box.new_h, box.new_w, box.top, box.left) == (420, 840, 210, 0)
    rows, cols = box.valid_region(60)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (15, 45, 0, 60)
    back = imaging.unletterbox(square[..., 0] > 127, box)
    assert back.shape == (300, 600) and back.dtype == bool
    assert abs(int(back.sum()) - 100 * 200) < 0.05 * 100 * 200


def test_mask_loaded_and_resized(tmp_path):
    mask = np.zeros((10, 20), np.uint8)
    mask[2:5, 4:8] = 255
    path = save(Image.fromarray(mask), tmp_path / "m.png")
    assert imaging.load_mask(path).sum() == 12
    assert imaging.load_mask(path, size=(20, 40)).shape == (20, 40)


def test_label_png_is_indexed_palette(tmp_path):
    labels = np.arange(12, dtype=np.int64).reshape(3, 4)
    image = imaging.label_png(labels)
    image.save(tmp_path / "l.png")
    back = Image.open(tmp_path / "l.png")
    assert back.mode == "P" and np.array_equal(np.asarray(back), labels)
    assert tuple(imaging.palette(2)[1]) == (128, 0, 0)


@pytest.mark.parametrize("name", imaging.SAMPLE_IMAGES)
def test_sample_images_are_real_rgb_photos(name):
    image = imaging.sample_image(name)
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8 and min(image.shape[:2]) >= 256
