"""The Models tab on the session's tiny app server: the API view of the hub, and the tab as it first opens."""

from __future__ import annotations

import re

from app_harness import open_tab
from gradio_client import handle_file

FIRST_OPEN_MS = 30_000  # the tab fills on its own, without a click on Refresh (2 loaded CPU cores: seconds)


def _run_trident(client, photos) -> None:
    client.predict(handle_file(photos["coffee"]), "cup; background", "open", 0.0, True, "clip_b16",
                   api_name="/trident")


def test_models_panel_lists_loaded_tiny_models(client, photos):
    _run_trident(client, photos)
    summary, models, weights = client.predict(api_name="/models")
    assert "tiny (random weights)" in summary and "TINY MODE" in summary
    assert models["headers"][:2] == ["model", "loaded"]
    loaded = {row[0] for row in models["data"] if row[1] == "yes"}
    assert {"clip_b16", "dino_b16", "sam_b"} <= loaded
    registry = loaded - {"clip_tokenizer"} - {row[0] for row in models["data"] if row[5].startswith("user: ")}
    assert all(row[5] == "tiny (random)" for row in models["data"] if row[0] in registry)
    assert all(row[0].startswith(("checkpoint:", "controlnet:")) for row in models["data"]
               if row[0] in loaded and row[0] not in registry | {"clip_tokenizer"})  # the user's own (#26)
    assert {row[0] for row in weights["data"]} >= {"sam_b", "sd15_unet", "dinov2_b14"}


def test_browser_models_tab_shows_the_current_panel_on_its_first_open(page, client, photos):
    """One click on the tab of a fresh page: the panel as the hub is now (models loaded after the page was
    built), and no loading status left on any of its components (hidden ones included)."""
    from playwright.sync_api import expect

    _run_trident(client, photos)  # the hub now differs from the panel the page was built with
    summary_now, models_now, _ = client.predict(api_name="/models")
    loaded_now = re.search(r"\*\*Models loaded:\*\* (\d+)", summary_now).group(1)
    assert int(loaded_now) >= 3
    open_tab(page, "Models")
    summary = page.locator("#models-summary")
    expect(summary).to_contain_text(f"Models loaded: {loaded_now}", timeout=FIRST_OPEN_MS)
    expect(summary).to_contain_text("tiny (random weights)")
    table = page.locator("#models-table")
    for name in ("clip_b16", "dino_b16", "sam_b"):
        expect(table.locator("tr", has=page.get_by_text(name, exact=True))).to_contain_text("yes")
    expect(page.locator("#models-weights")).to_contain_text("sd15_unet")
    # nothing pending: no loading status (a greyed overlay, a spinner, or a hidden one) on the panel
    trackers = page.locator(", ".join(f"#models-{part} [data-testid=status-tracker].translucent"
                                      for part in ("summary", "table", "weights")))
    expect(trackers).to_have_count(0)
    page.wait_for_timeout(2000)  # and none appears once the tab has settled
    expect(trackers).to_have_count(0)
