"""The IPSeg tab with Method = GF-SAM, on the session's tiny server (``conftest.server``): the ``/ipseg`` API
(masks, the point graphs beside them, what ran), too many prompt clicks named, and the page in Chromium
(the coffee example, Method GF-SAM: a mask and the point graph)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from app_harness import click, editor, gallery, png, shot
from gradio_client.exceptions import AppError


def _gfsam(client, prompt, targets, *, box="", clicks="", preset="default", max_points=6, features="preset",
           fast=True):
    """/ipseg with Method GF-SAM (its trailing inputs: method, max_points); the preset of the other method
    is replaced by GF-SAM's own (gfsam_fast)."""
    return client.predict(prompt, gallery(*targets), "mask", fast, 1, 0.0, "preset", features, preset, box, None,
                          None, "cup", "mean", clicks, "gfsam", max_points, api_name="/ipseg")


def test_gfsam_api_gives_masks_and_point_graphs_and_says_what_ran(client, photos):
    targets = [photos["coffee"], photos["chelsea"]]
    annotated, overlays, graphs, files, scores, summary = _gfsam(client, editor(photos["coffee"]), targets,
                                                                 box="40, 25, 110, 85")
    assert "method **GF-SAM**" in summary and "preset **gfsam_fast**" in summary
    assert "features **sam-embedding**" in summary and "SAM `sam_t`" in summary and "point graph" in summary
    assert len(overlays) == len(graphs) == 2
    for target, graph in zip(targets, graphs, strict=True):
        assert "point graph:" in graph["caption"] and "cluster" in graph["caption"]
        assert png(graph["image"]).shape[:2] == png(target).shape[:2]
    assert len([f for f in files if f.endswith("_graph.png")]) == 2
    masks = sorted(f for f in files if f.endswith("_mask.png"))
    assert [png(m).shape for m in masks] == [png(t).shape[:2] for t in targets]
    assert {row[0] for row in scores["data"]} == {1, 2}


def test_too_many_prompt_clicks_are_refused_naming_the_field(client, photos):
    clicks = "; ".join(f"{10 + i}, 20, 1" for i in range(65))
    with pytest.raises(AppError, match="prompt clicks: 65 given, at most 64"):
        _gfsam(client, editor(photos["coffee"]), [photos["coffee"]], clicks=clicks)


def test_gfsam_with_ipsegs_features_is_a_message_naming_the_field(client, photos):
    with pytest.raises(AppError, match=r"features='dino\+sd': GF-SAM compares one feature map"):
        _gfsam(client, editor(photos["coffee"]), [photos["coffee"]], features="dino+sd", fast=False)


def test_browser_gfsam_on_the_coffee_example_shows_a_mask_and_the_point_graph(page, tmp_path):
    from playwright.sync_api import expect

    expect(page.locator("#ipseg-prompt canvas").first).to_be_visible()
    page.locator("tbody tr").nth(1).click()  # the coffee row: the coffee photo as prompt, coffee and cat targets
    page.locator("#ipseg-method label").filter(has_text="GF-SAM").click()
    page.get_by_text("Options", exact=True).click()
    expect(page.locator("#ipseg-preset input[value='gfsam_fast']")).to_be_checked()  # the method's own preset
    points = page.locator("#ipseg-max-points input[type='number']")
    points.fill("8")
    points.press("Enter")
    click(page, "#ipseg-run")
    summary = page.locator("#ipseg-summary")
    expect(summary).to_contain_text("method GF-SAM", timeout=240_000)
    expect(summary).to_contain_text("preset gfsam_fast")
    expect(page.locator("#ipseg-annotated img").first).to_be_visible()
    expect(summary).to_contain_text("the point graph beside it")
    graphs = page.locator("#ipseg-heatmaps")  # beside the masks: GF-SAM's point graphs
    expect(graphs.locator("img").first).to_be_visible()
    assert graphs.locator("img").count() >= 2  # one graph beside each target's mask
    expect(graphs).to_contain_text("point graph:")
    picture = shot(page, tmp_path, "gfsam_coffee_example")
    assert Path(picture).is_file() and np.asarray(png(picture)).size
