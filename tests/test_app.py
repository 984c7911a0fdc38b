"""The Gradio app end to end, in tiny mode, on the session's tiny server (``conftest.server``).

- API: every engine through ``gradio_client`` with skimage.data photographs; outputs checked.
- Errors: a bad image and an empty label list give a readable message; the next good request works.
- Browser: Debian chromium driven by Playwright opens the page and runs one action on every tab.

Trident's own tests are in ``test_app_trident.py``; the 20-concurrent-requests load test in ``test_app_load.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from app_harness import click, editor, gallery, png, shot
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image


def _trident(client, image, classes="cat|kitten; grass; background|wall", preset="open", prob=0.0, refine=True):
    return client.predict(handle_file(image), classes, preset, prob, refine, "clip_b16", api_name="/trident")


# ------------------------------------------------------------------------------------------- IPSeg
def test_ipseg_api_painted_prompt_gives_masks_for_every_target(client, photos, tmp_path):
    prompt = photos["chelsea"]
    h, w = png(prompt).shape[:2]
    layer = np.zeros((h, w, 4), np.uint8)
    layer[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = (255, 48, 48, 255)  # the painted concept
    Image.fromarray(layer).save(tmp_path / "layer.png")
    targets = [photos["chelsea"], photos["coffee"]]
    annotated, overlays, files, scores, summary = client.predict(
        editor(prompt, str(tmp_path / "layer.png")), gallery(*targets), "mask", True, 2, 0.0, "sam_b",
        api_name="/ipseg")
    assert png(annotated["image"]).shape[:2] == (h, w)
    assert annotated["annotations"] and all(Path(a["image"]).is_file() for a in annotated["annotations"])
    assert len(overlays) == 2 and "presence" in overlays[0]["caption"]
    for target, overlay in zip(targets, overlays):
        assert png(overlay["image"]).shape[:2] == png(target).shape[:2]
    masks = [f for f in files if f.endswith("_mask.png")]
    assert len(masks) == 2
    for target, mask in zip(targets, sorted(masks)):
        m = png(mask)
        assert m.shape == png(target).shape[:2] and set(np.unique(m)) <= {0, 255}
    assert {row[0] for row in scores["data"]} == {1, 2}
    assert "from **mask**" in summary and "dinov2-only" in summary and "TINY MODE" in summary


def test_ipseg_unpainted_prompt_uses_the_automatic_region(client, photos):
    *_, summary = client.predict(editor(photos["coffee"]), gallery(photos["coffee"]), "mask", True, 1, 0.0,
                                 "sam_b", api_name="/ipseg")
    assert "from **auto-pca**" in summary




# ------------------------------------------------------------------------------------------ errors
def _tracebacks(server) -> int:
    return server.log_text().count("Traceback")


def test_bad_image_is_a_readable_error_and_the_next_request_works(client, server, photos, tmp_path):
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"this is not a PNG")
    before = _tracebacks(server)
    with pytest.raises(AppError, match="holiday.png: not an image file"):
        _trident(client, str(bad))
    with pytest.raises(AppError, match="target image: .*holiday.png: not an image file"):
        client.predict(editor(photos["chelsea"]), gallery(str(bad)), "mask", True, 1, 0.0, "sam_b",
                       api_name="/ipseg")
    assert _tracebacks(server) == before  # a user's mistake is a message, not a stack trace in the log
    annotated, *_ = _trident(client, photos["chelsea"])
    assert annotated["annotations"]
    assert server.alive()


def test_empty_label_list_is_a_readable_error_and_the_next_request_works(client, server, photos):
    with pytest.raises(AppError, match="no class names given"):
        _trident(client, photos["chelsea"], classes="  \n \n")
    with pytest.raises(AppError, match="at least two classes"):
        _trident(client, photos["chelsea"], classes="cat")
    annotated, *_ = _trident(client, photos["chelsea"])
    assert annotated["annotations"]
    assert server.alive()


@pytest.fixture
def shots(tmp_path):
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder


def test_browser_ipseg_tab_runs_its_prefilled_example(page, shots):
    from playwright.sync_api import expect

    expect(page.locator("#tiny-banner")).to_contain_text("TINY MODE")
    # IPSeg (the first tab): the prompt and the targets come pre-filled with skimage photographs.
    expect(page.locator("#ipseg-prompt canvas").first).to_be_visible()
    click(page, "#ipseg-run")
    expect(page.locator("#ipseg-summary")).to_contain_text("2 target(s)")
    expect(page.locator("#ipseg-annotated img").first).to_be_visible()
    shot(page, shots, "1_ipseg")


