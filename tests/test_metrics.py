import math

import pytest
import torch

from fusion_edu.metrics import accuracy, confusion_matrix, grouped_accuracy, iou_per_class, mean_iou

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
