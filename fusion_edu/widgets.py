"""ipywidgets explorers: sliders that drive the pure plotting functions of ``plotting``.

Each explorer runs the model once per sample (its forward returns the attention, so nothing is
recomputed for a plot) and redraws with a plotting function that is unit-tested on its own.
Core ipywidgets only, so they work in JupyterLab and Colab alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display
from torch import Tensor, nn

from .plotting import plot_attention_map

__all__ = ["attention_explorer", "sample_attention"]


def sample_attention(model: nn.Module, data: Mapping[str, Tensor], index: int) -> Tensor:
    """One forward of sample ``index`` with attention returned: ``(layers, heads, n, n)``."""
    device = next(model.parameters()).device
    sample = {key: value[index:index + 1].to(device) for key, value in data.items()}
    model.eval()
    with torch.inference_mode():
        output = model(sample, return_attention=True)
    return torch.stack([weights[0] for weights in output.attention]).float().cpu()


def attention_explorer(model: nn.Module, data: Mapping[str, Tensor], modality: str
                       ) -> widgets.Widget:
    """Sample, layer, head and query patch -> where that patch attends (``plot_attention_map``)."""
    patch_size = model.patch_embed.patch_size
    grid = model.patch_embed.grid_size[0]
    attention_of = lru_cache(maxsize=32)(lambda index: sample_attention(model, data, index))

    def show(sample: int, layer: int, head: int, query_row: int, query_col: int) -> None:
        figure = plot_attention_map(data[modality][sample], attention_of(sample), layer, head,
                                    query_row * grid + query_col, patch_size)
        display(figure)
        plt.close(figure)

    return widgets.interactive(
        show,
        sample=widgets.IntSlider(0, 0, len(data[modality]) - 1),
        layer=widgets.IntSlider(0, 0, len(model.blocks) - 1),
        head=widgets.IntSlider(0, 0, model.blocks[0].attn.num_heads - 1),
        query_row=widgets.IntSlider(grid // 2, 0, grid - 1),
        query_col=widgets.IntSlider(grid // 2, 0, grid - 1),
    )
