"""CorrCLIP from the command line (tiny models): ``trident --method corrclip`` in batch mode and
``eval trident --method corrclip`` (the same table as Trident's), and the options of the wrong method."""

import json
from pathlib import Path

import numpy as np
from PIL import Image
from test_metrics import voc_folder

from vision.imaging import sample_image


def _cli(argv: list[str]) -> int:
    """``python -m vision ...`` in-process, on the session's shared tiny hub."""
    from vision.cli import build_parser

    args = build_parser().parse_args(argv)
    return args.run(args)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_trident_cli_runs_corrclip_over_a_folder(tiny_hub, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(sample_image("chelsea")[::3, ::3].copy()).save(src / "cat.jpg")
    out = tmp_path / "out"
    argv = ["trident", "--method", "corrclip", "--labels", "cat; grass; background", "--points-per-side", "2",
            "--input", str(src), "--output", str(out), "--no-progress"]
    assert _cli(argv) == 0
    (row,) = _rows(out / "results.jsonl")
    assert row["status"] == "ok" and row["method"] == "corrclip" and row["preset"] == "corrclip"
    assert row["models"]["mask_generator"] == "sam_b" and row["tiny"] is True
    size = Image.open(src / "cat.jpg").size
    assert Image.open(out / row["outputs"]["labels.png"]).size == size
    regions = Image.open(out / row["outputs"]["regions.png"])
    assert regions.size == size and np.asarray(regions).max() == row["regions"]
    assert (out / "cat.regions_overlay.png").is_file()


def test_options_of_the_other_method_are_refused(tiny_hub, tmp_path, capsys):
    base = ["--labels", "cat; background", "--input", str(tmp_path), "--output", str(tmp_path / "o")]
    assert _cli(["trident", "--method", "corrclip", "--no-refine", *base]) == 2
    assert "--no-refine do(es) not apply to --method corrclip" in capsys.readouterr().err
    assert _cli(["trident", "--method", "trident", "--preset", "corrclip_voc21", *base]) == 2
    assert "--preset corrclip_voc21 is a corrclip preset, not --method trident" in capsys.readouterr().err
    assert _cli(["trident", "--points-per-side", "4", *base]) == 2
    assert "--points-per-side do(es) not apply to --method trident" in capsys.readouterr().err


def test_eval_corrclip_writes_tridents_table(tiny_hub, tmp_path, capsys):
    from vision.cli import main

    gts = [np.random.default_rng(i).integers(0, 21, (24, 32)) for i in range(2)]
    root = voc_folder(tmp_path / "VOC2012", gts, names=("a", "b"))
    out = tmp_path / "summary.json"
    code = main(["--tiny", "eval", "trident", "--method", "corrclip", "--preset", "voc21", "--root", str(root),
                 "--json", str(out), "--points-per-side", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "TINY MODE" in printed and "CorrCLIP voc21: 2 images" in printed and "preset=corrclip_voc21" in printed
    assert "aeroplane" in printed and "mIoU" in printed and "reference=on" in printed
    summary = json.loads(out.read_text())
    assert (summary["method"], summary["preset"], summary["benchmark"]) == ("corrclip", "corrclip_voc21", "voc21")
    assert summary["images"] == 2 and len(summary["per_class"]) == 21 and 0.0 <= summary["mIoU"] <= 1.0
    assert summary["config"]["points_per_side"] == 2 and summary["config"]["clip"] == "metaclip_b16"


def test_eval_corrclip_on_pre_generated_region_masks(tiny_hub, tmp_path, capsys):
    """--region-masks DIR: the reference's pre-generated masks (DIR/<stem>.npz, 'instance_mask'), checked
    for every image before the run."""
    from vision.cli import main

    gts = [np.random.default_rng(i).integers(0, 21, (24, 32)) for i in range(2)]
    root = voc_folder(tmp_path / "VOC2012", gts, names=("a", "b"))
    masks = tmp_path / "region_masks"
    masks.mkdir()
    ids = np.zeros((24, 32), np.int64)
    ids[:, 16:] = 7
    np.savez(masks / "a.npz", instance_mask=ids)
    argv = ["--tiny", "eval", "trident", "--method", "corrclip", "--preset", "voc20", "--root", str(root),
            "--region-masks", str(masks), "--json", str(tmp_path / "s.json")]
    assert main(argv) == 2
    assert f"1 of 2 images have no masks file, e.g. {masks / 'b.npz'}" in capsys.readouterr().err
    np.savez(masks / "b.npz", instance_mask=ids)
    assert main(argv) == 0
    assert f"region_masks={masks}" in capsys.readouterr().out
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["region_masks"] == str(masks) and summary["preset"] == "corrclip_voc20"
    np.savez(masks / "b.npz", masks=ids)  # the wrong array name
    assert main(argv) == 2
    assert "has no 'instance_mask' array (has: masks)" in capsys.readouterr().err
    assert main([*argv[:4], "trident", *argv[5:]]) == 2  # Trident takes no region masks
    assert "--region-masks" in capsys.readouterr().err
