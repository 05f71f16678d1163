"""Metrics from a confusion matrix: accuracy and (mean) intersection over union.

One code path serves classification (targets ``(b,)``) and segmentation (targets ``(b, H, W)``):
both are flattened to a list of (target, prediction) pairs and counted into a ``C x C``
confusion matrix ``M[t, p]``.  Then, for class c,

    IoU_c = M[c, c] / (sum_p M[c, p] + sum_t M[t, c] - M[c, c])     (TP / (TP + FN + FP))
    mIoU  = mean of IoU_c over the classes that occur in the targets or the predictions.

Referring segmentation (LAVT, notebook 07) scores one binary mask per (image, expression) instead, as
the referring-segmentation literature does: per-sample IoU_i = |P_i ∩ G_i| / |P_i ∪ G_i| (0 for an empty
union), **mIoU** = the mean of the IoU_i, **oIoU** = Σ_i |P_i ∩ G_i| / Σ_i |P_i ∪ G_i| (large objects weigh
more), and **precision@k** = the share of samples with IoU_i >= k (the official evaluation's rule: LAVT-RIS
``test.py`` counts ``this_iou >= eval_seg_iou``).

Comparing two models over a few seeds (``paired_difference``): the per-seed differences d_s = A_s - B_s,
their mean and standard deviation s_d, Student's t = mean / (s_d / √n) with n - 1 degrees of freedom, and
the smallest mean difference that a two-sided paired t-test at 5 % would call real at this spread,
t_crit · s_d / √n (the half-width of the 95 % confidence interval; a true gap of exactly that size is
found only about half the time).  Three seeds make t_crit 4.30: only a difference several times the
seed-to-seed spread is detectable.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PRECISION_THRESHOLDS", "T_CRITICAL_95", "PairedDifference", "accuracy", "confusion_matrix",
           "grouped_accuracy", "iou_per_class", "mean_iou", "paired_difference", "referring_scores",
           "sample_iou"]

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)  # precision@k, as in LAVT's tables
# two-sided 5 % critical values of Student's t by degrees of freedom (n seeds give n - 1)
T_CRITICAL_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


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


def _intersection_union(predictions: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample ``(b,)``: |P ∩ G| and |P ∪ G| of boolean masks ``(b, H, W)``."""
    if predictions.shape != targets.shape or predictions.ndim != 3:
        raise ValueError(f"expected predicted and target masks of one shape (b, H, W), got "
                         f"{tuple(predictions.shape)} and {tuple(targets.shape)}")
    predictions, targets = predictions.bool().flatten(1), targets.bool().flatten(1)
    return (predictions & targets).sum(1).double(), (predictions | targets).sum(1).double()


def sample_iou(predictions: Tensor, targets: Tensor) -> Tensor:
    """IoU_i of each predicted mask with its target ``(b,)``; an empty union counts as 0."""
    intersection, union = _intersection_union(predictions, targets)
    return torch.where(union > 0, intersection / union.clamp(min=1), 0.0)


def referring_scores(predictions: Tensor, targets: Tensor,
                     thresholds: tuple[float, ...] = PRECISION_THRESHOLDS) -> dict[str, float]:
    """``miou`` (mean of per-sample IoUs), ``oiou`` (ΣI / ΣU) and ``precision@k`` for each threshold."""
    intersection, union = _intersection_union(predictions, targets)
    ious = sample_iou(predictions, targets)
    scores = {"miou": ious.mean().item(), "oiou": (intersection.sum() / union.sum().clamp(min=1)).item()}
    return scores | {f"precision@{k}": (ious >= k).double().mean().item() for k in thresholds}


@dataclass(frozen=True)
class PairedDifference:
    """A - B over paired seeds: the differences, their mean and standard deviation, Student's t, and
    ``detectable``, the smallest mean difference a paired t-test at 5 % would call real at this spread."""

    differences: tuple[float, ...]
    mean: float
    std: float
    t: float
    detectable: float

    @property
    def significant(self) -> bool:
        """Whether the paired t-test at 5 % (two-sided) finds a difference."""
        return abs(self.mean) > self.detectable


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """Scores ``a`` and ``b`` of two models on the same seeds (seed s: ``a[s]``, ``b[s]``) compared by a
    paired t-test (see the module docstring)."""
    if len(a) != len(b) or len(a) - 1 not in T_CRITICAL_95:
        raise ValueError(f"expected two equally long score lists of 2-{max(T_CRITICAL_95) + 1} seeds, got "
                         f"{len(a)} and {len(b)}")
    differences = tuple(x - y for x, y in zip(a, b, strict=True))
    mean, std = statistics.mean(differences), statistics.stdev(differences)
    standard_error = std / math.sqrt(len(differences))
    t = mean / standard_error if standard_error else (math.copysign(math.inf, mean) if mean else 0.0)
    return PairedDifference(differences, mean, std, t, T_CRITICAL_95[len(differences) - 1] * standard_error)
