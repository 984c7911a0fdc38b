"""``eval video``: J and F on known masks, the DAVIS-2017 layout and the one-shot layout on the synthetic
two-sequence dataset with tiny models (outputs, table, summary), and its errors."""

import json

import numpy as np
import pytest

from vision.cli import main
from vision.evaluation import video_eval as V
from vision.evaluation.synthetic_video import write_davis


def disk(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_j_and_f_on_known_masks():
    a = disk(100, 100, 50, 50, 20)
    assert V.region_j(a, a) == 1.0 and V.boundary_f(a, a) == 1.0
    empty = np.zeros_like(a)
    assert V.region_j(empty, empty) == 1.0 and V.boundary_f(empty, empty) == 1.0
    assert V.region_j(a, empty) == 0.0 and V.boundary_f(a, empty) == 0.0
    # A shift of 1 pixel is within the tolerance (ceil(0.008 x 141) = 2 px): F stays 1, J drops.
    shifted = np.roll(a, 1, axis=1)
    assert V.boundary_f(shifted, a) == 1.0 and V.region_j(shifted, a) < 1.0
    # Far apart: no boundary pixel matched.
    assert V.boundary_f(disk(100, 100, 20, 20, 10), disk(100, 100, 80, 80, 10)) == 0.0
    # A radius 4 px too small: the inner circle is beyond the 2-px tolerance, so F is 0; J = (16/20)^2.
    assert V.boundary_f(disk(100, 100, 50, 50, 16), a) == 0.0
    assert V.region_j(disk(100, 100, 50, 50, 16), a) == pytest.approx(16 ** 2 / 20 ** 2, abs=0.02)


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    return write_davis(tmp_path_factory.mktemp("davis"), frames=4, size=(96, 128))


def test_davis_layout_with_sam2(tiny_hub, one_torch_thread, davis, tmp_path):
    out = tmp_path / "out"
    assert main(["eval", "video", "--tiny", "--layout", "davis", "--root", str(davis), "--out", str(out)]) == 0
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert [i["task"] for i in items] == ["cup-astronaut/1", "cup-chelsea/1"]
    assert all(i["frames"] == 2 for i in items)  # 4 frames: the first and last are not scored
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layout"] == "davis" and summary["config"]["fields"]["track"] == "sam2" and summary["tiny"]
    assert set(summary["per_sequence"]) == {"cup-astronaut", "cup-chelsea"}
    mean = np.mean([i["J&F"] for i in items])
    assert summary["mean"]["J&F"] == pytest.approx(mean, abs=1e-5)
    assert "mean (over objects)" in (out / "table.txt").read_text() and (out / V.PLOT).stat().st_size > 1000


def test_oneshot_layout_takes_the_exemplar_from_another_sequence(tiny_hub, one_torch_thread, davis, tmp_path):
    out = tmp_path / "out"
    assert main(["eval", "video", "--tiny", "--layout", "oneshot", "--root", str(davis), "--out", str(out),
                 "--sequences", "1", "--set", "features=sam", "--set", "sam_model=sam_t"]) == 0
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert [i["task"] for i in items] == ["cup-astronaut/1<-cup-chelsea/1"]
    assert json.loads((out / "summary.json").read_text())["config"]["fields"]["track"] == "exemplar"


def test_eval_video_errors(davis, tmp_path, capsys):
    assert main(["eval", "video", "--tiny", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "JPEGImages/480p: no such folder" in capsys.readouterr().err
    bad = tmp_path / "pairs.txt"
    bad.write_text("cup-astronaut one cup-chelsea 0 1\n")
    assert main(["eval", "video", "--tiny", "--layout", "oneshot", "--root", str(davis), "--pairs", str(bad),
                 "--out", str(tmp_path / "o")]) == 2
    assert "pairs.txt line 1: expected 'target_seq target_object" in capsys.readouterr().err
