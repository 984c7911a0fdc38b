"""#20.7: messages that named the wrong thing, in-process (the app's handlers and the CLI's printers)."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")


def test_a_ratio_of_times_is_worded_as_a_speed_up_or_a_slowdown():
    from vision.wording import speed_change

    assert speed_change(2.0, 1.0) == "2.00x faster"
    assert speed_change(1.0, 1.1) == "1.10x slower"  # was '0.91x faster'


def test_the_cli_words_a_slowdown_as_one(tmp_path, capsys):
    from vision import batch
    from vision.commands.generate import print_speedups

    timings = {"seconds": 1.1, "baseline_seconds": 1.0, "speedup": 0.909}
    line = {"id": "00001-a-fox", "status": "ok", "timings": timings}
    (tmp_path / "results.jsonl").write_text(json.dumps(line) + "\n")
    print_speedups(str(tmp_path), batch.prompt_items(["a fox"]))
    printed = capsys.readouterr().out
    assert "1.10x slower (1.00 s -> 1.10 s)" in printed and "faster" not in printed


def test_the_app_words_a_slowdown_as_one():
    from vision.ui import generate_tab

    config = SimpleNamespace(strength=0.75, steps=4, scheduler="ddim", preset="default", reference=False,
                             mode="product", deepcache=3, branch=1, schedule="uniform", cache_method="deepcache")
    calls = {"full_calls": 2, "partial_calls": 2, "full_steps": [0, 2], "controlnet_partial_calls": 0}
    result = SimpleNamespace(config=config, img2img=False, width=64, height=64, seeds=[0], seconds=1.1,
                             checkpoint=None, loras=(), control=None, cache={"method": "deepcache", "calls": calls},
                             speedup=1 / 1.1, baseline_seconds=1.0, notes=[],
                             difference=lambda: {"mean_abs": 1.0, "psnr_db": 40.0})
    summary = generate_tab._generation_summary(result)
    assert "1.10x slower" in summary and "speed-up: 0.91x" not in summary


def test_generate_model_help_describes_every_choice():
    """The 'Model' help described RealVisXL while sd15 was selected."""
    from vision.engines.generate.config import FAMILIES
    from vision.ui.generate_tab import MODEL_HELP

    assert all(f"{name}:" in MODEL_HELP for name in FAMILIES)


def test_sam_scores_are_explained_as_what_they_are():
    """SAM's predicted IoU can exceed 1 (1.011 was seen): '1 = sure' was wrong."""
    from vision.ui import segment_tab

    assert "1 = sure" not in segment_tab.HOW_TO_READ and "can exceed 1" in segment_tab.HOW_TO_READ


def test_the_page_builds_without_the_tabs_warning(tiny_hub):
    """'gr.Tabs() can only contain gr.Tab() ... received gr.Api()' at every start."""
    from vision.ui import layout

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layout.build_demo()
    assert not [w for w in caught if "can only contain gr.Tab()" in str(w.message)]


def test_one_minimum_image_side_everywhere(tiny_hub, tmp_path):
    """Trident accepted a 1x1 image where Segment refused under 8 px."""
    from vision.engines.segment import SegmentEngine
    from vision.engines.trident import TridentEngine
    from vision.imaging import MIN_SIDE, ImageError

    small = tmp_path / "dot.png"
    Image.fromarray(np.zeros((MIN_SIDE - 1, 40, 3), np.uint8)).save(small)
    with pytest.raises(ImageError, match=f"dot.png: 40x{MIN_SIDE - 1} pixels.*at least {MIN_SIDE} pixels"):
        TridentEngine()(str(small), "cat; background")
    with pytest.raises(ValueError, match=f"at least {MIN_SIDE} px"):
        SegmentEngine()(str(small), [[5, 2]])


def test_trident_names_the_upload_and_cuts_a_long_class_name(tiny_hub, tmp_path):
    """Trident named Gradio's temporary copy instead of the upload's name, and echoed a 10,000-character
    class name in full."""
    from vision.ui import trident_tab

    folder = tmp_path / "gradio" / "0123abcd"
    folder.mkdir(parents=True)
    bad = folder / "holiday.png"
    bad.write_text("not an image")
    with pytest.raises(gr.Error) as caught:
        trident_tab.run_trident(str(bad), "cat; background", "open", 0.0, False, "clip_b16")
    assert "holiday.png" in caught.value.message and str(folder) not in caught.value.message
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(photo)
    long_name = "cat" * 3400
    *_, summary = trident_tab.run_trident(str(photo), f"{long_name}; background", "open", 0.0, False, "clip_b16")
    assert long_name not in summary and len(summary) < 3000


def test_a_tiny_prompt_is_named_as_the_prompt(tiny_hub, tmp_path):
    """A 1x1 prompt was reported as 'no target could be segmented: <target>'."""
    from vision.ui import ipseg_tab

    prompt = {"background": np.zeros((1, 1, 3), np.uint8), "layers": [], "composite": None}
    target = tmp_path / "target.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(target)
    with pytest.raises(gr.Error) as caught:
        ipseg_tab.run_ipseg(prompt, [(str(target), None)], "mask", True, 1, 0.0, "sam_t")
    assert "prompt image" in caught.value.message and "no target could be segmented" not in caught.value.message
