"""One image loader everywhere (#20.2): 16-bit, float TIFF, palette, LA and EXIF-rotated files become the
same RGB image in the library, the app (``/segment``, IPSeg's prompt and targets) and the CLI.

The app used to let Gradio decode an upload first (``convert("RGB")``): a 16-bit PNG of ``camera()`` became
all white and its mask covered 261,452 of 262,144 px, while the CLI gave the right mask. Each file here has
its expected RGB computed on its own (not by :func:`vision.imaging.load_image`); outside SAM's mask the
overlay an app or CLI run returns *is* the image it loaded, so comparing those pixels checks the loader
each path used (tiny models: the masks are noise, the loaded image is not).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from app_harness import editor, gallery, png
from gradio_client import handle_file
from PIL import Image

from vision.imaging import TINY_STAMP, fit_text, load_image, overlay_mask, sample_image

MODES = ("i16", "i16_full", "float_tiff", "palette", "la", "exif")


def _grey() -> np.ndarray:
    """A 96 x 128 grey photo (uint8)."""
    return np.asarray(Image.fromarray(sample_image("camera")).convert("L").resize((128, 96)))


def _make(mode: str, folder: Path) -> tuple[Path, np.ndarray]:
    """(a file in ``mode``, the RGB uint8 image it must load as)."""
    grey = _grey()
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if mode == "i16":  # skimage's camera() saved as 16-bit: values 0..255 in a 16-bit PNG (the file)
        path = folder / "camera16.png"
        Image.fromarray(grey.astype(np.uint16)).save(path)
        return path, rgb
    if mode == "i16_full":  # a 16-bit PNG using the full 0..65535 range
        path = folder / "full16.png"
        Image.fromarray(grey.astype(np.uint16) * 257).save(path)
        return path, rgb
    if mode == "float_tiff":  # 32-bit float in 0..1
        path = folder / "float.tiff"
        Image.fromarray(grey.astype(np.float32) / 255.0, mode="F").save(path)
        return path, rgb
    if mode == "palette":
        colour = np.asarray(Image.fromarray(sample_image("chelsea")).resize((128, 96)))
        image = Image.fromarray(colour).quantize(16)
        path = folder / "palette.png"
        image.save(path)
        return path, np.asarray(image.convert("RGB"))
    if mode == "la":  # grey + alpha: transparent pixels are composited on white
        alpha = np.where(np.arange(128)[None, :] < 64, 255, 0).astype(np.uint8).repeat(96, axis=0)
        path = folder / "grey_alpha.png"
        Image.fromarray(np.stack([grey, alpha], axis=2), mode="LA").save(path)
        out = rgb.copy()
        out[alpha == 0] = 255
        return path, out
    if mode == "exif":  # a JPEG stored 128 wide, 96 high; EXIF orientation 6: shown turned 90 degrees clockwise
        path = folder / "rotated.jpg"
        image = Image.fromarray(rgb)
        exif = image.getexif()
        exif[0x0112] = 6
        image.save(path, quality=95, exif=exif)
        with Image.open(path) as stored:
            return path, np.ascontiguousarray(np.rot90(np.asarray(stored.convert("RGB")), k=-1))
    raise ValueError(mode)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    folder = tmp_path_factory.mktemp("modes")
    return {mode: _make(mode, folder) for mode in MODES}


def _below_banner(shape: tuple[int, ...]) -> np.ndarray:
    """Pixels below the tiny-mode notice stamped across the top of every tiny-mode picture."""
    rows = fit_text(TINY_STAMP, shape[1], shape[0]).height + 1  # the strip's last row included
    keep = np.zeros(shape[:2], bool)
    keep[rows:] = True
    return keep


def _box(expected: np.ndarray) -> tuple[int, int, int, int]:
    """A box prompt in the lower right quarter (away from the notice at the top)."""
    h, w = expected.shape[:2]
    return w // 2, h // 2, w - 8, h - 8


def _outside_mask_is(overlay: np.ndarray, mask: np.ndarray, expected: np.ndarray) -> None:
    """Outside SAM's mask, the notice and the box drawn (its frame, 3 px either side) the overlay is the image."""
    assert overlay.shape[:2] == expected.shape[:2], f"shape {overlay.shape} instead of {expected.shape}"
    x0, y0, x1, y1 = _box(expected)
    outside = ~mask & _below_banner(mask.shape)
    outside[y0 - 3:y1 + 4, x0 - 3:x1 + 4] = False
    assert outside.sum() > 50, "the test needs pixels outside SAM's mask"
    assert np.array_equal(overlay[..., :3][outside], expected[outside]), "the image loaded is not the expected one"


@pytest.mark.parametrize("mode", MODES)
def test_library_loads_each_mode_as_expected(files, mode):
    path, expected = files[mode]
    assert np.array_equal(load_image(path), expected)


@pytest.mark.parametrize("mode", MODES)
def test_app_segment_loads_each_mode_as_the_library(client, files, mode):
    path, expected = files[mode]
    box = ", ".join(str(v) for v in _box(expected))
    overlay, mask_file, *_ = client.predict(handle_file(str(path)), "", box, "sam_t", "1 mask", api_name="/segment")
    _outside_mask_is(png(overlay), png(mask_file) > 0, expected)


@pytest.mark.parametrize("mode", MODES)
def test_cli_segment_loads_each_mode_as_the_library(tiny_hub, one_torch_thread, files, mode, tmp_path):
    from vision.cli import main

    path, expected = files[mode]
    assert main(["segment", "--input", str(path), "--box", ",".join(str(v) for v in _box(expected)),
                 "--single-mask", "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    row = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[0])
    outputs = {suffix: tmp_path / "out" / rel for suffix, rel in row["outputs"].items()}
    _outside_mask_is(png(outputs["overlay.png"]), png(outputs["mask.png"]) > 0, expected)


@pytest.mark.parametrize("mode", MODES)
def test_app_ipseg_loads_prompt_and_target_as_the_library(client, files, mode):
    """The prompt (through the click view: SAM's mask of a click, drawn on the prompt) and a target (the
    base image of the masks shown) of the IPSeg tab."""
    path, expected = files[mode]
    h, w = expected.shape[:2]
    view, _note = client.predict(editor(str(path)), f"{w // 2}, {h // 2}, 1", "sam_t", "default", None,
                                 api_name="/ipseg_prompt_mask")
    view = png(view)[..., :3]
    assert view.shape[:2] == expected.shape[:2]
    # each pixel is the image, or the image tinted by SAM's mask (the Segment engine's overlay colour)
    tinted = overlay_mask(expected, np.ones(expected.shape[:2], bool), colour=(30, 144, 255))
    if mode == "exif":  # the editor re-encodes a JPEG (keeping its EXIF): the same picture, not the same bytes
        error = np.minimum(np.abs(view.astype(int) - expected), np.abs(view.astype(int) - tinted)).mean(axis=2)
        assert error[_below_banner(view.shape)].mean() < 4
        return
    explained = (np.all(view == expected, axis=2) | np.all(view == tinted, axis=2))[_below_banner(view.shape)]
    assert explained.mean() > 0.97, f"{1 - explained.mean():.0%} of the prompt's pixels are not the image's"
    annotated, *_ = client.predict(editor(str(path)), gallery(str(path)), "mask", True, 1, 0.0, "sam_t",
                                   api_name="/ipseg")
    below = _below_banner(expected.shape)
    assert np.array_equal(png(annotated["image"])[..., :3][below], expected[below])
