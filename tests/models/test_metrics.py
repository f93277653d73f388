"""Metrics and losses on hand-built cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsefuse.models import losses
from sparsefuse.models.metrics import (
    DetectionAccumulator,
    Detections,
    IoUAccumulator,
    average_precision,
    bev_iou,
    decode,
    match_frame,
)


def test_bev_iou_hand_case():
    pred = np.zeros((2, 4, 4), bool)
    target = np.zeros((2, 4, 4), bool)
    pred[0, :2, :2] = True  # 4 cells
    target[0, :2, :3] = True  # 6 cells, 4 shared -> IoU 4/6
    target[1, 0, 0] = True  # class 1: nothing predicted -> IoU 0
    np.testing.assert_allclose(bev_iou(pred, target), [4 / 6, 0.0])
    assert np.isnan(bev_iou(np.zeros((1, 2, 2)), np.zeros((1, 2, 2))))[0]  # absent everywhere: NaN


def test_iou_accumulator_sums_over_frames():
    acc = IoUAccumulator(1)
    logits = torch.full((1, 1, 2, 2), -10.0)
    logits[0, 0, 0, 0] = 10.0  # predicts one cell
    acc.add(logits, np.array([[[1, 1], [0, 0]]]))  # inter 1, union 2
    acc.add(logits, np.array([[[1, 0], [0, 0]]]))  # inter 1, union 1
    np.testing.assert_allclose(acc.iou(), [2 / 3])


def test_ap_perfect_is_one_and_empty_is_zero():
    assert average_precision(np.array([0.9, 0.8]), np.array([True, True]), 2) == pytest.approx(1.0)
    assert average_precision(np.zeros(0), np.zeros(0, bool), 3) == 0.0
    assert math.isnan(average_precision(np.array([0.5]), np.array([False]), 0))


def test_ap_half_recall():
    # 1 of 2 objects found at precision 1: interpolated precision is 1 up to recall 0.5, then 0.
    # Recall points 0.11..0.50 (40 of the 90 kept points) score (1 - 0.1) / 0.9 = 1 -> AP = 40/90.
    assert average_precision(np.array([0.9]), np.array([True]), 2) == pytest.approx(40 / 90)


def test_ap_false_positive_first():
    # FP then TP, 1 object: (recall, precision) goes (0, 0) -> (1, 0.5), so p(r) = r / 2 in between.
    # AP = sum_{k=11..100} max(0.005 k - 0.1, 0) / 90 / 0.9 = 16.2 / 81 = 0.2
    assert average_precision(np.array([0.9, 0.8]), np.array([False, True]), 1) == pytest.approx(0.2)


def test_greedy_matching_takes_the_closest_unmatched():
    gt = np.array([[0.0, 0.0], [3.0, 0.0]])
    preds = np.array([[0.2, 0.0], [0.1, 0.0], [2.5, 0.0], [10.0, 0.0]])  # score order
    np.testing.assert_array_equal(match_frame(preds, gt, 1.0), [True, False, True, False])
    np.testing.assert_array_equal(match_frame(preds, gt, 4.0), [True, True, False, False])  # 2nd takes (3,0)
    np.testing.assert_array_equal(match_frame(preds, np.zeros((0, 2)), 1.0), [False] * 4)


def _det(xy, scores, labels):
    xy = np.asarray(xy, float)
    boxes = np.concatenate([xy, np.ones((len(xy), 5))], axis=1)
    return Detections(boxes, np.asarray(scores, float), np.asarray(labels))


def test_map_over_distance_thresholds():
    acc = DetectionAccumulator(num_classes=2)
    gt_boxes = np.array([[10.0, 0.0, 1, 2, 4, 1.5, 0.0]])
    # class 0: one prediction 0.7 m off -> TP at 1, 2, 4 m, FP at 0.5 m; class 1: no ground truth
    acc.add(_det([[10.7, 0.0], [20.0, 0.0]], [0.9, 0.5], [0, 1]), gt_boxes, np.array([0]))
    ap = acc.ap()
    np.testing.assert_allclose(ap[0], [0.0, 1.0, 1.0, 1.0])
    assert np.all(np.isnan(ap[1]))
    assert acc.mean_ap() == pytest.approx(0.75)
    assert acc.num_gt.tolist() == [1, 0]


def test_map_pools_predictions_across_frames_by_score():
    acc = DetectionAccumulator(num_classes=1, thresholds=(1.0,))
    gt = np.array([[0.0, 0.0, 1, 2, 4, 1.5, 0.0]])
    acc.add(_det([[5.0, 5.0]], [0.95], [0]), gt, np.array([0]))  # frame 1: a confident FP, the object missed
    acc.add(_det([[0.0, 0.0]], [0.6], [0]), gt, np.array([0]))  # frame 2: a TP
    # pooled: FP (0.95) then TP (0.6); 2 objects -> (recall, precision) (0, 0), (0.5, 0.5)
    # p(r) = r on [0, 0.5], 0 beyond; AP = sum_{k=11..50} (0.01 k - 0.1) / 90 / 0.9 = 8.2 / 81
    assert acc.ap()[0, 0] == pytest.approx(8.2 / 81)


def _peaks(y_size=8, x_size=8):
    heat = torch.full((1, 4, y_size, x_size), -20.0)
    boxes = torch.zeros((1, 8, y_size, x_size))
    return heat, boxes


def test_decode_recovers_boxes_and_applies_nms_and_topk():
    heat, boxes = _peaks()
    heat[0, 1, 2, 5] = 3.0  # truck at cell (iy=2, ix=5)
    heat[0, 1, 2, 6] = 1.0  # weaker neighbour: suppressed by the 3x3 max-pool
    heat[0, 2, 6, 1] = 0.0  # pedestrian, score 0.5
    boxes[0, :, 2, 5] = torch.tensor(
        [0.3, -0.2, 1.5, math.log(2.5), math.log(8.0), math.log(3.0), math.sin(0.5), math.cos(0.5)]
    )
    det = decode(heat, boxes, (-4.0, -4.0, 4.0, 4.0), 1.0, top_k=10, score_threshold=0.1)
    assert det.labels.tolist() == [1, 2]
    np.testing.assert_allclose(det.scores, [torch.sigmoid(torch.tensor(3.0)).item(), 0.5], rtol=1e-6)
    # cell (2, 5) centre = (-4 + 5.5, -4 + 2.5) = (1.5, -1.5), plus (dx, dy)
    np.testing.assert_allclose(det.boxes[0], [1.8, -1.7, 1.5, 2.5, 8.0, 3.0, 0.5], atol=1e-5)
    only_one = decode(heat, boxes, (-4.0, -4.0, 4.0, 4.0), 1.0, top_k=1, score_threshold=0.1)
    assert only_one.labels.tolist() == [1]
    none = decode(heat, boxes, (-4.0, -4.0, 4.0, 4.0), 1.0, score_threshold=0.99)
    assert len(none.scores) == 0 and none.boxes.shape == (0, 7)


def test_focal_loss_small_for_good_predictions_and_large_for_bad():
    target = torch.zeros(1, 4, 4)
    target[0, 1, 1] = 1.0
    good = torch.full((1, 1, 4, 4), -8.0)
    good[0, 0, 1, 1] = 8.0
    bad = -good
    assert losses.focal_loss(good, target) < 1e-4
    assert losses.focal_loss(bad, target) > 1.0


def test_box_loss_only_at_centres():
    target = torch.zeros(8, 3, 3)
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[1, 1] = True
    pred = torch.zeros(1, 8, 3, 3)
    pred[0, :, 0, 0] = 100.0  # off-centre errors do not count
    pred[0, 0, 1, 1] = 0.5
    assert losses.box_loss(pred, target, mask).item() == pytest.approx(0.5)


def test_seg_loss_is_bce():
    logits = torch.zeros(1, 1, 2, 2)
    assert losses.seg_loss(logits, torch.ones(1, 2, 2)).item() == pytest.approx(math.log(2))


def test_depth_loss_is_nll_at_the_target_bins_and_ignores_missing_pixels():
    prob = torch.full((2, 4, 1, 3), 0.25)  # uniform over 4 bins
    target = torch.tensor([[[0, -1, 3]], [[-1, -1, -1]]])
    assert losses.depth_loss(prob, target).item() == pytest.approx(math.log(4))
    sharp = torch.zeros(2, 4, 1, 3)
    sharp[0, 0, 0, 0] = sharp[0, 3, 0, 2] = 1.0  # all mass on the right bins; wrong elsewhere is ignored
    assert losses.depth_loss(sharp, target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = torch.zeros(2, 4, 1, 3)
    wrong[:, 1] = 1.0
    assert losses.depth_loss(wrong, target).item() == pytest.approx(-math.log(1e-6))
    empty = losses.depth_loss(prob.requires_grad_(), torch.full((2, 1, 3), -1))
    assert empty.item() == 0.0
    empty.backward()  # no target still gives a (zero) gradient, so a training step never breaks


def test_total_loss_adds_the_weighted_depth_term_only_with_depth():
    outputs = (torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 8, 2, 2))
    targets = {
        "seg_masks": torch.ones(1, 2, 2),
        "heatmap": torch.zeros(1, 2, 2),
        "boxes": torch.zeros(8, 2, 2),
        "box_mask": torch.zeros(2, 2),
    }
    base, parts = losses.total_loss(outputs, targets)
    assert "depth" not in parts
    prob, depth = torch.full((1, 4, 2, 2), 0.25), torch.zeros(1, 2, 2, dtype=torch.int64)
    weights = losses.LossWeights(depth=2.0)
    with_depth, parts = losses.total_loss(outputs, {**targets, "depth": depth}, weights, prob)
    assert parts["depth"] == pytest.approx(math.log(4))
    assert with_depth.item() == pytest.approx(base.item() + 2.0 * math.log(4))


def test_semantic_loss_is_weighted_cross_entropy_ignoring_unlabelled_pixels():
    logits = torch.zeros(1, 3, 1, 3)  # uniform over 3 classes
    target = torch.tensor([[[1, 2, -1]]])
    assert losses.semantic_loss(logits, target).item() == pytest.approx(math.log(3))
    right = torch.zeros(1, 3, 1, 3)
    right[0, 1, 0, 0] = right[0, 2, 0, 1] = 50.0
    assert losses.semantic_loss(right, target).item() == pytest.approx(0.0, abs=1e-6)
    # background (class 0) counts background_weight times a foreground pixel in the weighted mean
    mixed = torch.tensor([[[0, 1, -1]]])
    wrong_bg = torch.zeros(1, 3, 1, 3)
    wrong_bg[0, 2, 0, 0] = 50.0  # background pixel wrong (loss 50), foreground uniform (log 3)
    expected = (0.2 * 50.0 + math.log(3)) / 1.2
    assert losses.semantic_loss(wrong_bg, mixed).item() == pytest.approx(expected, rel=1e-4)
    assert losses.semantic_loss(logits, torch.full((1, 1, 3), -1)).item() == 0.0
