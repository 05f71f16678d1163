import math

import pytest
import torch

from fusion_edu.metrics import (
    accuracy,
    confusion_matrix,
    grouped_accuracy,
    iou_per_class,
    mean_iou,
    paired_difference,
    referring_scores,
    sample_iou,
)

TARGETS = torch.tensor([[0, 0, 1], [1, 2, 2]])
PREDICTIONS = torch.tensor([[0, 1, 1], [1, 2, 0]])


def test_confusion_matrix_by_hand():
    confusion = confusion_matrix(PREDICTIONS, TARGETS, num_classes=4)
    expected = torch.tensor([[1, 1, 0, 0],   # class 0: one right, one called 1
                             [0, 2, 0, 0],   # class 1: both right
                             [1, 0, 1, 0],   # class 2: one right, one called 0
                             [0, 0, 0, 0]])
    assert torch.equal(confusion, expected)


def test_iou_and_accuracy_by_hand():
    confusion = confusion_matrix(PREDICTIONS, TARGETS, num_classes=4)
    # class 0: TP 1, FN 1, FP 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1, FN 1 -> 1/2
    iou = iou_per_class(confusion)
    assert iou[:3].tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(iou[3].item())  # absent everywhere: left out of the mean
    assert mean_iou(confusion) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert accuracy(confusion) == pytest.approx(4 / 6)


def test_perfect_prediction():
    confusion = confusion_matrix(TARGETS, TARGETS, num_classes=3)
    assert mean_iou(confusion) == 1.0 and accuracy(confusion) == 1.0


def test_grouped_accuracy_by_hand():
    groups = torch.tensor([[0, 1, 1], [2, 2, 2]])
    result = grouped_accuracy(PREDICTIONS, TARGETS, groups, num_groups=4)
    assert result[:3].tolist() == pytest.approx([1.0, 0.5, 2 / 3])
    assert math.isnan(result[3].item())


def test_metric_errors_name_shapes_and_ranges():
    with pytest.raises(ValueError, match=r"same shape, got \(2, 3\) and \(3, 2\)"):
        confusion_matrix(PREDICTIONS, TARGETS.T, num_classes=3)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\), got values in \[0, 2\]"):
        confusion_matrix(PREDICTIONS.clamp(max=1), TARGETS, num_classes=2)
    with pytest.raises(ValueError, match="must have the same shape"):
        grouped_accuracy(PREDICTIONS, TARGETS, torch.zeros(3), num_groups=1)


def test_referring_scores_mean_iou_is_per_sample_overall_iou_is_pooled():
    targets = torch.zeros(3, 4, 4, dtype=torch.bool)
    predictions = torch.zeros_like(targets)
    targets[0, :2, :] = True  # 8 pixels, predicted exactly: IoU 1
    predictions[0, :2, :] = True
    targets[1, 0, 0] = True  # 1 pixel, missed; 1 wrong pixel predicted: IoU 0
    predictions[1, 3, 3] = True
    targets[2, :, :2] = True  # 8 pixels, half found: IoU 4 / 8
    predictions[2, :2, :2] = True
    expected = torch.tensor([1.0, 0.0, 0.5], dtype=torch.double)
    torch.testing.assert_close(sample_iou(predictions, targets), expected)
    scores = referring_scores(predictions, targets)
    assert scores["miou"] == pytest.approx(0.5)
    assert scores["oiou"] == pytest.approx((8 + 0 + 4) / (8 + 2 + 8))  # the large objects weigh more
    assert scores["precision@0.5"] == pytest.approx(2 / 3)  # IoU exactly 0.5 counts, as in LAVT-RIS's test.py
    assert scores["precision@0.6"] == pytest.approx(1 / 3)
    assert scores["precision@0.9"] == pytest.approx(1 / 3)
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert sample_iou(empty, empty).item() == 0.0  # an empty union counts as 0
    with pytest.raises(ValueError, match=r"one shape \(b, H, W\), got \(3, 4, 4\) and \(3, 8, 8\)"):
        referring_scores(predictions, torch.zeros(3, 8, 8, dtype=torch.bool))


def test_paired_difference_by_hand():
    # LAVT and its gates-closed control on three seeds (a recorded sweep): d = -0.046, -0.001, -0.053
    difference = paired_difference([0.493, 0.514, 0.547], [0.539, 0.515, 0.600])
    assert difference.differences == pytest.approx((-0.046, -0.001, -0.053))
    assert difference.mean == pytest.approx(-0.1 / 3)
    std = math.sqrt(sum((d + 0.1 / 3) ** 2 for d in (-0.046, -0.001, -0.053)) / 2)
    assert difference.std == pytest.approx(std)
    assert difference.t == pytest.approx(-0.1 / 3 / (std / math.sqrt(3)))
    assert difference.detectable == pytest.approx(4.303 * std / math.sqrt(3))  # t_crit, 2 degrees of freedom
    assert not difference.significant  # |t| 2.05 < 4.30
    clear = paired_difference([0.60, 0.61, 0.62], [0.50, 0.50, 0.52])  # +0.10, +0.11, +0.10
    assert clear.significant and clear.t > 4.303
    assert paired_difference([0.5, 0.75], [0.25, 0.5]).t == math.inf  # no spread at all
    assert paired_difference([0.5, 0.6], [0.5, 0.6]).t == 0.0  # no difference at all
    with pytest.raises(ValueError, match="two equally long score lists of 2-10 seeds, got 3 and 2"):
        paired_difference([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="got 1 and 1"):
        paired_difference([0.1], [0.2])
