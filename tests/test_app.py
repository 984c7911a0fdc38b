"""The Gradio app's shared error handling, in tiny mode, on the session's tiny server (``conftest.server``):
a bad image and an empty label list give a readable message, no traceback in the log, and the next good
request works.

Each tab's own API and browser tests: ``test_app_ipseg.py``, ``test_app_segment.py``,
``test_app_trident.py``, ``test_app_generate.py``, ``test_app_story.py``, ``test_app_models.py``; the
20-concurrent-requests load test: ``test_app_load.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError


def _trident(client, image, classes="cat|kitten; grass; background|wall", preset="open", prob=0.0, refine=True):
    return client.predict(handle_file(image), classes, preset, prob, refine, "clip_b16", api_name="/trident")


# ------------------------------------------------------------------------------------------ errors
def _tracebacks(server) -> int:
    return server.log_text().count("Traceback")


def test_bad_image_is_a_readable_error_and_the_next_request_works(client, server, photos, tmp_path):
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"this is not a PNG")
    before = _tracebacks(server)
    with pytest.raises(AppError, match="holiday.png: not an image file"):
        _trident(client, str(bad))
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


# ------------------------------------------------------------------------------ IPSeg prompt uploads
def _bad_prompt(folder, kind: str, photo: str):
    path = folder / "holiday.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a PNG")
    else:  # truncated: the first half of a real PNG
        data = open(photo, "rb").read()
        path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("kind", ["empty", "text", "truncated"])
def test_a_bad_prompt_upload_clears_the_editor_and_names_the_file(tmp_path, photos, kind):
    from vision.ui.uploads import checked_prompt_upload

    with pytest.warns(UserWarning, match="holiday.png"):
        value, status = checked_prompt_upload(str(_bad_prompt(tmp_path, kind, photos["coffee"])))
    assert value is None  # the editor is cleared: no stale prompt is segmented
    assert status.startswith("⚠️ prompt image: holiday.png: ") and "cleared" in status
    good, status = checked_prompt_upload(photos["coffee"])
    assert good == photos["coffee"] and status.endswith(Path(photos["coffee"]).name)


def test_browser_a_bad_prompt_upload_shows_the_reason_and_clears_the_prompt(page, tmp_path, photos):
    from app_harness import click
    from playwright.sync_api import expect

    def upload(path) -> None:
        with page.expect_file_chooser() as chooser:
            page.locator("#ipseg-prompt-upload").click()
        chooser.value.set_files(str(path))

    # a good file into the editor that a bad one had cleared: given as a background, Gradio 6.17's editor
    # sometimes looped ("effect_update_depth_exceeded") and never showed the new status
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(error.message))
    status = page.locator("#ipseg-prompt-status")
    upload(_bad_prompt(tmp_path, "empty", photos["coffee"]))
    expect(status).to_contain_text("prompt image: holiday.png: ")
    expect(status).to_contain_text("cleared")
    click(page, "#ipseg-run")  # the stale prompt (the page's chelsea photo) is gone: nothing to segment
    expect(page.locator(".toast-message-text").first).to_contain_text("Please upload a prompt image")
    upload(photos["coffee"])  # a good file becomes the prompt again
    expect(status).to_contain_text(f"Prompt image: {Path(photos['coffee']).name}")
    click(page, "#ipseg-run")  # ...and the editor sends it: a run segments with it
    expect(page.locator("#ipseg-summary")).to_contain_text("target(s)", timeout=120_000)
    assert not errors, errors
