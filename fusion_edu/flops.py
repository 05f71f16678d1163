"""FLOP and parameter counts, measured by running the model (``torch.utils.flop_counter``).

FLOPs here count a multiply-add as 2 FLOPs (PyTorch's convention), for one forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_parameters"]


def count_flops(model: nn.Module, inputs: Tensor | Mapping[str, Tensor]) -> int:
    """Forward FLOPs of ``model(inputs)`` (the whole batch) in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(inputs)
    model.train(was_training)
    return counter.get_total_flops()


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters (only those with ``requires_grad`` unless told otherwise)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
