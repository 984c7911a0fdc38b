"""The IPSeg tab: the ``/ipseg`` API and the page, on the session's tiny server (``conftest.server``).

- API: painted, boxed and automatic prompt regions, k-shot prompts, several concepts, heatmaps, the
  features / preset / SAM choices and the mode that ran; progress that moves; named outputs.
- Bad files: a bad prompt (0-byte, truncated, text named .png, a 20000x20000 header) is a message naming
  the uploaded file; one bad target is listed by name while the good ones are answered.
- Click-to-mask: clicks on the prompt make its mask with SAM (real sam_t: a click on the coffee cup masks the
  cup in the page's click view, and a run over the API uses that mask to find the cup in a flipped photo).
- Browser: the Examples row with a box runs as is; a fresh load and an Examples row raise no page error.
"""

from __future__ import annotations

import re
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from app_harness import click, click_image_pixel, editor, gallery, png, shot
from gradio_client.exceptions import AppError
from PIL import Image


def _ipseg(client, prompt, targets, *, fast=True, instances=1, sam="sam_b", features="preset", preset="default",
           box="", shots=(), concepts=(), name="concept", kshot="mean", clicks="", submit=False):
    args = (prompt, gallery(*targets), "mask", fast, instances, 0.0, sam, features, preset, box,
            gallery(*shots) if shots else None, gallery(*concepts) if concepts else None, name, kshot, clicks)
    if submit:
        return client.submit(*args, api_name="/ipseg")
    return client.predict(*args, api_name="/ipseg")


def test_ipseg_api_painted_prompt_gives_masks_for_every_target(client, photos, tmp_path):
    prompt = photos["chelsea"]
    h, w = png(prompt).shape[:2]
    layer = np.zeros((h, w, 4), np.uint8)
    layer[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = (255, 48, 48, 255)  # the painted concept
    Image.fromarray(layer).save(tmp_path / "layer.png")
    targets = [photos["chelsea"], photos["coffee"]]
    annotated, overlays, heatmaps, files, scores, summary = _ipseg(
        client, editor(prompt, str(tmp_path / "layer.png")), targets, instances=2)
    assert png(annotated["image"]).shape[:2] == (h, w)
    assert annotated["annotations"] and all(Path(a["image"]).is_file() for a in annotated["annotations"])
    assert len(overlays) == 2 and "present" in overlays[0]["caption"]
    assert len(heatmaps) == 2 and "similarity" in heatmaps[0]["caption"]
    for target, overlay, heatmap in zip(targets, overlays, heatmaps):
        assert png(overlay["image"]).shape[:2] == png(heatmap["image"]).shape[:2] == png(target).shape[:2]
        assert not np.array_equal(png(overlay["image"]), png(heatmap["image"]))
    masks = [f for f in files if f.endswith("_mask.png")]
    assert len(masks) == 2 and len([f for f in files if f.endswith("_heatmap.png")]) == 2
    for target, mask in zip(targets, sorted(masks)):
        m = png(mask)
        assert m.shape == png(target).shape[:2] and set(np.unique(m)) <= {0, 255}
    assert {row[0] for row in scores["data"]} == {1, 2}
    assert "from **mask**" in summary and "dinov2-only" in summary and "TINY MODE" in summary
    assert "reference mode **off**" in summary and "preset **default**" in summary
    assert "How to read this" in summary


def test_ipseg_unpainted_prompt_uses_the_automatic_region(client, photos):
    *_, summary = _ipseg(client, editor(photos["coffee"]), [photos["coffee"]])
    assert "from **auto-pca**" in summary


def test_ipseg_box_kshot_and_several_concepts_in_one_run(client, photos):
    _, overlays, heatmaps, _, scores, summary = _ipseg(
        client, editor(photos["chelsea"]), [photos["astronaut"]], box="20, 20, 120, 90",
        shots=[photos["coffee"]], concepts=[photos["astronaut"]], name="cat", kshot="max")
    other = Path(photos["astronaut"]).stem  # the other concept is named after its file
    assert "from **box**" in summary and f"2 concept(s) (cat, {other})" in summary
    assert "2 prompt image(s) for cat (k-shot max)" in summary
    assert [row[2] for row in scores["data"]] == ["cat", other]
    assert len(heatmaps) == 2  # one per concept of the target
    assert [h["caption"].split(" similarity")[0].split(": ")[1] for h in heatmaps] == ["cat", other]
    assert "cat" in overlays[0]["caption"] and other in overlays[0]["caption"]


@pytest.mark.parametrize("features, preset, sam, mode, reference, sam_used", [
    ("sam", "default", "sam_t", "sam-embedding", "off", "sam_t"),
    ("dino", "paper", "preset", "dinov2-only", "on", "sam_h"),
])
def test_ipseg_features_preset_and_sam_choices_show_what_ran(client, photos, features, preset, sam, mode,
                                                              reference, sam_used):
    *_, summary = _ipseg(client, editor(photos["coffee"]), [photos["coffee"]], fast=False, features=features,
                         preset=preset, sam=sam)
    assert f"preset **{preset}**" in summary and f"features **{mode}**" in summary
    assert f"reference mode **{reference}**" in summary and f"SAM `{sam_used}`" in summary


def test_ipseg_prompt_clicks_need_a_click_inside_the_prompt_and_no_other_region(client, photos):
    coffee = editor(photos["coffee"])  # 160 x 107 px
    with pytest.raises(AppError, match="a click on the prompt image"):
        client.predict(coffee, "", "sam_t", "default", api_name="/ipseg_prompt_mask")
    with pytest.raises(AppError, match=r"points\[0\]: \(900, 5\) is outside the 160x107 image"):
        client.predict(coffee, "900, 5, 1", "sam_t", "default", api_name="/ipseg_prompt_mask")
    with pytest.raises(AppError, match="prompt clicks: 'here' is not a list of numbers"):
        _ipseg(client, coffee, [photos["coffee"]], clicks="here")
    with pytest.raises(AppError, match="give one of a painted region, a box or clicks, not a box and clicks"):
        _ipseg(client, coffee, [photos["coffee"]], box="10, 10, 50, 50", clicks="20, 20, 1")


def test_clicks_made_on_another_image_than_the_prompt_are_refused():
    """The page's click view may show an older prompt than the editor (a new upload or Examples row):
    its clicks are refused with the way out; without a view (the API) the clicks are the caller's."""
    from vision.common import content_key
    from vision.ui.ipseg_prompt import check_clicks_on

    shown, prompt = np.zeros((4, 6, 3), np.uint8), np.ones((4, 6, 3), np.uint8)
    check_clicks_on(prompt, content_key(prompt), "prompt clicks")
    check_clicks_on(prompt, None, "prompt clicks")
    with pytest.raises(ValueError, match="prompt clicks: the prompt image changed since it was shown for "
                                         "clicking; press 'Show the prompt here'"):
        check_clicks_on(prompt, content_key(shown), "prompt clicks")


def test_ipseg_progress_moves_through_the_stages(client, photos):
    job = _ipseg(client, editor(photos["coffee"]), [photos["coffee"]], submit=True)
    seen = set()
    while not job.done():
        status = job.status()
        seen |= {(round(p.progress, 4), p.desc) for p in status.progress_data or [] if p.progress is not None}
        time.sleep(0.01)
    job.result(timeout=120)
    fractions = {f for f, _ in seen}
    assert len(fractions) > 1, seen
    assert max(fractions) > 0, seen


def test_ipseg_outputs_are_named_in_the_api(client):
    returns = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/ipseg"]["returns"]
    labels = [r["label"] for r in returns]
    assert not [label for label in labels if label.startswith("value_")], labels


# --------------------------------------------------------------------------------------- bad files
def _png_header(width: int, height: int) -> bytes:
    """The start of a width x height RGB PNG: its header and a first row of pixel data (a few bytes on disk;
    decoded in full it would be width x height x 3 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1 + 3 * width)))


def _bad_file(kind: str, folder: Path, photo: str) -> tuple[Path, str]:
    """(file, the reason the message must give)."""
    path = folder / f"{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "the file is empty"
    if kind == "truncated":
        data = Path(photo).read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "truncated or damaged"
    if kind == "text":
        path.write_text("this is not a PNG")
        return path, "not an image file"
    path.write_bytes(_png_header(20000, 20000))
    return path, "(20000x20000 pixels exceeds the limit|refused as a decompression bomb)"


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "huge"])
def test_a_bad_prompt_file_is_a_message_naming_it(client, server, photos, tmp_path, kind):
    bad, reason = _bad_file(kind, tmp_path, photos["coffee"])
    before = server.log_text().count("Traceback")
    start = time.monotonic()
    with pytest.raises(AppError) as caught:
        _ipseg(client, editor(str(bad)), [photos["coffee"]])
    message = str(caught.value)
    assert re.search(f"prompt image: {bad.name}: {reason}", message), message
    assert "Could not preprocess" not in message and str(tmp_path) not in message and "gradio" not in message.lower()
    assert time.monotonic() - start < 20  # refused on the header, not after decoding 400 megapixels
    assert server.log_text().count("Traceback") == before


def test_one_bad_target_is_listed_and_the_good_ones_are_answered(client, server, photos, tmp_path):
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"this is not a PNG")
    before = server.log_text().count("Traceback")
    _, overlays, heatmaps, files, scores, summary = _ipseg(
        client, editor(photos["chelsea"]), [photos["chelsea"], str(bad), photos["coffee"]])
    assert {row[0] for row in scores["data"]} == {1, 3}
    assert [row[1] for row in scores["data"]] == ["chelsea-160.png", "coffee-160.png"]
    assert len(overlays) == len(heatmaps) == 2
    assert "**1 target(s) failed:** holiday.png: target image: holiday.png: not an image file" in summary
    assert str(tmp_path) not in summary and "gradio" not in summary.lower()
    with pytest.raises(AppError, match="no target could be segmented:\nholiday.png: target image: holiday.png: "
                                       "not an image file"):
        _ipseg(client, editor(photos["chelsea"]), [str(bad)])
    assert server.log_text().count("Traceback") == before  # a user's mistake is a message, not a stack trace
    assert server.alive()


# ----------------------------------------------------------------------------------------- browser
def test_browser_ipseg_box_example_runs_as_is(page, tmp_path):
    from playwright.sync_api import expect

    expect(page.locator("#tiny-banner")).to_contain_text("TINY MODE")
    # IPSeg (the first tab) opens pre-filled; the Examples row with a box fills the prompt, targets and box.
    expect(page.locator("#ipseg-prompt canvas").first).to_be_visible()
    page.locator("tbody tr").filter(has_text="60, 20, 390, 300").click()
    expect(page.locator("#ipseg-box textarea")).to_have_value("60, 20, 390, 300")
    click(page, "#ipseg-run")
    summary = page.locator("#ipseg-summary")
    expect(summary).to_contain_text("2 target(s)")
    expect(summary).to_contain_text("prompt region from box")
    expect(summary).to_contain_text("How to read this")
    expect(page.locator("#ipseg-annotated img").first).to_be_visible()
    expect(page.locator("#ipseg-heatmaps img").first).to_be_visible()
    assert page.locator("#ipseg-heatmaps img").count() >= 2  # a heatmap beside each target's mask
    shot(page, tmp_path, "1_ipseg_box_example")


def _shown_width(page, selector: str, width: int) -> None:
    """Wait until the image at ``selector`` has loaded and is ``width`` px wide (its own pixels)."""
    page.wait_for_function("([s, w]) => {const e = document.querySelector(s); "
                           "return e && e.complete && e.naturalWidth === w}", arg=[selector, width])


def _show_prompt_of_width(page, width: int) -> None:
    """'Show the prompt here', then wait until the click view shows the editor's prompt image ``width`` px wide
    (the image the editor sends to the server)."""
    from app_harness import click

    click(page, "#ipseg-click-show")
    _shown_width(page, "#ipseg-click img", width)


def test_browser_no_page_error_on_load_or_when_an_example_fills_the_prompt(browser, server):
    """#20.8: Gradio 6.17's editor threw "Cannot read properties of undefined (reading 'background_image')"
    at every load: started with a background image, it switched to the draw tool before its resize tool was
    set up. A fresh page, then the coffee Examples row: no page error, and the editor holds (and sends) the
    page's default prompt (chelsea, 451 px wide) and then the row's coffee photo (600 px)."""
    from app_harness import open_page

    errors: list[str] = []
    page = open_page(browser, server.url, page_errors=errors)
    try:
        _show_prompt_of_width(page, 451)
        page.locator("tbody tr").nth(1).click()  # the coffee row
        page.wait_for_function("() => [...document.querySelectorAll('#ipseg-targets img')].some("
                               "e => e.naturalWidth === 600)")  # the row's targets are shown
        _show_prompt_of_width(page, 600)
    finally:
        page.close()
    assert not errors, "\n\n".join(errors)


# ------------------------------------------------------------------ click-to-mask with real sam_t weights
CUP_CLICK = (300, 235)  # on the body of the cup in skimage's coffee() (600 x 400)


@pytest.fixture(scope="module")
def coffee_files(tmp_path_factory):
    """The full-size coffee photo, and the target: the same photo flipped left-right."""
    from vision.imaging import sample_image

    folder = tmp_path_factory.mktemp("coffee")
    coffee = sample_image("coffee")
    Image.fromarray(coffee).save(folder / "coffee.png")
    Image.fromarray(np.ascontiguousarray(coffee[:, ::-1])).save(folder / "coffee_flipped.png")
    return str(folder / "coffee.png"), str(folder / "coffee_flipped.png")


def test_real_sam_t_a_click_on_the_cup_prompts_a_run_that_finds_it_flipped(real_server, sam_t_hub, coffee_files):
    """/ipseg_prompt_mask shows SAM's mask for the click; /ipseg with the same click as the prompt region
    (SAM features, sam_t) finds the cup in the flipped photo: IoU >= 0.7 with the flipped click mask."""
    from gradio_client import Client

    from vision.engines.segment import SegmentConfig, SegmentEngine

    prompt, target = coffee_files
    client = Client(real_server.url, verbose=False)
    click_text = "{}, {}, 1".format(*CUP_CLICK)
    view, note = client.predict(editor(prompt), click_text, "sam_t", "default", api_name="/ipseg_prompt_mask")
    cup = SegmentEngine(SegmentConfig(sam_model="sam_t"), hub=sam_t_hub)(prompt, [[*CUP_CLICK, 1]]).mask
    assert png(view).shape[:2] == cup.shape == (400, 600)
    assert f"SAM `sam_t` mask from 1 click(s): {int(cup.sum())} px" in note and "TINY" not in note
    *_, files, _, summary, = _ipseg(client, editor(prompt), [target], fast=False, sam="sam_t", features="sam",
                                    clicks=click_text)
    assert "from **mask** (SAM `sam_t` from 1 click(s))" in summary and "features **sam-embedding**" in summary
    (mask_file,) = [f for f in files if f.endswith("_mask.png")]
    found, expected = png(mask_file) > 0, cup[:, ::-1]
    iou = (found & expected).sum() / (found | expected).sum()
    assert iou >= 0.7, f"IoU {iou:.3f} of the flipped target's mask with the flipped cup"


def test_browser_real_sam_t_a_click_on_the_prompt_shows_the_cup_mask(real_page, tmp_path):
    """The coffee example, then a click on the cup in the click view (it shows the new prompt at once): the
    note gives the mask SAM (sam_t: the preset's sam_b has no weights here) made for that click."""
    from playwright.sync_api import expect

    page = real_page
    page.locator("tbody tr").nth(1).click()  # the coffee row
    expect(page.locator("#ipseg-prompt canvas").first).to_be_visible()
    shown = "#ipseg-click img"
    _shown_width(page, shown, 600)
    click_image_pixel(page, shown, *CUP_CLICK)
    note = page.locator("#ipseg-click-note")
    expect(note).to_contain_text("SAM sam_t mask from 1 click(s)")  # as the page renders the markdown
    area = int(re.search(r"(\d+) px", note.inner_text()).group(1))
    assert 0.3 < area / (600 * 400) < 0.7, note.inner_text()  # the cup on its saucer (48%)
    expect(page.locator("#ipseg-clicks textarea")).to_have_value(re.compile(r"^3\d\d, 2\d\d, 1$"))
    shot(page, tmp_path, "ipseg_click_to_mask")


def test_browser_a_new_prompt_fills_the_click_view_at_once(page):
    """#20.7: the click view stayed empty until 'Show the prompt here'. It opens with the editor's chelsea
    (451 x 300); the coffee row (600 x 400) fills it, no clicks, ready for a click."""
    from playwright.sync_api import expect

    _shown_width(page, "#ipseg-click img", 451)
    page.locator("tbody tr").nth(1).click()  # the coffee row; no 'Show the prompt here'
    _shown_width(page, "#ipseg-click img", 600)
    clicks = page.locator("#ipseg-clicks textarea")
    expect(clicks).to_have_value("")
    clicks.fill("5, 5, 1")  # 'Show the prompt here' stays: it shows the editor's image and clears the clicks
    click(page, "#ipseg-click-show")
    expect(clicks).to_have_value("")
    _shown_width(page, "#ipseg-click img", 600)
