"""CorrCLIP in the Trident tab, on the session's tiny server: the API (label maps, region masks, summary)
and, in Chromium, Method = CorrCLIP on the cat photo with "cat; grass; background"."""

from __future__ import annotations

import numpy as np
from app_harness import click, open_tab, png, shot
from gradio_client import handle_file


def corrclip(client, image, classes="cat; grass; background", preset="corrclip", mask_generator="sam_b", points=2):
    return client.predict(handle_file(image), classes, preset, 0.0, True, "metaclip_b16", "CorrCLIP", mask_generator,
                          points, api_name="/trident")


def test_corrclip_api_gives_label_maps_region_masks_and_the_method(client, photos):
    annotated, _, regions, _, files, _, summary = corrclip(client, photos["chelsea"])
    h, w = png(photos["chelsea"]).shape[:2]
    assert png(annotated["image"]).shape[:2] == (h, w) and png(regions).shape[:2] == (h, w)
    assert [a["label"] for a in annotated["annotations"]] == ["cat", "grass", "background"]
    assert "method **CorrCLIP**" in summary and "preset **corrclip**" in summary and "TINY MODE" in summary
    assert "region masks (sam_b (2 points/side)" in summary
    names = {f.rsplit("_", 1)[-1] for f in files}
    assert {"labels.png", "regions.png", "overlay.png"} <= names
    (ids,) = [f for f in files if f.endswith("_regions.png")]
    assert png(ids).shape == (h, w) and png(ids).dtype == np.uint16
    # the same image with other classes: its region masks come from the cache
    *_, again = corrclip(client, photos["chelsea"], classes="kitten; lawn; background")
    assert "from the cache" in again


def test_corrclip_benchmark_preset_from_the_trident_name(client, photos):
    """A benchmark preset picked before switching the Method runs as CorrCLIP's preset for it."""
    *_, table, summary = corrclip(client, photos["coffee"], classes="", preset="voc21", mask_generator="mask2former")
    assert "21 classes, method **CorrCLIP**, preset **corrclip_voc21**, mode **reference**" in summary
    assert "mask2former" in summary and len(table["data"]) == 21


def test_browser_corrclip_shows_a_label_map_and_the_region_masks(page, photos, tmp_path):
    from playwright.sync_api import expect

    open_tab(page, "Trident")
    page.locator("#trident-method").get_by_text("CorrCLIP", exact=True).click()
    expect(page.locator("#trident-preset input")).to_have_value("corrclip")
    expect(page.locator("#trident-mask-generator")).to_be_visible()
    points = page.locator("#trident-points input[type=number]")
    points.fill("2")
    points.press("Enter")
    page.locator("#trident-image").get_by_role("button", name="Remove Image").click()
    page.locator("#trident-image input[type=file]").set_input_files(photos["chelsea"])
    expect(page.locator("#trident-image img").first).to_be_visible()
    page.locator("#trident-classes input").fill("cat; grass; background")
    click(page, "#trident-run")
    summary = page.locator("#trident-summary")
    expect(summary).to_contain_text("3 classes, method CorrCLIP, preset corrclip")
    expect(summary).to_contain_text("TINY MODE")  # random weights: labelled as noise
    expect(summary).to_contain_text("region masks (sam_b (2 points/side)")
    expect(page.locator("#trident-annotated img").first).to_be_visible()
    regions = page.locator("#trident-regions img")
    expect(regions).to_be_visible()
    size = regions.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    assert size == list(png(photos["chelsea"]).shape[1::-1])
    expect(page.locator("#trident-heatmaps img")).to_have_count(3)
    shot(page, tmp_path, "corrclip")
