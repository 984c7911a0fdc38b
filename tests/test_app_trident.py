"""The Trident tab end to end on the session's tiny server (``conftest.server``), and its class syntax.

- Class syntax: the CLI's (``;`` between classes, ``|`` between a class's synonyms) in the textbox too.
- API: labels after and before SAM refinement, one probability heatmap per class, the label PNG, the
  table, the summary (preset and mode), named outputs, and the tiny-mode stamp on a small image.
- Browser: upload a photograph, run, and read what the page shows; the Examples table; an empty list.
"""

from __future__ import annotations

import numpy as np
import pytest
from app_harness import click, open_tab, png, shot
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from vision.engines.trident.classes import parse_class_text
from vision.ui import form


def trident(client, image, classes="cat|kitten; grass; background", preset="open", prob=0.0, refine=True):
    return client.predict(handle_file(image), classes, preset, prob, refine, "clip_b16", api_name="/trident")


def annotation_masks(value) -> dict[str, np.ndarray]:
    """An AnnotatedImage value from the API -> {label: bool mask [H, W]} (the mask is the PNG's alpha)."""
    return {a["label"]: png(a["image"])[..., -1] > 0 for a in value["annotations"]}


# -------------------------------------------------------------------------------------- class syntax
@pytest.mark.parametrize("text, expected", [
    ("cat|kitten; grass; background|sky", [["cat", "kitten"], ["grass"], ["background", "sky"]]),
    ("cat; dog ;background", [["cat"], ["dog"], ["background"]]),
    ("person | astronaut", [["person", "astronaut"]]),  # one class with a synonym (the engine then asks for two)
    ("  ", []),
    (None, []),
])
def test_class_text_is_read_as_the_cli_reads_labels(text, expected):
    assert form.parse_class_text(text) == expected
    assert form.parse_class_text(text) == parse_class_text(text or "")  # the library's (and the CLI's) reading


def test_a_line_break_in_the_class_text_is_refused_with_the_syntax():
    with pytest.raises(ValueError, match="one line, classes separated by ';', synonyms of a class by '\\|'"):
        form.parse_class_text("cat; kitten\ngrass\nbackground")


# ----------------------------------------------------------------------------------------------- API
def test_trident_api_gives_both_label_maps_a_heatmap_per_class_and_a_labelpng(client, photos):
    annotated, coarse, heatmaps, files, table, summary = trident(client, photos["chelsea"], preset="voc21", prob=0.2)
    h, w = png(photos["chelsea"]).shape[:2]
    names = ["cat", "grass", "background"]
    for view in (annotated, coarse):
        assert png(view["image"]).shape[:2] == (h, w)
        assert [a["label"] for a in view["annotations"]] == names  # every class, in class order (one colour each)
    (labels_png,) = [f for f in files if f.endswith("_labels.png")]
    (coarse_png,) = [f for f in files if f.endswith("_coarse.png")]
    with Image.open(labels_png) as im:
        assert im.mode == "P" and im.size == (w, h)
    for view, path in ((annotated, labels_png), (coarse, coarse_png)):  # each view shows its own label map
        index = png(path)
        for i, mask in enumerate(annotation_masks(view).values()):
            np.testing.assert_array_equal(mask, index == i)
    assert [item["caption"].split(":")[0] for item in heatmaps] == names
    for item in heatmaps:
        assert png(item["image"]).shape == (h, w, 3)  # 160-px photos stay under the 384-px heatmap limit
    assert len({png(item["image"]).tobytes() for item in heatmaps}) == 3  # one map per class, not one map thrice
    assert [row[1] for row in table["data"]] == names
    assert abs(sum(row[3] for row in table["data"]) - 100) < 0.1
    assert "preset **voc21**" in summary and "mode **reference** (reference on" in summary and "TINY MODE" in summary


def test_trident_api_reads_synonyms_after_a_bar_names_open_mode_and_fits_the_stamp(client, photos, tmp_path):
    small = tmp_path / "small.png"  # a small overlay: the tiny-mode stamp used to run off its right edge
    with Image.open(photos["astronaut"]) as im:
        im.convert("RGB").resize((120, 90)).save(small)
    annotated, coarse, heatmaps, files, table, summary = trident(
        client, str(small), classes="person|astronaut; rocket; background", refine=False)
    assert [row[1:3] for row in table["data"]] == [["person", "person | astronaut"], ["rocket", "rocket"],
                                                   ["background", "background"]]
    assert len(heatmaps) == 3
    assert "preset **open**" in summary and "mode **product** (reference off" in summary
    assert "refinement off" in summary
    refined, before = annotation_masks(annotated), annotation_masks(coarse)
    assert all(np.array_equal(refined[k], before[k]) for k in refined)  # no refinement: coarse = labels
    (overlay,) = [f for f in files if f.endswith("_overlay.png")]
    banner = png(overlay)[:10].astype(int)  # the first rows: inside the stamp's strip, however it is laid out
    ink = (banner[..., 0] > 150) & (banner[..., 1] > 150) & (banner[..., 2] < 100)  # the yellow letters
    columns = np.flatnonzero(ink.any(axis=0))
    assert columns.size and columns.max() < 120 - 1, "the stamp's text runs into the image's right edge"


def test_trident_api_refuses_a_line_break_with_the_syntax(client, photos):
    with pytest.raises(AppError, match="one line, classes separated by ';'"):
        trident(client, photos["chelsea"], classes="cat\ngrass\nbackground")


def test_view_api_names_every_trident_output(client):
    returns = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/trident"]["returns"]
    labels = [r["label"] for r in returns]
    assert len(labels) == 6 and not [label for label in labels if label.startswith("value_")], labels
    assert "Summary" in labels and any("before SAM refinement" in label for label in labels)


# ------------------------------------------------------------------------------------------- browser
EXAMPLE_ROWS = ["person|astronaut; rocket; flag; background|sky|wall", "cat|kitten; grass; background|wall",
                "cup; saucer; spoon; table; background"]


def test_browser_trident_examples_show_the_class_lists_as_typed(page):
    """The Trident tab is opened after the page has loaded (its Examples mount then): every class list shows,
    and opening it raises no page error."""
    from playwright.sync_api import expect

    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(error.message))
    open_tab(page, "Trident")
    examples = page.locator("#trident-examples")
    expect(examples.locator("tbody tr")).to_have_count(4)
    for row in EXAMPLE_ROWS:
        expect(examples.get_by_text(row, exact=True)).to_have_count(1)
    assert not errors, errors


def test_browser_trident_tab_uploads_a_photo_and_shows_every_map(page, photos, tmp_path):
    from playwright.sync_api import expect

    open_tab(page, "Trident")
    examples = page.locator("#trident-examples")
    page.locator("#trident-image").get_by_role("button", name="Remove Image").click()
    page.locator("#trident-image input[type=file]").set_input_files(photos["chelsea"])
    expect(page.locator("#trident-image img").first).to_be_visible()
    page.locator("#trident-classes input").fill("cat|kitten; grass; background")
    click(page, "#trident-run")
    summary = page.locator("#trident-summary")
    expect(summary).to_contain_text("3 classes")
    expect(summary).to_contain_text("mode open (reference off")
    expect(page.locator("#trident-annotated img").first).to_be_visible()
    expect(page.locator("#trident-coarse img").first).to_be_visible()
    heatmaps = page.locator("#trident-heatmaps")
    expect(heatmaps.locator("img")).to_have_count(3)
    for name in ("cat:", "grass:", "background:"):
        expect(heatmaps).to_contain_text(name)
    expect(page.locator("#trident-howto")).to_contain_text("How to read this")
    shot(page, tmp_path, "trident")
    # The benchmark Examples row runs as is: no class names, voc21's 21 classes and its threshold.
    examples.get_by_text("voc21", exact=True).click()
    expect(page.locator("#trident-preset input")).to_have_value("voc21")
    click(page, "#trident-run")
    expect(summary).to_contain_text("21 classes, preset voc21, mode reference (reference on")
    expect(heatmaps.locator("img")).to_have_count(21)
    expect(heatmaps).to_contain_text("aeroplane:")
    shot(page, tmp_path, "trident_example")
    # An empty class list with the open preset: an error message in the page.
    examples.locator("tbody tr").nth(2).click()  # back to the open preset
    expect(page.locator("#trident-preset input")).to_have_value("open")
    page.locator("#trident-classes input").fill("")
    click(page, "#trident-run")
    expect(page.locator(".toast-message-text").first).to_contain_text("no class names given")
