"""The Story tab on the session's tiny app server: frames, storyboard and files over the API, one update
per round, presets (incl. SDXL and reference), wording, errors, and stepping through rounds in the page."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_harness import click, open_tab, png
from gradio_client.exceptions import AppError

STORY = "a red fox in the snow\nthe fox crosses a frozen river\nthe fox finds a cabin"


def test_story_api_returns_frames_storyboard_and_files(client):
    gallery, status, board, files, round_pick = client.predict(STORY, "sd15", "comic", 1, 3, 1, True, 3,
                                                               api_name="/story")
    assert len(gallery) == 3
    for item in gallery:
        assert png(item["image"]).shape == (64, 64, 3)  # tiny frames are 64x64
    assert "Round 1/1 done" in status and "TINY MODE" in status and "sd15 preset, product mode" in status
    assert "Finished: 3 frames after 2 passes" in status
    assert round_pick["value"] == 1 and [c[1] for c in round_pick["choices"]] == [0, 1]  # every round viewable
    h, w = png(board).shape[:2]
    assert w > 3 * 64 and h > 64  # three 64-px frames side by side, with gutters
    names = sorted(Path(f).name for f in files)
    assert names == ["frame_000.png", "frame_001.png", "frame_002.png", "manifest.json", "storyboard.png"]


def test_story_streams_one_update_per_round_with_singular_wording(client):
    job = client.submit("a fox", "sd15", "none", 2, 0, 1, False, 3, api_name="/story")
    job.result(timeout=120)
    # while a round runs the handler yields no-op updates (gr.skip(): so that a cancel reaches it, vision.ui.runs)
    outputs = [o for o in job.outputs() if o[1] != {"__type__": "update"}]
    statuses = [o[1] for o in outputs]
    assert len(outputs) == 3, statuses  # rounds 0, 1, 2
    assert all(f"Round {r}/2 done (1 frame," in s for r, s in enumerate(statuses)), statuses
    assert "Finished: 1 frame after 3 passes" in statuses[-1]
    assert outputs[0][3] is None and len(outputs[-1][3]) == 3  # downloads come with the final round


@pytest.mark.parametrize("preset, mode", [("sdxl", "sdxl preset, product mode, realvisxl"),
                                          ("reference", "reference preset, reference mode, realvisxl")])
def test_story_sdxl_presets_run_and_say_which_mode(client, preset, mode):
    gallery, status, *_ = client.predict("a fox", preset, "comic", 0, 0, 1, False, 3, api_name="/story")
    assert len(gallery) == 1 and mode in status


def test_story_errors_are_plain_text(client):
    with pytest.raises(AppError, match="story"):
        client.predict("  \n ", "sd15", "comic", 1, 0, 1, True, 3, api_name="/story")
    with pytest.raises(AppError) as err:
        client.predict("a fox", "sd15", "comic", 0, -1, 1, True, 3, api_name="/story")
    assert "seed must be an integer >= 0" in str(err.value) and "&gt;" not in str(err.value)


def test_a_story_over_the_app_limits_is_refused_naming_the_limit(client):
    """#20.3: a 500-line story held the only run slot about 11 minutes."""
    from vision.limits import MAX_APP_STORY_FRAMES, MAX_PROMPT_CHARS

    long_story = "\n".join(f"frame {i}" for i in range(MAX_APP_STORY_FRAMES + 1))
    with pytest.raises(AppError, match=f"{MAX_APP_STORY_FRAMES + 1} frames.*at most {MAX_APP_STORY_FRAMES}"):
        client.predict(long_story, "sd15", "comic", 0, 0, 1, False, 3, api_name="/story")
    with pytest.raises(AppError, match=f"line 2 has {MAX_PROMPT_CHARS + 1} characters.*at most {MAX_PROMPT_CHARS}"):
        client.predict("a fox\n" + "x" * (MAX_PROMPT_CHARS + 1), "sd15", "comic", 0, 0, 1, False, 3,
                       api_name="/story")


def _wait_for_log(server, text: str, timeout: float = 120.0) -> str:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log_text()
        if text in log:
            return log
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not in the server log:\n{server.log_text()[-3000:]}")


def _wait_until_running(job, timeout: float = 120.0) -> None:
    """Until the handler has yielded (it yields while its engine works, vision.ui.runs)."""
    import time

    from gradio_client.utils import Status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job.status().code == Status.ITERATING:
            return
        time.sleep(0.2)
    raise AssertionError(f"the story did not start: {job.status()}")


@pytest.mark.parametrize("how", ["cancel", "disconnect"])
def test_an_abandoned_story_stops_at_its_next_step_and_frees_the_slot(server, how):
    """#20.3: a client that cancels (``job.cancel()``) or goes away (``client.close()``: its session ends)
    stops its story at the next denoising step, and the next request gets the run slot."""
    import re
    import time

    from gradio_client import Client

    frames, steps = 40, 10
    story = "\n".join(f"{how} frame {i}" for i in range(frames))
    leaving = Client(server.url, verbose=False)
    job = leaving.submit(story, "sd15", "none", 0, 0, steps, False, 3, api_name="/story")
    _wait_until_running(job)  # it runs (and holds the slot)
    job.cancel() if how == "cancel" else leaving.close()
    log = _wait_for_log(server, f"story stopped ({'cancelled' if how == 'cancel' else 'client gone'})")
    # at the last progress message: a frame's start ("frame 4/40") or one of its steps ("..., step 3/10")
    stopped = re.search(rf"story stopped \(\w[\w ]*\) at round 0/0: frame (\d+)/{frames}(, step \d+/{steps})?", log)
    assert stopped and int(stopped.group(1)) < frames - 2, log[-2000:]
    started = time.monotonic()
    gallery, status, *_ = Client(server.url, verbose=False).predict("a fox", "sd15", "none", 0, 0, 1, False, 3,
                                                                     api_name="/story")
    assert len(gallery) == 1 and time.monotonic() - started < 60  # the slot was free
    if how == "cancel":
        leaving.close()


def test_a_queued_request_whose_client_left_does_nothing(server, photos):
    """#20.3: a /segment call waited 99 s for the slot after its client had gone, then ran anyway."""
    import time

    from gradio_client import Client, handle_file
    from gradio_client.utils import Status

    blocker = Client(server.url, verbose=False)
    story = blocker.submit("\n".join(f"queue frame {i}" for i in range(40)), "sd15", "none", 0, 0, 10, False, 3,
                           api_name="/story")
    _wait_until_running(story)
    leaving = Client(server.url, verbose=False)
    queued = leaving.submit(handle_file(photos["chelsea"]), "80, 60, 1", "", "sam_t", "1 mask", api_name="/segment")
    while queued.status().code != Status.IN_QUEUE:
        time.sleep(0.2)
    leaving.close()
    _wait_for_log(server, f"client gone (session {leaving.session_hash[:8]})")
    story.cancel()
    _wait_for_log(server, "segment stopped (client gone) at before it started")
    blocker.close()


def test_browser_story_tab_steps_through_the_rounds(page):
    from playwright.sync_api import expect

    open_tab(page, "Story")
    page.locator("#story-text textarea").fill("a fox\nthe fox runs")
    click(page, "#story-run")
    expect(page.locator("#story-status")).to_contain_text("Finished", timeout=120_000)
    frames = page.locator("#story-gallery img")
    expect(frames).to_have_count(2)
    last = frames.evaluate_all("imgs => imgs.map(i => i.src)")
    page.locator("#story-round label", has_text="round 0").click()
    expect(page.locator("#story-gallery")).to_contain_text("round 0")
    expect(frames).to_have_count(2)
    first = frames.evaluate_all("imgs => imgs.map(i => i.src)")
    assert first != last  # round 0's frames are other images than the final round's
    page.locator("#story-round label", has_text="round 1").click()
    expect(page.locator("#story-gallery")).to_contain_text("round 1")
    assert frames.evaluate_all("imgs => imgs.map(i => i.src)") == last


# ------------------------------------------------------------------------------ characters (#27)


@pytest.fixture(scope="module")
def character_pictures(tmp_path_factory):
    """Two characters' pictures, named as a user would name them (the table takes the file names)."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("pictures")
    out = {}
    for i, name in enumerate(("Ann", "Bob")):
        out[name] = folder / f"{name}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (72, 56, 3), dtype=np.uint8)).save(out[name])
    return out


def _table(rows):
    from vision.ui.story_characters import HEADERS

    return {"headers": HEADERS, "data": rows, "metadata": None}


CAST_STORY = "Ann waves from a hill\nbob fishes in a lake\n[Ann, Bob] share bread"


def test_story_api_with_two_characters_lists_each_frames_characters(client, character_pictures):
    from gradio_client import handle_file

    files = [handle_file(str(p)) for p in character_pictures.values()]
    gallery, status, board, downloads, _ = client.predict(
        CAST_STORY, "sd15", "comic", 1, 0, 1, False, 3, "", "", files, _table([["Ann", "Ann.png"], ["Bob", "Bob.png"]]),
        api_name="/story")
    assert [item["caption"] for item in gallery] == ["1. [Ann] Ann waves from a hill", "2. [Bob] bob fishes in a lake",
                                                     "3. [Ann, Bob] share bread"]
    assert "Characters per frame: 1 Ann; 2 Bob; 3 Ann, Bob." in status and "Memory options: VAE tiling off" in status
    manifest = next(f for f in downloads if f.endswith("manifest.json"))
    import json

    assert json.loads(open(manifest).read())["arguments"]["frame_characters"] == [["Ann"], ["Bob"], ["Ann", "Bob"]]


def test_story_character_input_errors_name_the_row_and_file(client, character_pictures, tmp_path):
    from gradio_client import handle_file

    files = [handle_file(str(character_pictures["Ann"]))]
    with pytest.raises(AppError, match=r"Characters table, row 1 \(Ann\): Ann2.png not among the uploaded pictures"):
        client.predict("Ann", "sd15", "comic", 0, 0, 1, False, 3, "", "", files, _table([["Ann", "Ann2.png"]]),
                       api_name="/story")
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    with pytest.raises(AppError, match="character 'Ann': notes.png: not an image"):
        client.predict("Ann", "sd15", "comic", 0, 0, 1, False, 3, "", "", [handle_file(str(notes))],
                       _table([["Ann", "notes.png"]]), api_name="/story")
    with pytest.raises(AppError, match=r"line 1: 'Zed' is not declared; characters: Ann"):
        client.predict("[Zed] runs", "sd15", "comic", 0, 0, 1, False, 3, "", "", files, _table([["Ann", "Ann.png"]]),
                       api_name="/story")
    with pytest.raises(AppError, match="500 frames.*at most"):
        client.predict("\n".join(f"Ann frame {i}" for i in range(500)), "sd15", "comic", 0, 0, 1, False, 3, "", "",
                       files, _table([["Ann", "Ann.png"]]), api_name="/story")


def test_browser_story_with_two_uploaded_characters_shows_every_round_and_each_frames_characters(
        page, character_pictures):
    from playwright.sync_api import expect

    open_tab(page, "Story")
    page.locator("#story-text textarea").fill(CAST_STORY)
    page.locator("#story-character-files input[type=file]").set_input_files([str(p) for p in
                                                                           character_pictures.values()])
    table = page.locator("#story-characters")
    expect(table).to_contain_text("Ann.png")  # a row per uploaded picture, named after its file
    expect(table).to_contain_text("Bob.png")
    click(page, "#story-run")
    status = page.locator("#story-status")
    expect(status).to_contain_text("Finished", timeout=180_000)
    expect(status).to_contain_text("Characters per frame: 1 Ann; 2 Bob; 3 Ann, Bob.")
    expect(page.locator("#story-memory")).to_contain_text("Memory options:")
    gallery = page.locator("#story-gallery")
    for r in (0, 1):
        page.locator("#story-round label", has_text=f"round {r}").click()
        expect(gallery).to_contain_text(f"round {r}")
        expect(gallery.locator("img")).to_have_count(3)
        for caption in ("1. [Ann] Ann waves from a hill", "2. [Bob] bob fishes in a lake", "3. [Ann, Bob] share bread"):
            expect(gallery).to_contain_text(caption)
