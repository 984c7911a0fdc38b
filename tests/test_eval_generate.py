"""``eval generate``: prompt files, the CLIP score with a stub encoder, the sweep end to end in tiny mode."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vision.cli import main
from vision.evaluation.clip_scoring import ClipScorer
from vision.evaluation.generation_eval import load_prompts
from vision.evaluation.records import EvalError
from vision.hub import set_hub


# ------------------------------------------------------------------------------------------------ prompts
def test_prompt_files_in_each_format(tmp_path):
    plain = tmp_path / "p.txt"
    plain.write_text("a fox\n\n  a lighthouse at dusk  \n")
    assert load_prompts(plain) == ["a fox", "a lighthouse at dusk"]
    parti = tmp_path / "PartiPrompts.tsv"
    parti.write_text("Prompt\tCategory\tChallenge\tNote\na bird\tAnimals\tBasic\t\nA map\tArts\tWriting\tx\n")
    assert load_prompts(parti) == ["a bird", "A map"]
    coco = tmp_path / "captions_val2017.json"
    coco.write_text(json.dumps({"annotations": [{"image_id": 9, "caption": "nine a"}, {"image_id": 2, "caption": "two"},
                                                {"image_id": 9, "caption": "nine b"}]}))
    assert load_prompts(coco) == ["two", "nine a"]  # the first caption of each image, images by id
    assert load_prompts(coco, limit=1) == ["two"]
    assert load_prompts(parti, fmt="lines")[0].startswith("Prompt")


@pytest.mark.parametrize("name,content", [("empty.txt", "\n  \n"), ("header.tsv", "Prompt\tCategory\n"),
                                          ("none.json", '{"annotations": []}')])
def test_prompt_file_without_prompts_names_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(EvalError, match=f"{path} has no prompts"):
        load_prompts(path)


def test_bad_prompt_files(tmp_path):
    with pytest.raises(EvalError, match="no such prompt file"):
        load_prompts(tmp_path / "missing.txt")
    tsv = tmp_path / "x.tsv"
    tsv.write_text("Text\tCategory\nhello\tA\n")
    with pytest.raises(EvalError, match="'Prompt' column"):
        load_prompts(tsv)
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(EvalError, match="not a JSON file"):
        load_prompts(bad)


# ------------------------------------------------------------------------------------------------ scoring
class StubClip(torch.nn.Module):
    """encode_image: the preprocessed 3-vector as is; encode_text: the 'token' vector as is."""

    def encode_image(self, pixels):
        return pixels

    def encode_text(self, tokens):
        return tokens.float()


TEXTS = {"red": [1.0, 0.0, 0.0], "red and green": [1.0, 1.0, 0.0], "not red": [-1.0, 0.0, 0.0]}


def stub_scorer():
    return ClipScorer(StubClip(), lambda texts: torch.tensor([TEXTS[t] for t in texts]),
                      preprocess=lambda pil: torch.tensor(np.asarray(pil)[0, 0], dtype=torch.float32))


def test_clip_score_with_a_stub_encoder_by_hand():
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    scores = stub_scorer().clip_score([red, red, red], ["red", "red and green", "not red"])
    # 100 x max(cos, 0): cos = 1, 1/sqrt(2), -1 (clamped to 0)
    assert scores == pytest.approx([100.0, 100 / np.sqrt(2), 0.0])
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        stub_scorer().cosine([red, red], ["red"])


def test_hub_scorer_embeddings_are_normalised(tiny_hub):
    scorer = ClipScorer.from_hub("clip_g14", tiny_hub)
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    emb = scorer.image_embeddings([image, image[::-1]])
    assert emb.shape[0] == 2 and torch.allclose(emb.norm(dim=-1), torch.ones(2))
    assert scorer.text_embeddings(["a", "b"]).shape == emb.shape
    assert (scorer.clip_score([image], ["a cat"]) >= 0).all()


# ---------------------------------------------------------------------------------------------- end to end
def test_sweep_end_to_end_in_tiny_mode(tiny_hub, one_torch_thread, tmp_path, capsys):
    set_hub(tiny_hub)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in snow\na lighthouse at dusk\n")
    out = tmp_path / "out"
    code = main(["eval", "generate", "--prompts", str(prompts), "--out", str(out), "--deepcache", "1", "3",
                 "--branch", "0", "1", "--steps", "3", "--json", str(tmp_path / "s.json")])
    assert code == 0
    text = capsys.readouterr().out
    assert "TINY MODE" in text and "speed-up" in text
    rows = list(csv.DictReader(open(out / "settings.csv")))
    assert [r["setting"] for r in rows] == ["baseline", "N1_b0", "N1_b1", "N3_b0", "N3_b1"]
    assert rows[0]["speedup"] == "1.0" and all(float(r["speedup"]) > 0 for r in rows)
    for r in rows[1:]:
        assert float(r["gmacs_partial"]) < float(r["gmacs_full"])
        assert int(r["full_steps"]) == (3 if r["N"] == "1" else 1)
    assert float(rows[3]["mac_speedup_bound"]) > 1.0 and float(rows[1]["mac_speedup_bound"]) == 1.0
    for label in ("baseline", "N1_b0", "N3_b1"):
        assert sorted(p.name for p in (out / "images" / label).iterdir()) == ["00000.png", "00001.png"]
    # N = 1 (every step full) is the uncached pipeline: the same seeds give the same images
    same = [np.asarray(Image.open(out / "images" / lab / "00001.png")) for lab in ("baseline", "N1_b1")]
    assert (same[0] == same[1]).all()
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(items) == 10 and {i["seed"] for i in items} == {0, 1}
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["tiny"] and summary["scorer"] == "clip_g14" and len(summary["rows"]) == 5
    assert (out / "clip_vs_speedup.png").is_file() and (out / "prompts.txt").read_text().count("\n") == 2


def test_command_errors(tiny_hub, tmp_path, capsys):
    set_hub(tiny_hub)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["eval", "generate", "--prompts", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert str(empty) in capsys.readouterr().err
    ok = tmp_path / "ok.txt"
    ok.write_text("a fox\n")
    assert main(["eval", "generate", "--prompts", str(ok), "--out", str(tmp_path / "o"), "--branch", "40"]) == 2
    assert "branch" in capsys.readouterr().err
    assert main(["eval", "generate", "--prompts", str(ok), "--out", str(tmp_path / "o"), "--deepcache", "0"]) == 2
    assert "--deepcache" in capsys.readouterr().err
