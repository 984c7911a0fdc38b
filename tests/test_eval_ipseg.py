"""``eval ipseg`` end to end in tiny mode on a synthetic dataset in each layout; settings; bad input.

Tiny mode runs IPSeg DINOv2-only (``--set sd_weight=0``) to keep each run to a few seconds.
"""

import json

import numpy as np
import pytest
from PIL import Image

from vision.cli import main
from vision.evaluation import records as R
from vision.evaluation.synthetic_datasets import build
from vision.hub import set_hub

SIZE = (48, 64)
FAST = ["--set", "sd_weight=0"]


@pytest.fixture
def hub(tiny_hub, one_torch_thread):
    return set_hub(tiny_hub)


def run_eval(tmp_path, layout, *extra, classes=2, images=3, out="out"):
    root = tmp_path / layout
    if not root.exists():
        build(layout, root, classes=classes, images=images, size=SIZE)
    code = main(["eval", "ipseg", "--dataset", layout, "--root", str(root), "--out", str(tmp_path / out),
                 *FAST, *extra])
    return code, tmp_path / out


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_perseg_end_to_end_reports_miou_fbiou_biou(hub, tmp_path, capsys):
    code, out = run_eval(tmp_path, "perseg", "--json", str(tmp_path / "s.json"))
    assert code == 0
    text = capsys.readouterr().out
    assert "TINY MODE" in text and "mIoU" in text and "bIoU" in text
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["tiny"] and summary["episodes"] == 4
    assert summary["config"]["feature_source"] == "dinov2-only" and summary["config"]["mode"] == "product"
    items = lines(out / "items.jsonl")
    assert len(items) == 4 and all(0 <= i["iou"] <= 1 and "biou" in i for i in items)
    # both objects have a class IoU and (one fold) the mIoU is their mean
    ious = [summary["per_class"][c]["IoU"] for c in ("chelsea", "coffee")]
    assert summary["mean"]["mIoU"] == pytest.approx(np.mean(ious), abs=1e-6)
    for name in ("episodes.jsonl", "summary.json", "table.txt", "miou_per_class.png"):
        assert (out / name).is_file()


def test_fss_end_to_end(hub, tmp_path):
    code, out = run_eval(tmp_path, "fss", "--shots", "2")
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 6 and summary["shots"] == 2 and "bIoU" not in summary["mean"]
    assert all(len(e["supports"]) == 2 for e in lines(out / "episodes.jsonl"))


def test_coco_rerun_from_the_episode_file_gives_the_same_episodes(hub, tmp_path):
    code, out = run_eval(tmp_path, "coco", "--folds", "0", "1", "--episodes", "2", classes=4)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["folds"]) == {"0", "1"} and summary["episodes"] == 4
    assert "mean" in (out / "table.txt").read_text()
    code, again = run_eval(tmp_path, "coco", "--episode-file", str(out / "episodes.jsonl"), out="again", classes=4)
    assert code == 0
    assert (again / "episodes.jsonl").read_text() == (out / "episodes.jsonl").read_text()
    first, second = lines(out / "items.jsonl"), lines(again / "items.jsonl")
    assert [(a["episode"], a["fold"], a["iou"]) for a in first] == [(b["episode"], b["fold"], b["iou"]) for b in second]


def test_pascal_end_to_end(hub, tmp_path):
    code, out = run_eval(tmp_path, "pascal", "--folds", "0", "--episodes", "2", classes=4)
    assert code == 0
    assert {e["category"] for e in lines(out / "episodes.jsonl")} <= {"aeroplane", "bicycle", "bird", "boat", "bottle"}


def test_engine_settings_pass_through_and_unknown_ones_are_named(hub, tmp_path, capsys):
    import argparse

    from vision.evaluation.ipseg_eval import engine_config

    args = argparse.Namespace(set=["top_k=16", "sd_weight=0"], features=None, sam="sam_h", preset=None)
    config = engine_config(args)
    assert (config.top_k, config.sd_weight, config.sam_model) == (16, 0, "sam_h")
    code, _ = run_eval(tmp_path, "perseg", "--set", "no_such_setting=1")
    assert code == 2 and "no_such_setting" in capsys.readouterr().err
    code, _ = run_eval(tmp_path, "perseg", "--sam", "sam_nonexistent")
    assert code == 2 and "sam_nonexistent" in capsys.readouterr().err  # the engine validates it


def test_bad_input_is_a_clear_message_naming_the_file(hub, tmp_path, capsys):
    code = main(["eval", "ipseg", "--dataset", "fss", "--root", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "o")])
    assert code == 2 and str(tmp_path / "missing") in capsys.readouterr().err
    root = build("perseg", tmp_path / "perseg", classes=1, images=2, size=SIZE)
    mask = root / "Annotations" / "chelsea" / "01.png"
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(mask)
    code, _ = run_eval(tmp_path, "perseg")
    assert code == 2 and str(mask) in capsys.readouterr().err


def test_make_config_presets_and_fields():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Plain:
        a: int = 1

    @dataclass(frozen=True)
    class WithPresets:
        a: int = 1
        b: str = "x"

        @classmethod
        def from_preset(cls, name):
            return cls(a=7)

    assert R.make_config(WithPresets, "paper", {"b": "y", "a": None}) == WithPresets(7, "y")
    with pytest.raises(R.EvalError, match="no named presets"):
        R.make_config(Plain, "paper")
    with pytest.raises(R.EvalError, match="'c'"):
        R.make_config(Plain, None, {"c": 2})
    assert R.parse_settings(["x=0.5", "y=(1, 2)", "z=dino+sd", "w=None"]) == {"x": 0.5, "y": (1, 2), "z": "dino+sd",
                                                                             "w": None}
    with pytest.raises(R.EvalError, match="KEY=VALUE"):
        R.parse_settings(["oops"])


class OracleEngine:
    """Answers every query with its ground-truth mask (or its complement): known metrics, no models."""

    def __init__(self, dataset, episodes, invert=False):
        from vision.evaluation.fewshot_datasets import load_rgb

        self.truth = {(load_rgb(dataset.root / e.query).tobytes(), e.category): dataset.masks(e).query
                      for e in episodes}  # an image is a query of each class it holds
        self.invert = invert

    def __call__(self, concept, image):
        from types import SimpleNamespace

        mask = self.truth[np.asarray(image).tobytes(), concept.name]
        mask = ~mask if self.invert else mask
        return SimpleNamespace(mask=mask, masks=[mask], presence=1.0, concepts=[SimpleNamespace(present=True)])


@pytest.mark.parametrize("layout", ["perseg", "pascal"])
def test_harness_scores_an_oracle_at_one_and_its_complement_at_zero(tmp_path, layout):
    from vision.evaluation import fewshot_datasets as D
    from vision.evaluation.ipseg_eval import evaluate_episodes, summarise

    dataset = D.open_dataset(layout, build(layout, tmp_path / layout, classes=4, images=3, size=SIZE),
                             cache_dir=tmp_path)
    episodes = D.make_episodes(dataset, dataset.folds()[:2], 1, 4, seed=0)
    boundary = layout == "perseg"
    metrics, table = summarise(evaluate_episodes(OracleEngine(dataset, episodes), dataset, episodes,
                                                 boundary=boundary)[0], boundary)
    assert all(v == 1.0 for v in metrics["mean"].values())
    assert all(c["IoU"] == 1.0 for c in metrics["per_class"].values())
    wrong, _ = summarise(evaluate_episodes(OracleEngine(dataset, episodes, invert=True), dataset, episodes,
                                           boundary=boundary)[0], boundary)
    assert wrong["mean"]["mIoU"] == 0.0 and wrong["mean"]["FB-IoU"] == 0.0
    assert ("mean" in table) == (layout == "pascal")  # several folds: a mean row
