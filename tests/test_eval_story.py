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
