"""The Segment tab: the ``/segment`` API on the session's tiny server (clicks, a box, the everything mode), two
box-corner clicks in Chromium on that server, and a click on a coin in Chromium on a server with the real
``sam_t`` weights (the shown mask is that coin)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from app_harness import click_image_pixel, open_tab, png, shot
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from test_segment import coin_regions, deepest_point, iou

AUTO = "auto (3 masks for a lone click)"


def _segment(client, image, points="", box="", sam="sam_t", masks=AUTO, *everything):
    return client.predict(handle_file(image), points, box, sam, masks, *everything, api_name="/segment")


def test_segment_api_a_click_gives_three_masks_and_a_mask_png(client, photos):
    overlay, mask_file, downloads, scores, summary = _segment(client, photos["chelsea"], "80, 60, 1")
    h, w = png(photos["chelsea"]).shape[:2]
    assert png(overlay).shape[:2] == (h, w)
    mask = png(mask_file)
    assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
    rows = scores["data"]
    assert [r[0] for r in rows] == [1, 2, 3] and rows[0][1] >= rows[1][1] >= rows[2][1]  # best first
    assert rows[0][2] == int((mask > 0).sum())  # the PNG is the best mask
    assert sorted(p.rsplit(".", 2)[-2] for p in downloads) == ["overlay", "rle"]
    assert "TINY MODE" in summary and "`sam_t`" in summary and "1 click(s)" in summary
    assert "How to read this" in summary


def test_segment_api_points_and_a_box_give_one_mask(client, photos):
    *_, scores, summary = _segment(client, photos["chelsea"], "80, 60; 10, 10, 0", "20, 20, 140, 100", "sam_b")
    assert len(scores["data"]) == 1
    assert "2 click(s), a box" in summary and "`sam_b`" in summary


def test_segment_api_everything_mode_outputs_agree(client, photos):
    """A 3x3 grid with the thresholds at 0 (random weights must still give masks): the labels PNG, the
    union PNG, the RLE JSON and the table describe the same masks."""
    from pycocotools import mask as coco_mask

    overlay, mask_file, downloads, scores, summary = _segment(client, photos["chelsea"], "", "", "sam_t", AUTO,
                                                              "everything", 3, 0.0, 0.0)
    h, w = png(photos["chelsea"]).shape[:2]
    files = {p.rsplit(".", 2)[-2]: p for p in downloads}
    assert sorted(files) == ["labels", "overlay", "rle"]
    assert png(overlay).shape[:2] == (h, w)
    labels = np.asarray(Image.open(files["labels"]))
    union = png(mask_file)
    assert labels.shape == union.shape == (h, w) and np.array_equal(labels > 0, union == 255)
    rle = json.loads(Path(files["rle"]).read_text())
    rows = scores["data"]
    assert rows and len(rle["masks"]) == len(rows) and rle["mode"] == "everything" and rle["size"] == [h, w]
    masks = [coco_mask.decode({"size": m["segmentation"]["size"], "counts": m["segmentation"]["counts"].encode()})
             for m in rle["masks"]]
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    assert [r[2] for r in rows] == [int(m.sum()) for m in masks] == sorted((r[2] for r in rows), reverse=True)
    assert [r[1] for r in rows] == [round(m["score"], 4) for m in rle["masks"]]
    assert all(r[3] is not None and 0 <= r[3] <= 1 for r in rows)  # stability
    assert np.array_equal(np.any(masks, axis=0), union == 255) and labels.max() == len(rows)
    assert f"{len(rows)} mask(s)" in summary and "3x3 points" in summary and "TINY MODE" in summary


def test_segment_api_everything_mode_refuses_clicks(client, photos):
    with pytest.raises(AppError, match="the everything mode takes no clicks"):
        _segment(client, photos["chelsea"], "80, 60, 1", "", "sam_t", AUTO, "everything", 3, 0.0, 0.0)


@pytest.mark.parametrize("points, box, message", [
    ("900, 10, 1", "", "outside the"),
    ("", "", "give at least one point or a box"),
    ("1, 2, 3, 4", "", "points: '1, 2, 3, 4' has 4 numbers"),
    ("", "10, 10, 10, 50", "zero area"),
])
def test_segment_api_bad_prompts_are_messages_naming_the_field(client, photos, points, box, message):
    with pytest.raises(AppError, match=message):
        _segment(client, photos["chelsea"], points, box)


def test_segment_api_a_bad_image_names_the_uploaded_file(client, tmp_path):
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"this is not a PNG")
    with pytest.raises(AppError) as caught:
        _segment(client, str(bad), "1, 1")
    message = str(caught.value)
    assert "image: holiday.png: not an image file" in message and "Could not preprocess" not in message
    assert str(tmp_path) not in message and "gradio" not in message.lower()


def test_segment_api_outputs_are_named(client):
    returns = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/segment"]["returns"]
    labels = [r["label"] for r in returns]
    assert not [label for label in labels if label.startswith("value_")], labels


def test_browser_the_first_box_corner_click_shows_the_corner(page, server, photos):
    """#20.7: after the first of two box-corner clicks nothing showed. The overlay now shows the image with
    that corner marked (green) and the summary asks for the opposite corner; the second click makes the box
    and runs SAM."""
    from playwright.sync_api import expect

    open_tab(page, "Segment")
    page.locator("#segment-image input[type=file]").set_input_files(photos["chelsea"])  # 160 x 106
    shown = "#segment-image img"
    page.wait_for_function("s => {const e = document.querySelector(s); return e && e.naturalWidth > 0}", arg=shown)
    page.locator("#segment-kind label", has_text="box corner").click()
    click_image_pixel(page, shown, 40, 30)
    summary = page.locator("#segment-summary")
    expect(summary).to_contain_text("click the opposite corner")
    x, y = (int(v) for v in re.search(r"first corner at (\d+), (\d+)", summary.inner_text()).groups())
    assert abs(x - 40) <= 2 and abs(y - 30) <= 2
    src = page.locator("#segment-overlay img").first.get_attribute("src")
    response = page.request.get(src if src.startswith("http") else server.url.rstrip("/") + src)
    assert response.ok
    view, plain = (np.asarray(Image.open(f).convert("RGB")) for f in (io.BytesIO(response.body()), photos["chelsea"]))
    assert view.shape == plain.shape and tuple(view[y, x]) == (0, 255, 0) != tuple(plain[y, x])
    expect(page.locator("#segment-box textarea")).to_have_value("")
    click_image_pixel(page, shown, 120, 90)
    expect(summary).to_contain_text("a box")
    box = [int(v) for v in page.locator("#segment-box textarea").input_value().split(",")]
    assert box[:2] == [x, y] and abs(box[2] - 121) <= 2 and abs(box[3] - 91) <= 2


# ------------------------------------------------------------------------------ real weights, browser
def test_browser_a_click_on_a_coin_shows_that_coin_with_real_sam_t(real_page, real_server, tmp_path):
    from playwright.sync_api import expect
    from skimage import data

    page = real_page
    regions = coin_regions()
    coin = regions[2]
    x, y = deepest_point(coin)
    coins_png = tmp_path / "coins.png"
    Image.fromarray(data.coins()).save(coins_png)
    open_tab(page, "Segment")
    page.locator("#segment-image input[type=file]").set_input_files(str(coins_png))
    shown = "#segment-image img"
    expect(page.locator(shown).first).to_be_visible()
    page.wait_for_function("s => {const e = document.querySelector(s); return e && e.naturalWidth > 0}", arg=shown)
    click_image_pixel(page, shown, x, y)
    expect(page.locator("#segment-summary")).to_contain_text("Best mask")
    summary = page.locator("#segment-summary").inner_text()
    assert "TINY" not in summary and "sam_t" in summary
    clicked = [float(v) for v in page.locator("#segment-points textarea").input_value().split(",")]
    assert abs(clicked[0] - x) <= 2 and abs(clicked[1] - y) <= 2 and clicked[2] == 1
    href = page.locator("#segment-mask a").first.get_attribute("href")
    response = page.request.get(href if href.startswith("http") else real_server.url.rstrip("/") + href)
    assert response.ok
    mask = np.asarray(Image.open(io.BytesIO(response.body()))) > 0
    assert mask.shape == coin.shape
    assert iou(mask, coin) > 0.8, f"IoU {iou(mask, coin):.3f} of the shown mask with the clicked coin"
    shot(page, tmp_path, "segment_coin")
