"""Few-shot metrics against hand-computed cases: IoU, class mIoU, FB-IoU, ignored pixels, boundary IoU."""

import math

import numpy as np
import pytest

from vision.evaluation.segmentation_metrics import FewShotMeter, boundary_width, mask_boundary


def square(shape, rows, cols):
    m = np.zeros(shape, dtype=bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


def test_episode_iou_and_fb_iou_by_hand():
    gt = square((4, 4), (0, 2), (0, 2))  # 4 pixels top-left
    pred = square((4, 4), (0, 1), (0, 4))  # the top row
    out = FewShotMeter().update("a", pred, gt)
    # fg: I = 2, U = 6; bg: I = 16 - 6 = 10, U = 16 - 2 = 14
    assert out["iou"] == pytest.approx(1 / 3)
    assert out["fb_iou"] == pytest.approx((1 / 3 + 10 / 14) / 2)


def test_class_iou_accumulates_pixels_over_episodes_not_a_mean_of_episodes():
    meter = FewShotMeter()
    gt = square((4, 4), (0, 2), (0, 2))
    meter.update("a", square((4, 4), (0, 1), (0, 4)), gt)  # I 2, U 6
    meter.update("a", gt, gt)  # I 4, U 4
    meter.update("b", np.zeros((4, 4), bool), gt)  # I 0, U 4
    assert meter.class_iou() == {"a": pytest.approx(6 / 10), "b": 0.0}
    assert meter.miou() == pytest.approx(0.3)
    # FB-IoU over every episode: fg I 6 / U 14; bg I 10 + 12 + 12 = 34 / U 14 + 12 + 16 = 42
    assert meter.fb_iou() == pytest.approx((6 / 14 + 34 / 42) / 2)
    assert meter.episodes == {"a": 2, "b": 1}


def test_merge_of_fold_meters_equals_one_meter():
    gt = square((6, 6), (1, 4), (1, 4))
    preds = [square((6, 6), (0, 3), (0, 3)), square((6, 6), (2, 6), (2, 6))]
    one, fold0, fold1 = FewShotMeter(), FewShotMeter(), FewShotMeter()
    for meter, pred in zip((fold0, fold1), preds):
        meter.update(f"c{id(meter)}", pred, gt)
    for meter, pred in zip((fold0, fold1), preds):
        one.update(f"c{id(meter)}", pred, gt)
    merged = FewShotMeter()
    merged.merge(fold0)
    merged.merge(fold1)
    assert merged.miou() == pytest.approx(one.miou())
    assert merged.fb_iou() == pytest.approx(one.fb_iou())


def test_ignored_pixels_count_neither_as_foreground_nor_background():
    gt = square((4, 4), (1, 3), (1, 3))
    ignore = square((4, 4), (0, 4), (0, 4)) & ~gt
    ignore[3, :] = False  # the bottom row stays real background
    pred = square((4, 4), (0, 3), (0, 4))  # the object plus ignored pixels only
    out = FewShotMeter().update("a", pred, gt, ignore)
    assert out["iou"] == 1.0 and out["fb_iou"] == 1.0


def test_boundary_width_is_two_percent_of_the_diagonal_at_least_one_pixel():
    assert boundary_width((240, 320)) == 8  # diagonal 400
    assert boundary_width((5, 5)) == 1  # 0.14 rounds to 0 -> 1


def test_mask_boundary_by_hand():
    gt = square((5, 5), (1, 4), (1, 4))
    ring = gt.copy()
    ring[2, 2] = False
    assert (mask_boundary(gt) == ring).all()
    assert mask_boundary(np.ones((5, 5), bool)).sum() == 16  # the image border counts as background


def test_boundary_iou_by_hand():
    gt = square((5, 5), (1, 4), (1, 4))
    pred = square((5, 5), (1, 4), (2, 5))  # shifted right by one: touches the border
    meter = FewShotMeter(boundary=True)
    out = meter.update("a", pred, gt)
    # rings of 8 pixels each share (1,2), (1,3), (3,2), (3,3): 4 / 12
    assert out["biou"] == pytest.approx(1 / 3)
    assert out["iou"] == pytest.approx(6 / 12)
    assert meter.biou() == pytest.approx(1 / 3)
    empty = FewShotMeter(boundary=True).update("a", np.zeros((5, 5), bool), np.zeros((5, 5), bool))
    assert math.isnan(empty["biou"]) and math.isnan(empty["iou"])


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="differ in shape"):
        FewShotMeter().update("a", np.zeros((4, 4), bool), np.zeros((4, 5), bool))
