"""Metrics from a confusion matrix: accuracy and (mean) intersection over union.

One code path serves classification (targets ``(b,)``) and segmentation (targets ``(b, H, W)``):
both are flattened to a list of (target, prediction) pairs and counted into a ``C x C``
confusion matrix ``M[t, p]``.  Then, for class c,

    IoU_c = M[c, c] / (sum_p M[c, p] + sum_t M[t, c] - M[c, c])     (TP / (TP + FN + FP))
    mIoU  = mean of IoU_c over the classes that occur in the targets or the predictions.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["accuracy", "confusion_matrix", "grouped_accuracy", "iou_per_class", "mean_iou"]


def confusion_matrix(predictions: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """``M[t, p]``: how many elements of class t were predicted as p.  Shapes must match."""
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions and targets must have the same shape, got "
                         f"{tuple(predictions.shape)} and {tuple(targets.shape)}")
    targets, predictions = targets.flatten().long(), predictions.flatten().long()
    for name, values in (("targets", targets), ("predictions", predictions)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got values in "
                             f"[{values.min().item()}, {values.max().item()}]")
    counts = torch.bincount(targets * num_classes + predictions, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def accuracy(confusion: Tensor) -> float:
    """Share of elements on the diagonal (pixel accuracy for segmentation)."""
    return (confusion.diag().sum() / confusion.sum().clamp(min=1)).item()


def iou_per_class(confusion: Tensor) -> Tensor:
    """IoU of every class, NaN for a class absent from both targets and predictions."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp(min=1), torch.nan)


def mean_iou(confusion: Tensor) -> float:
    """Mean IoU over the classes present in targets or predictions."""
    return iou_per_class(confusion).nanmean().item()


def grouped_accuracy(predictions: Tensor, targets: Tensor, groups: Tensor, num_groups: int
                     ) -> Tensor:
    """Accuracy within each group of elements, ``(num_groups,)``, NaN for an empty group.

    With ``groups`` = the RGB-D scenes' visibility map, this asks how well a model segments the
    objects that only one modality can see.
    """
    if not predictions.shape == targets.shape == groups.shape:
        raise ValueError(f"predictions, targets and groups must have the same shape, got "
                         f"{tuple(predictions.shape)}, {tuple(targets.shape)}, "
                         f"{tuple(groups.shape)}")
    correct = (predictions == targets).flatten().double()
    groups = groups.flatten().long()
    hits = torch.bincount(groups, weights=correct, minlength=num_groups)
    sizes = torch.bincount(groups, minlength=num_groups).double()
    return torch.where(sizes > 0, hits / sizes.clamp(min=1), torch.nan)
