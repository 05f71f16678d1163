"""FLOP and parameter counts, measured by running the model (``torch.utils.flop_counter``).

FLOPs here count a multiply-add as 2 FLOPs (PyTorch's convention), for one forward pass.
PyTorch's counter knows the GPU kernels of ``F.scaled_dot_product_attention`` but not the CPU
one, which would leave attention's two matrix products (q k^T and A v) uncounted on a CPU; we
register the same formula for it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["count_flops", "count_parameters"]



def _cpu_attention_flops(query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size,
                         *args: object, out_shape: object = None, **kwargs: object) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)  # 2 b h n_q n_k (e_k + e_v)


_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def count_flops(model: nn.Module, inputs: Tensor | Mapping[str, Tensor]) -> int:
    """Forward FLOPs of ``model(inputs)`` (the whole batch) in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
    with torch.no_grad(), counter:
        model(inputs)
    model.train(was_training)
    return counter.get_total_flops()


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters (only those with ``requires_grad`` unless told otherwise)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
