"""Few-shot layouts on synthetic datasets (skimage photos, exact masks): seeded episodes, folds, bad input."""

import numpy as np
import pytest
from PIL import Image

from vision.evaluation import fewshot_datasets as D
from vision.evaluation.synthetic_datasets import build, coco_label, pascal_label
from vision.metrics import DatasetError

SIZE = (48, 64)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("fewshot")
    return {layout: build(layout, base / layout, classes=8, images=4, size=SIZE) for layout in D.DATASETS}


def test_synthetic_masks_are_exact_and_sized_like_their_images(roots):
    for layout in D.DATASETS:
        dataset = D.open_dataset(layout, roots[layout])
        folds = dataset.folds()
        episode = D.make_episodes(dataset, folds[:1], 1, 2, seed=0)[0]
        masks = dataset.masks(episode)
        assert masks.query.shape == SIZE and masks.query.any() and masks.supports[0].any()
    pascal = D.open_dataset("pascal", roots["pascal"])
    ep = D.make_episodes(pascal, [0], 1, 1, 0)[0]
    assert pascal.masks(ep).ignore.any()  # VOC's 255 band


def test_perseg_prompts_are_the_first_images_and_every_other_image_is_a_query(roots):
    episodes = D.make_episodes(D.open_dataset("perseg", roots["perseg"]), [None], 1, None, 0)
    assert len(episodes) == 8 * 3
    assert all(e.supports[0].endswith("/00.jpg") and not e.query.endswith("/00.jpg") for e in episodes)
    two = D.make_episodes(D.open_dataset("perseg", roots["perseg"]), [None], 2, None, 0)
    assert len(two) == 8 * 2 and all(e.supports[1].endswith("/01.jpg") for e in two)


def test_fss_every_test_image_is_one_query_with_other_images_as_prompts(roots):
    episodes = D.make_episodes(D.open_dataset("fss", roots["fss"]), [None], 2, None, 0)
    assert len(episodes) == 8 * 4 and len({e.query for e in episodes}) == 32
    for e in episodes:
        assert e.query not in e.supports and len(set(e.supports)) == 2
        assert all(s.split("/")[0] == e.query.split("/")[0] for s in e.supports)


@pytest.mark.parametrize("layout", ["fss", "coco", "pascal"])
def test_episodes_are_deterministic_for_a_seed(roots, layout, tmp_path):
    dataset = D.open_dataset(layout, roots[layout], cache_dir=tmp_path)
    folds = dataset.folds()[:2]
    a = D.make_episodes(dataset, folds, 1, 20, seed=3)
    b = D.make_episodes(D.open_dataset(layout, roots[layout], cache_dir=tmp_path), folds, 1, 20, seed=3)
    c = D.make_episodes(dataset, folds, 1, 20, seed=4)
    assert a == b
    assert [e.supports for e in a] != [e.supports for e in c]
    D.write_episodes(tmp_path / "episodes.jsonl", a)
    assert D.read_episodes(tmp_path / "episodes.jsonl", layout) == a


@pytest.mark.parametrize("layout,labels,total", [("coco", D.COCO20i.fold_labels, 80),
                                                 ("pascal", D.PASCAL5i.fold_labels, 20)])
def test_folds_are_disjoint_and_episodes_stay_in_their_fold(roots, layout, labels, total, tmp_path):
    folds = [set(labels(k)) for k in range(4)]
    assert set().union(*folds) == set(range(1, total + 1))
    assert all(not (folds[i] & folds[j]) for i in range(4) for j in range(i + 1, 4))
    dataset = D.open_dataset(layout, roots[layout], cache_dir=tmp_path)
    label_of = coco_label if layout == "coco" else pascal_label
    for k in range(4):
        episodes = D.make_episodes(dataset, [k], 1, 30, seed=0)
        assert {e.label for e in episodes} <= folds[k]
        assert {e.label for e in episodes} == {label_of(c) for c in range(8) if label_of(c) in folds[k]}
        for e in episodes:
            assert e.query not in e.supports
            masks = dataset.masks(e)
            assert masks.query.any() and all(m.any() for m in masks.supports)  # every image holds the class


def test_pascal_uses_hsnet_fold_lists_when_present(roots, tmp_path):
    root = roots["pascal"]
    names = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    fold_list = root / "splits" / "pascal" / "val" / "fold0.txt"
    fold_list.parent.mkdir(parents=True)
    lines = [f"{names[0]}__01", f"{names[1]}__01", f"{names[2]}__01"]
    fold_list.write_text("\n".join(lines) + "\n")
    try:
        episodes = D.make_episodes(D.open_dataset("pascal", root), [0], 1, 7, seed=0)
    finally:
        fold_list.unlink()
    assert [e.query for e in episodes] == [f"JPEGImages/{names[i % 3]}.jpg" for i in range(7)]
    assert all(e.label == 1 and e.category == "aeroplane" for e in episodes)


def test_coco_class_index_is_cached_beside_the_results(roots, tmp_path):
    dataset = D.open_dataset("coco", roots["coco"], cache_dir=tmp_path)
    first = dataset.index()
    assert (tmp_path / "class_index_coco_val2014.json").is_file()
    assert D.open_dataset("coco", roots["coco"], cache_dir=tmp_path).index() == first


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_folder_names_it(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nope")):
        D.open_dataset("perseg", tmp_path / "nope")
    (tmp_path / "perseg").mkdir()
    with pytest.raises(DatasetError, match="Images"):
        D.open_dataset("perseg", tmp_path / "perseg")


def test_empty_splits_are_refused_naming_the_file(roots, tmp_path):
    root = build("fss", tmp_path / "fss", classes=1, images=2, size=SIZE)
    (root / "test.txt").write_text("\n")
    with pytest.raises(DatasetError, match=f"empty split: {root / 'test.txt'}"):
        D.make_episodes(D.open_dataset("fss", root), [None], 1, None, 0)
    (root / "test.txt").unlink()
    with pytest.raises(DatasetError, match="test.txt not found"):
        D.make_episodes(D.open_dataset("fss", root), [None], 1, None, 0)
    (tmp_path / "perseg" / "Images").mkdir(parents=True)
    (tmp_path / "perseg" / "Annotations").mkdir()
    with pytest.raises(DatasetError, match="empty split"):
        D.make_episodes(D.open_dataset("perseg", tmp_path / "perseg"), [None], 1, None, 0)
    empty = tmp_path / "episodes.jsonl"
    empty.write_text("")
    with pytest.raises(DatasetError, match="empty split"):
        D.read_episodes(empty, "perseg")
    # each class is in 6 images (its 4 and, as the smaller object, 2 of the previous class): 6-shot needs 7
    with pytest.raises(DatasetError, match="empty split: .* 7 images"):
        D.make_episodes(D.open_dataset("coco", roots["coco"], cache_dir=tmp_path), [0], 6, 3, 0)


def test_mask_of_the_wrong_size_names_the_mask(tmp_path):
    root = build("perseg", tmp_path / "perseg", classes=1, images=2, size=SIZE)
    mask = root / "Annotations" / "chelsea" / "01.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(mask)
    dataset = D.open_dataset("perseg", root)
    episode = D.make_episodes(dataset, [None], 1, None, 0)[0]
    with pytest.raises(DatasetError, match=f"{mask} is 10x10 but its image .* is 64x48"):
        dataset.masks(episode)


def test_unknown_fold_and_bad_episode_file(roots, tmp_path):
    with pytest.raises(DatasetError, match="folds"):
        D.make_episodes(D.open_dataset("coco", roots["coco"], cache_dir=tmp_path), [4], 1, 3, 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 0}\n')
    with pytest.raises(DatasetError, match=f"{bad} line 1"):
        D.read_episodes(bad, "coco")


def test_synthetic_command_writes_a_layout(tmp_path, capsys):
    from vision.cli import main

    assert main(["eval", "synthetic", "--layout", "fss", "--root", str(tmp_path / "fss"), "--classes", "2",
                 "--images", "3", "--size", "32", "48"]) == 0
    assert (tmp_path / "fss" / "test.txt").read_text().split() == ["chelsea", "coffee"]
    assert Image.open(tmp_path / "fss" / "coffee" / "3.png").size == (48, 32)
    assert main(["eval", "synthetic", "--layout", "fss", "--root", str(tmp_path / "x"), "--images", "1"]) == 2
    assert "at least 2 images" in capsys.readouterr().err
