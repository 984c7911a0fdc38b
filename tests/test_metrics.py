"""mIoU harness against a confusion matrix computed by hand; dataset layouts; the eval command."""

import json

import numpy as np
import pytest
from PIL import Image

from vision.imaging import palette
from vision.metrics import ConfusionMatrix, DatasetError, dataset_samples, evaluate, load_label, reduce_zero_label

# Three 2x3 images, 3 classes, 255 ignored. By hand (rows: truth, columns: prediction):
#   truth 0: [5, 1, 1]   truth 1: [0, 5, 0]   truth 2: [1, 0, 3]      (16 valid pixels)
#   IoU = 5/(7+6-5) = 0.625, 5/(5+6-5) = 5/6, 3/(4+4-3) = 0.6; mIoU = 0.686111; aAcc = 13/16
GTS = [np.array([[0, 0, 1], [1, 2, 255]]), np.array([[2, 2, 2], [0, 255, 1]]), np.array([[1, 1, 0], [0, 0, 0]])]
PREDS = [np.array([[0, 1, 1], [1, 2, 2]]), np.array([[2, 0, 2], [0, 0, 1]]), np.array([[1, 1, 0], [2, 0, 0]])]
HAND_MATRIX = np.array([[5, 1, 1], [0, 5, 0], [1, 0, 3]])
HAND_IOU = [0.625, 5 / 6, 0.6]


def voc_folder(root, gts, names=("a", "b", "c")):
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name, gt in zip(names, gts):
        Image.fromarray(np.full((*gt.shape, 3), 128, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        label = Image.fromarray(gt.astype(np.uint8), mode="P")
        label.putpalette(palette(256).reshape(-1).tolist())  # VOC's labels are palette PNGs
        label.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names) + "\n")
    return root


def test_confusion_matrix_equals_hand_computation():
    m = ConfusionMatrix(3)
    for p, g in zip(PREDS, GTS):
        m.update(p, g)
    assert np.array_equal(m.matrix, HAND_MATRIX)
    assert np.allclose(m.iou(), HAND_IOU)
    assert m.miou() == pytest.approx(sum(HAND_IOU) / 3)
    assert m.miou() == pytest.approx(0.686111, abs=1e-6)
    assert m.aacc() == pytest.approx(13 / 16)
    assert np.allclose(m.accuracy(), [5 / 7, 1.0, 0.75])


def test_harness_on_a_synthetic_voc_folder_matches_hand_computation(tmp_path):
    root = voc_folder(tmp_path / "VOC2012", GTS)
    samples = dataset_samples("voc21", root)
    assert [s.id for s in samples] == ["a", "b", "c"]
    by_name = dict(zip("abc", PREDS))
    matrix = evaluate(lambda path: by_name[path.stem], samples, num_classes=3)
    assert np.array_equal(matrix.matrix, HAND_MATRIX)
    summary = matrix.summary(["x", "y", "z"])
    assert summary["mIoU"] == pytest.approx(0.686111, abs=1e-6) and summary["images"] == 3
    table = matrix.table(["x", "y", "z"])
    assert "62.50" in table and "83.33" in table and "68.61" in table


def test_ignore_label_is_never_counted():
    m = ConfusionMatrix(2)
    m.update(np.array([[0, 1, 1]]), np.array([[255, 255, 255]]))
    assert m.matrix.sum() == 0 and np.isnan(m.miou())
    m.update(np.array([[1, 1]]), np.array([[1, 255]]))
    assert m.matrix.sum() == 1 and np.isnan(m.iou()[0]) and m.miou() == 1.0  # absent class left out


def test_reduce_zero_label():
    gt = np.array([[0, 1, 2], [255, 21, 0]])
    assert reduce_zero_label(gt).tolist() == [[255, 0, 1], [255, 20, 255]]


def test_voc20_layout_reduces_zero_label(tmp_path):
    root = voc_folder(tmp_path / "voc", [np.array([[0, 1], [2, 255]])], names=("a",))
    (sample,) = dataset_samples("voc20", root)
    assert load_label(sample.label, reduce_zero=True).tolist() == [[255, 0], [1, 255]]
    m = evaluate(lambda p: np.array([[1, 0], [1, 0]]), [sample], 2, reduce_zero=True)
    assert np.array_equal(m.matrix, [[1, 0], [0, 1]])


def test_bad_inputs_to_the_harness(tmp_path):
    with pytest.raises(DatasetError, match="JPEGImages"):
        dataset_samples("voc21", tmp_path)
    root = voc_folder(tmp_path / "v", GTS)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("a\nmissing\n")
    with pytest.raises(DatasetError, match="missing"):
        dataset_samples("voc21", root)
    m = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        m.update(np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="outside"):
        m.update(np.zeros((1, 1)), np.full((1, 1), 7))


def test_other_layouts_are_found(tmp_path):
    ade = tmp_path / "ADEChallengeData2016"
    (ade / "images" / "validation").mkdir(parents=True)
    (ade / "annotations" / "validation").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(ade / "images" / "validation" / "ADE_val_1.jpg")
    Image.new("L", (4, 4)).save(ade / "annotations" / "validation" / "ADE_val_1.png")
    assert [s.id for s in dataset_samples("ade20k", ade)] == ["ADE_val_1"]
    city = tmp_path / "cityscapes"
    (city / "leftImg8bit" / "val" / "bonn").mkdir(parents=True)
    (city / "gtFine" / "val" / "bonn").mkdir(parents=True)
    Image.new("RGB", (4, 2)).save(city / "leftImg8bit" / "val" / "bonn" / "bonn_000_leftImg8bit.png")
    Image.new("L", (4, 2)).save(city / "gtFine" / "val" / "bonn" / "bonn_000_gtFine_labelTrainIds.png")
    (s,) = dataset_samples("cityscapes", city)
    assert s.id == "bonn/bonn_000" and s.label.name == "bonn_000_gtFine_labelTrainIds.png"


def test_eval_command_end_to_end_in_tiny_mode(tiny_hub, tmp_path, capsys):
    from vision.cli import main

    gts = [np.random.default_rng(i).integers(0, 21, (24, 32)) for i in range(3)]
    root = voc_folder(tmp_path / "VOC2012", gts)
    out = tmp_path / "summary.json"
    code = main(["--tiny", "eval", "trident", "--preset", "voc21", "--root", str(root), "--limit", "2",
                 "--json", str(out), "--no-refine"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "TINY MODE" in printed and "aeroplane" in printed and "mIoU" in printed and "reference=on" in printed
    summary = json.loads(out.read_text())
    assert summary["images"] == 2 and summary["tiny"] is True and 0.0 <= summary["mIoU"] <= 1.0
    assert summary["reference"] is True  # a benchmark preset runs the reference's behaviour
    assert len(summary["per_class"]) == 21
    assert main(["--tiny", "eval", "trident", "--preset", "ade20k", "--root", str(root)]) == 2
