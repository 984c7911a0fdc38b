"""The shared text stamp (``imaging.stamp_text``: the tiny-mode notice on overlays) and ``imaging.heatmap``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vision import imaging


def _ink_columns(image: np.ndarray, rows: int) -> np.ndarray:
    strip = image[:rows].astype(int)
    return np.flatnonzero(((strip[..., 0] > 150) & (strip[..., 1] > 150) & (strip[..., 2] < 100)).any(axis=0))


@pytest.mark.parametrize("height, width", [(90, 120), (900, 1200)])
def test_the_whole_stamp_fits_the_image_width(height, width):
    layout = imaging.fit_text(imaging.TINY_STAMP, width, height)
    assert " ".join(layout.lines) == imaging.TINY_STAMP  # every word, in order, none dropped
    for line in layout.lines:  # measured as cv2 draws them
        drawn_width = cv2.getTextSize(line, imaging.STAMP_FONT, layout.scale, layout.thickness)[0][0]
        assert drawn_width <= width - 2 * layout.margin
    assert layout.height <= height / 2
    assert layout.scale >= imaging.STAMP_MIN_SCALE  # legible: wrapped, not shrunk to dots
    image = np.full((height, width, 3), 128, np.uint8)
    stamped = imaging.stamp_text(image, imaging.TINY_STAMP)
    columns = _ink_columns(stamped, layout.height)
    assert columns.size and columns.min() >= layout.margin - 1 and columns.max() <= width - layout.margin
    np.testing.assert_array_equal(stamped[layout.height + 1:], image[layout.height + 1:])  # the rest untouched
    assert (stamped[:layout.height] == 0).all(axis=2).mean() > 0.5  # a dark strip behind the letters


def test_a_large_image_gets_one_line_and_a_small_one_wraps():
    assert len(imaging.fit_text(imaging.TINY_STAMP, 1200, 900).lines) == 1
    assert len(imaging.fit_text(imaging.TINY_STAMP, 120, 90).lines) > 1


def test_a_word_wider_than_the_image_shrinks_the_font_until_it_fits():
    layout = imaging.fit_text("supercalifragilisticexpialidocious", 60, 40)
    assert layout.widths[0] <= 60 - 2 * layout.margin and layout.scale < imaging.STAMP_MIN_SCALE


def test_heatmap_uses_one_fixed_scale_and_shrinks_to_max_side():
    values = np.tile(np.linspace(0, 1, 51, dtype=np.float32), (40, 1))  # column 25 holds 0.5
    colours = imaging.heatmap(values)
    assert colours.shape == (40, 51, 3) and colours.dtype == np.uint8
    assert colours[0, 0, 2] > 100 and colours[0, 0, 0] < 50  # 0 is blue
    assert colours[0, -1, 0] > 100 and colours[0, -1, 2] < 50  # 1 is red
    np.testing.assert_array_equal(imaging.heatmap(values * 0.5)[:, -1], colours[:, 25])  # never renormalised
    photo = np.zeros((40, 51, 3), np.uint8)
    assert imaging.heatmap(values, photo, max_side=17).shape == (13, 17, 3)
