"""``eval story``: [name] tags, aCCS with fixed embeddings (and its all-pairs fallback), end to end in tiny
mode, bad input."""

import csv
import json
import math

import pytest
import torch

from vision.cli import main
from vision.evaluation.records import EvalError
from vision.evaluation.story_eval import ALL_PAIRS, CHARACTERS, accs, load_stories, parse_story
from vision.hub import set_hub


def test_tags_mark_characters_and_stay_in_the_prompt(tmp_path):
    path = tmp_path / "red.txt"
    path.write_text("[Red] walks in the forest\n\n a [wolf] hides \n[Red] meets the [Wolf] and [red]\n")
    story = parse_story(path)
    assert story.prompts == ("Red walks in the forest", "a wolf hides", "Red meets the Wolf and red")
    assert story.characters == (("red",), ("wolf",), ("red", "wolf"))
    assert story.appearances() == {"red": [0, 2], "wolf": [1, 2]}


def test_accs_with_fixed_embeddings_by_hand():
    s = 1 / math.sqrt(2)
    frames = torch.tensor([[1.0, 0.0], [0.0, 1.0], [s, s], [1.0, 0.0]])
    # a: first frame 0, later 2 and 3 -> cos 1/sqrt(2), 1; b: first 1, later 2 -> 1/sqrt(2); c: seen once
    value, pairs, basis = accs(frames, {"a": [0, 2, 3], "b": [1, 2], "c": [3]})
    assert (pairs, basis) == (3, CHARACTERS)
    assert value == pytest.approx((s + 1 + s) / 3)
    # no character seen twice: all frame pairs of frames 0..2 -> (0 + s + s) / 3
    value, pairs, basis = accs(frames[:3], {"c": [1]})
    assert (pairs, basis) == (3, ALL_PAIRS)
    assert value == pytest.approx(2 * s / 3)
    assert accs(2 * frames[:2], {})[0] == pytest.approx(0.0)  # embeddings are normalised first


def test_bad_story_input_names_the_file(tmp_path):
    with pytest.raises(EvalError, match=f"{tmp_path / 'missing'} is not a folder"):
        load_stories(tmp_path / "missing")
    (tmp_path / "stories").mkdir()
    with pytest.raises(EvalError, match="holds no story"):
        load_stories(tmp_path / "stories")
    empty = tmp_path / "stories" / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(EvalError, match=f"{empty} has no prompts"):
        load_stories(tmp_path / "stories")


def test_round_curve_end_to_end_in_tiny_mode(tiny_hub, one_torch_thread, tmp_path, capsys):
    set_hub(tiny_hub)
    stories = tmp_path / "stories"
    stories.mkdir()
    (stories / "red.txt").write_text("[Red] walks in the forest\na [wolf] hides\n[Red] meets the [wolf]\n")
    (stories / "castle.txt").write_text("a castle on a hill\na dragon over the castle\n")
    out = tmp_path / "out"
    args = ["eval", "story", "--stories", str(stories), "--out", str(out), "--rounds", "1", "--steps", "2",
            "--json", str(tmp_path / "s.json")]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "TINY MODE" in text and "aCCS" in text and "all frame pairs for 2 story-round(s)" in text
    rows = list(csv.DictReader(open(out / "rounds.csv")))
    assert [r["round"] for r in rows] == ["0", "1"] and all(r["stories_all_pairs_accs"] == "1" for r in rows)
    assert float(rows[0]["lambda"]) == 0.0 and float(rows[1]["lambda"]) == pytest.approx(0.3)
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    frames = [i for i in items if "frame" in i]
    per_story = [i for i in items if "accs" in i]
    assert len(frames) == 5 * 2 and len(per_story) == 2 * 2
    assert {i["accs_basis"] for i in per_story if i["story"] == "red"} == {CHARACTERS}
    assert all(-1 <= i["clip_t"] <= 1 for i in frames)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["tiny"] and set(summary["rounds"]) == {"0", "1"}
    assert (out / "rounds.png").is_file() and (out / "stories" / "red" / "manifest.json").is_file()
    assert main(args) == 0  # a rerun resumes the finished stories and gives the same table
    assert list(csv.DictReader(open(out / "rounds.csv"))) == rows


def test_story_command_errors(tiny_hub, tmp_path, capsys):
    set_hub(tiny_hub)
    assert main(["eval", "story", "--stories", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.txt").write_text("a fox\n")
    assert main(["eval", "story", "--stories", str(tmp_path / "s"), "--out", str(tmp_path / "o"),
                 "--style", "nope"]) == 2
    assert "style" in capsys.readouterr().err


# ------------------------------------------------------------------- characters and ViStoryBench (#27)


def test_crop_windows_and_identity_of_a_pasted_reference(tiny_hub):
    import numpy as np

    from vision.evaluation.identity import IdentityScorer, crop_windows

    boxes = crop_windows(64, 64)
    assert len(boxes) == 19 and boxes[0] == (0, 0, 64, 64) and (32, 32, 64, 64) in boxes and (0, 0, 32, 32) in boxes
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    frame[32:, 32:] = reference  # the character stands in the bottom-right quarter
    for name in ("dinov2_b14", "clip_b16"):
        scorer = IdentityScorer(name, tiny_hub)
        score, box = scorer.identity(frame, scorer.reference([reference]))
        assert box == (32, 32, 64, 64) and score == pytest.approx(1.0, abs=1e-5), name


def _vistorybench(folder):
    """A two-story ViStoryBench folder: story.json files (en/ch fields) and character pictures."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)

    def picture(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(path)

    def shot(i, static, on_stage):
        return {"index": i, "Setting Description": {"en": "a snowy forest", "ch": "雪林"},
                "Static Shot Description": {"en": static, "ch": "..."}, "Shot Perspective Design": {"en": "wide"},
                "Characters Appearing": {"en": on_stage, "ch": []}}

    story = {"Characters": {"小红": {"name_en": "Red", "name_ch": "小红", "prompt_en": "a girl in a red hood"},
                            "Wolf": {"name_en": "Wolf", "prompt_en": "a grey wolf"},
                            "Hunter": {"name_en": "Hunter", "prompt_en": "a hunter"}},
             "Shots": [shot(1, "Red walks", ["Red"]), shot(2, "the wolf hides", ["Wolf"]),
                       shot(3, "Red meets the wolf", ["Red", "Wolf"])]}
    (folder / "01").mkdir(parents=True)
    (folder / "01" / "story.json").write_text(json.dumps(story, ensure_ascii=False), encoding="utf-8")
    picture(folder / "01" / "image" / "小红" / "00.png")
    picture(folder / "01" / "image" / "小红" / "01.jpg")
    picture(folder / "01" / "image" / "Wolf" / "00.png")  # Hunter has no pictures
    plain = {"Characters": {}, "Shots": [shot(1, "an empty road", []), shot(2, "rain", [])]}
    (folder / "02").mkdir()
    (folder / "02" / "story.json").write_text(json.dumps(plain), encoding="utf-8")


def test_vistorybench_layout_runs_with_characters_and_scores_their_identity(tiny_hub, one_torch_thread, tmp_path,
                                                                            capsys):
    set_hub(tiny_hub)
    data = tmp_path / "ViStory"
    _vistorybench(data)
    stories = load_stories(data)
    red = stories[0]
    assert red.prompts == ("Red walks. a snowy forest", "the wolf hides. a snowy forest",
                           "Red meets the wolf. a snowy forest")
    assert red.characters == (("Red",), ("Wolf",), ("Red", "Wolf")) and len(red.references["Red"]) == 2
    assert any("Hunter" in n and "no pictures" in n for n in red.notes)
    assert stories[1].references == {} and stories[1].characters == ((), ())
    out = tmp_path / "out"
    assert main(["eval", "story", "--stories", str(data), "--out", str(out), "--rounds", "1", "--steps", "2"]) == 0
    text = capsys.readouterr().out
    assert "char identity" in text
    rows = list(csv.DictReader(open(out / "rounds.csv")))
    assert [r["characters"] for r in rows] == ["2", "2"] and all(-1 <= float(r["character_identity"]) <= 1
                                                                 for r in rows)
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    per_character = [i for i in items if "character" in i]
    assert {(i["round"], i["character"]) for i in per_character} == {(r, c) for r in (0, 1) for c in ("Red", "Wolf")}
    red_round = next(i for i in per_character if i["character"] == "Red" and i["round"] == 1)
    assert [f["frame"] for f in red_round["frames"]] == [0, 2] and all(len(f["box"]) == 4 for f in red_round["frames"])
    manifest = json.loads((out / "stories" / "01" / "manifest.json").read_text())
    assert manifest["arguments"]["frame_characters"] == [["Red"], ["Wolf"], ["Red", "Wolf"]]
    summary = json.loads((out / "summary.json").read_text())
    assert "Hunter" in summary["notes"]["01"][0]
