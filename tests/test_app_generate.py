"""The Generate tab on the session's tiny app server: text-to-image, image-to-image, the DeepCache
comparison slider, per-step progress, presets and limits, plain-text errors over the API, and the page."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from app_harness import click, open_tab, png
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from vision.ui import errors

# prompt, negative, preset, steps, guidance, seed, scheduler, family, size, DeepCache, N, branch, schedule,
# start image, strength
GEN_ARGS = ("a lighthouse at dusk", "blurry", "default", 3, 7.5, 5, "ddim", "sd15", 0, True, 2, 1, "uniform", None,
            0.75)


def _args(**changes):
    names = ("prompt", "negative", "preset", "steps", "guidance", "seed", "scheduler", "family", "size", "deepcache",
             "interval", "branch", "schedule", "image", "strength")
    values = dict(zip(names, GEN_ARGS))
    values.update(changes)
    return [values[n] for n in names]


def test_generate_api_gives_an_image(client):
    image, summary, files = client.predict(*GEN_ARGS, api_name="/generate")
    assert png(image).shape == (64, 64, 3)  # tiny models make 64x64 images
    assert "text-to-image" in summary and "DeepCache N=2" in summary and "TINY MODE" in summary
    assert "preset **default**, product mode" in summary and "3 steps" in summary
    assert [Path(f).name for f in files] == ["deepcache.png"]


def test_generate_image_to_image_keeps_the_start_images_size(client, photos):
    image, summary, _ = client.predict(*_args(image=handle_file(photos["coffee"]), strength=0.5, steps=4),
                                       api_name="/generate")
    h, w = png(photos["coffee"]).shape[:2]
    assert png(image).shape == (h // 8 * 8, w // 8 * 8, 3)  # the start image's size, to the VAE's 8 px
    assert "image-to-image (strength 0.5)" in summary


def test_generate_paper_preset_is_reported_as_reference_mode(client):
    _, summary, _ = client.predict(*_args(preset="paper", scheduler="pndm", interval=5), api_name="/generate")
    assert "preset **paper**, reference mode" in summary and "(pndm)" in summary


def test_generate_compare_gives_a_before_after_slider_and_the_speedup(client):
    (before, after), summary, files = client.predict(*GEN_ARGS, api_name="/generate_compare")
    assert png(before).shape == png(after).shape == (64, 64, 3)
    assert "Measured: " in summary and "with DeepCache** (without DeepCache " in summary
    assert sorted(Path(f).name for f in files) == ["deepcache.png", "without_deepcache.png"]


def test_generate_reports_progress_per_denoising_step(client):
    job = client.submit(*_args(steps=12), api_name="/generate_compare")
    seen = set()
    while not job.done():
        for unit in job.status().progress_data or []:
            if unit.progress is not None:
                seen.add(round(unit.progress, 3))
        time.sleep(0.01)
    job.result(timeout=120)
    assert len(seen) >= 3, f"progress values seen: {sorted(seen)}"  # 2 runs x 12 steps report 24 values


def test_generate_limits_come_from_vision_limits(client, server):
    from vision.limits import MAX_STEPS

    with pytest.raises(AppError, match="prompt"):
        client.predict(*_args(prompt=""), api_name="/generate")
    with pytest.raises(AppError, match=str(MAX_STEPS)):
        client.predict(*_args(steps=MAX_STEPS + 1), api_name="/generate")
    assert server.alive()


def test_generate_api_outputs_are_named(client):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/generate", "/generate_compare", "/story", "/models"):
        labels = [r["label"] for r in info[name]["returns"]]
        assert all(label and not label.startswith("value_") for label in labels), (name, labels)


def test_html_text_escapes_only_markup():
    assert errors.as_html_text("steps must be >= 1 & < 1000") == "steps must be >= 1 & < 1000"
    assert errors.as_html_text("got <class 'int'> &amp;") == "got &lt;class 'int'> &amp;amp;"


def test_browser_generate_tab_compare_shows_the_slider_and_the_speedup(page):
    from playwright.sync_api import expect

    open_tab(page, "Generate")
    click(page, "#generate-compare")
    expect(page.locator("#generate-summary")).to_contain_text("Measured: ")
    expect(page.locator("#generate-slider img")).to_have_count(2)
    sources = page.locator("#generate-slider img").evaluate_all("imgs => imgs.map(i => i.src)")
    assert len(set(sources)) == 2 and all(sources), sources  # before and after are two different images


def test_browser_the_generate_story_and_segment_examples_show_and_fill_their_text_in_tabs_opened_after_load(page):
    """Each example shows its text in its label and a click fills the form (Gradio 6.17's examples table
    was blank in these tabs when opened after the page loaded)."""
    from playwright.sync_api import expect

    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    open_tab(page, "Generate")
    page.locator("#generate-prompt textarea").fill("something else")
    expect(page.locator("#generate-example")).to_contain_text('"a red fox in the snow, watercolour", negative "blurry"')
    click(page, "#generate-example")
    expect(page.locator("#generate-prompt textarea")).to_have_value("a red fox in the snow, watercolour")
    open_tab(page, "Story")
    page.locator("#story-text textarea").fill("one frame")
    expect(page.locator("#story-example")).to_contain_text("a red fox wakes up in a snowy forest / the fox crosses")
    click(page, "#story-example")
    expect(page.locator("#story-text textarea")).to_have_value(re.compile(r"^a red fox wakes up in a snowy forest\n"))
    open_tab(page, "Segment")
    expect(page.locator("#segment-example-chelsea")).to_contain_text("the box 60, 20, 390, 300")
    click(page, "#segment-example-chelsea")
    expect(page.locator("#segment-box textarea")).to_have_value("60, 20, 390, 300")
    expect(page.locator("#segment-image img").first).to_be_visible()
    assert not [e for e in errors if "reading '" in e and "background_image" not in e], errors


# --------------------------------------------------------------- #26: the user's models and ControlNet


def test_generate_api_with_checkpoint_lora_and_canny(client, tmp_path, photos):
    """The trailing inputs: a single-file checkpoint, a LoRA with its scale, a canny ControlNet."""
    from vision import tiny
    from vision.tiny_files import write_lora, write_sd_checkpoint

    model = write_sd_checkpoint(tmp_path / "mine.safetensors", tiny.sd15_unet(), tiny.sd15_vae(),
                                tiny.sd15_text_encoder())
    lora = write_lora(tmp_path / "ink.safetensors", tiny.sd15_unet())
    args = _args() + [str(model), f"{lora}:0.7", "canny", handle_file(photos["coffee"]), "", 0.9, 0.0, 1.0, 100,
                      200, "auto", 2]
    image, summary, files = client.predict(*args, api_name="/generate")
    assert png(image).shape == (64, 64, 3)
    assert "model **mine.safetensors** (SD1.x single file" in summary and "LoRA **ink.safetensors** x0.7" in summary
    assert "ControlNet **canny** (controlnet_canny_sd15), scale 0.9" in summary
    assert "control image resized" in summary and "shallow part" in summary
    assert sorted(Path(f).name for f in files) == ["control_map.png", "deepcache.png"]
    with pytest.raises(AppError, match=r"loras: scale 9 of .*ink.safetensors is out of range"):
        client.predict(*(args[:16] + [f"{lora}:9"] + args[17:]), api_name="/generate")


def test_generate_api_sd35_compare_with_taylorseer(client):
    (before, after), summary, _ = client.predict(*(_args(family="sd35_medium", scheduler="flow", steps=4)
                                                   + [None, None, "none", None, None, 1.0, 0.0, 1.0, 100, 200,
                                                      "taylorseer", 2]), api_name="/generate_compare")
    assert png(before).shape == png(after).shape == (64, 64, 3)
    assert "TaylorSeer (diffusers' DiT cache), interval 2" in summary and "without TaylorSeer" in summary


def test_browser_generate_with_a_lora_shows_the_image_and_the_lora(page, tmp_path):
    from playwright.sync_api import expect

    from vision import tiny
    from vision.tiny_files import write_lora

    lora = write_lora(tmp_path / "ink.safetensors", tiny.sd15_unet())
    open_tab(page, "Generate")
    page.get_by_text("Model: family, your checkpoint, LoRAs").click()
    with page.expect_file_chooser() as chooser:
        click(page, "#generate-lora-upload")
    chooser.value.set_files(str(lora))
    expect(page.locator("#generate-loras textarea")).to_have_value(re.compile(r"ink\.safetensors:1$"))
    page.locator("#generate-loras textarea").fill(page.locator("#generate-loras textarea").input_value()[:-2] + ":0.8")
    click(page, "#generate-run")
    expect(page.locator("#generate-summary")).to_contain_text("LoRA ink.safetensors x0.8")
    expect(page.locator("#generate-image img")).to_be_visible()


def test_browser_generate_with_canny_controlnet_shows_the_image_and_the_control(page, photos):
    from playwright.sync_api import expect

    open_tab(page, "Generate")
    page.get_by_text("ControlNet", exact=True).click()
    page.locator("#generate-control").get_by_text("canny", exact=True).click()
    page.locator("#generate-control-image input[type=file]").set_input_files(photos["chelsea"])
    expect(page.locator("#generate-control-image img")).to_be_visible()
    click(page, "#generate-run")
    expect(page.locator("#generate-summary")).to_contain_text("ControlNet canny (controlnet_canny_sd15), scale 1")
    expect(page.locator("#generate-summary")).to_contain_text("the ControlNet ran only its shallow part")
    expect(page.locator("#generate-image img")).to_be_visible()


def test_generate_api_takes_no_start_image_by_default_and_checks_a_bad_one(client, tmp_path):
    """#20.6: /generate required init_image (a call without it failed with a TypeError), and a bad start
    image came back as Gradio's raw preprocess error."""
    image, summary, _ = client.predict(*GEN_ARGS[:13], api_name="/generate")  # no start image, no strength
    assert png(image).shape == (64, 64, 3) and "text-to-image" in summary
    empty = tmp_path / "start.png"
    empty.write_bytes(b"")
    with pytest.raises(AppError) as err:
        client.predict(*_args(image=handle_file(str(empty))), api_name="/generate")
    assert "start image: start.png: the file is empty (0 bytes)" in str(err.value)
    assert "preprocess" not in str(err.value)
