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
from app_harness import click, editor, gallery, open_tab, png, shot
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


# ---------------------------------------------------------------------------------------- Generate
GEN_ARGS = ("a lighthouse at dusk", "blurry", 3, 7.5, 5, "ddim", "sd15", 0, True, 2, 1, "uniform")


def test_generate_api_gives_an_image(client):
    image, summary, files = client.predict(*GEN_ARGS, api_name="/generate")
    assert png(image).shape == (64, 64, 3)  # tiny models make 64x64 images
    assert "DeepCache N=2" in summary and "TINY MODE" in summary
    assert [Path(f).name for f in files] == ["deepcache.png"]


def test_generate_compare_shows_both_images_and_the_speedup(client):
    cached, plain, summary, files = client.predict(*GEN_ARGS, api_name="/generate_compare")
    assert png(cached).shape == png(plain).shape == (64, 64, 3)
    assert "Measured speed-up:" in summary and "without DeepCache" in summary
    assert sorted(Path(f).name for f in files) == ["deepcache.png", "without_deepcache.png"]


# ------------------------------------------------------------------------------------------- Story
STORY = "a red fox in the snow\nthe fox crosses a frozen river\nthe fox finds a cabin"


def test_story_api_returns_frames_storyboard_and_files(client):
    gallery, status, board, files = client.predict(STORY, "comic", 1, 3, 1, True, 3, api_name="/story")
    assert len(gallery) == 3
    for item in gallery:
        assert png(item["image"]).shape == (64, 64, 3)  # tiny frames are 64x64
    assert "Round 1/1 done" in status and "Finished" in status and "TINY MODE" in status
    h, w = png(board).shape[:2]
    assert w > 3 * 64 and h > 64  # three 64-px frames side by side, with gutters
    names = sorted(Path(f).name for f in files)
    assert names == ["frame_000.png", "frame_001.png", "frame_002.png", "manifest.json", "storyboard.png"]


def test_story_streams_one_update_per_round(client):
    job = client.submit("a fox\nthe fox runs", "none", 2, 0, 1, False, 3, api_name="/story")
    job.result(timeout=120)
    outputs = job.outputs()
    statuses = [o[1] for o in outputs]
    assert len(outputs) == 3, statuses  # rounds 0, 1, 2
    assert all(f"Round {r}/2 done" in s for r, s in enumerate(statuses)), statuses
    assert outputs[0][3] is None and len(outputs[-1][3]) == 4  # downloads come with the final round


# ------------------------------------------------------------------------------------ models panel
def test_models_panel_lists_loaded_tiny_models(client, photos):
    _trident(client, photos["coffee"])
    summary, models, weights = client.predict(api_name="/models")
    assert "tiny (random weights)" in summary and "TINY MODE" in summary
    loaded = {row[0] for row in models["data"] if row[1] == "yes"}
    assert {"clip_b16", "dino_b16", "sam_b"} <= loaded
    assert all(row[5] == "tiny (random)" for row in models["data"] if row[0] in loaded - {"clip_tokenizer"})
    assert {row[0] for row in weights["data"]} >= {"sam_b", "sd15_unet", "dinov2_b14"}


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


def test_empty_story_and_prompt_are_readable_errors(client):
    with pytest.raises(AppError, match="story"):
        client.predict("  \n ", "comic", 1, 0, 1, True, 3, api_name="/story")
    with pytest.raises(AppError, match="prompt"):
        client.predict("", *GEN_ARGS[1:], api_name="/generate")


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


def test_browser_generate_tab_compares_with_and_without_deepcache(page, shots):
    from playwright.sync_api import expect

    open_tab(page, "Generate")
    click(page, "#generate-compare")
    expect(page.locator("#generate-summary")).to_contain_text("Measured speed-up")
    expect(page.locator("#generate-plain img").first).to_be_visible()
    shot(page, shots, "3_generate")


def test_browser_story_tab_illustrates_the_example_story(page, shots):
    from playwright.sync_api import expect

    open_tab(page, "Story")
    click(page, "#story-run")
    expect(page.locator("#story-status")).to_contain_text("Finished", timeout=120_000)
    assert page.locator("#story-gallery img").count() >= 3
    shot(page, shots, "4_story")


def test_browser_models_tab_after_refresh(page, shots):
    from playwright.sync_api import expect

    open_tab(page, "Models")
    click(page, "#models-refresh")
    expect(page.locator("#models-table")).to_contain_text("tiny (random)")
    expect(page.locator("#models-summary")).to_contain_text("Models loaded")
    shot(page, shots, "5_models")
