"""ipywidgets explorers: sliders that drive the pure plotting functions of ``plotting``.

Each explorer runs the model once per sample (its forward returns the attention, so nothing is
recomputed for a plot) and redraws with a plotting function that is unit-tested on its own.
Core ipywidgets only, so they work in JupyterLab and Colab alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from einops import rearrange
from IPython.display import display
from torch import Tensor, nn

from .lavt import referring_inputs
from .mbt import bottleneck_attention_maps
from .plotting import (
    plot_attention_map,
    plot_bottleneck_attention,
    plot_cls_cross_attention,
    plot_point_substitution,
    plot_referring,
    plot_token_scores,
)
from .points import farthest_point_sample
from .tokenfusion_heterogeneous import TOKENFUSION, project_to_patches

__all__ = [
    "attention_explorer",
    "bottleneck_explorer",
    "cross_attention_explorer",
    "point_substitution_explorer",
    "referring_explorer",
    "sample_attention",
    "sample_bottleneck_attention",
    "sample_cross_attention",
    "sample_point_substitution",
    "sample_referring",
    "sample_token_scores",
    "token_score_explorer",
]


def _forward_sample(model: nn.Module, data: Mapping[str, Tensor], index: int, **options: bool) -> Any:
    """The model's eval-mode output for sample ``index`` alone (a batch of one)."""
    device = next(model.parameters()).device
    sample = {key: value[index:index + 1].to(device) for key, value in data.items()}
    model.eval()
    with torch.inference_mode():
        return model(sample, **options)


def sample_attention(model: nn.Module, data: Mapping[str, Tensor], index: int) -> Tensor:
    """One forward of sample ``index`` with attention returned: ``(layers, heads, n, n)``."""
    output = _forward_sample(model, data, index, return_attention=True)
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


def sample_cross_attention(model: nn.Module, data: Mapping[str, Tensor], index: int
                           ) -> list[list[Tensor]]:
    """One CrossViT forward of sample ``index``: per multi-scale block, per branch i, the first
    fusion layer's weights of branch i's CLS over [itself; the other branch's patches], ``(h, 1 + n_j)``."""
    output = _forward_sample(model, data, index, return_attention=True)
    return [[layers[0][0, :, 0].float().cpu() for layers in block] for block in output.fusion_attention]


def cross_attention_explorer(model: nn.Module, data: Mapping[str, Tensor]) -> widgets.Widget:
    """Sample, block and branch -> that branch's CLS cross-attention over the other branch's
    patches (``plot_cls_cross_attention``); a cross-attention CrossViT only."""
    if model.blocks[0].fusion_kind != "cross_attention":
        raise ValueError(f"the explorer shows cross-attention fusion, got a "
                         f"{model.blocks[0].fusion_kind!r} CrossViT")
    images = data[model.modality]
    attention_of = lru_cache(maxsize=32)(lambda index: sample_cross_attention(model, data, index))
    names = ("S-branch CLS -> L patches", "L-branch CLS -> S patches")

    def show(sample: int, block: int, branch: int) -> None:
        other = model.patch_embeds[1 - branch].grid_size[0]
        figure = plot_cls_cross_attention(images[sample], attention_of(sample)[block][branch],
                                          model.img_size // other, names[branch])
        display(figure)
        plt.close(figure)

    return widgets.interactive(
        show,
        sample=widgets.IntSlider(0, 0, len(images) - 1),
        block=widgets.IntSlider(0, 0, len(model.blocks) - 1),
        branch=widgets.Dropdown(options=[(name, i) for i, name in enumerate(names)], value=0),
    )


def sample_token_scores(model: nn.Module, data: Mapping[str, Tensor], index: int
                        ) -> list[dict[str, Tensor]]:
    """One TokenFusion forward of sample ``index``: per layer, ``{modality: (n,) scores}``."""
    output = _forward_sample(model, data, index)
    return [{m: score[0].float().cpu() for m, score in layer.items()} for layer in output.scores]


def token_score_explorer(model: nn.Module, data: Mapping[str, Tensor],
                         corrupted: Mapping[str, str]) -> widgets.Widget:
    """Sample, layer and theta -> each modality's image, score heatmap and the tokens below
    theta, beside the ground-truth corruption masks (``plot_token_scores``).  ``corrupted`` maps
    each modality to the data key of its pixel mask.  At the model's own theta the outlined
    tokens are exactly those it substituted; other values ask "what if theta were ...?"."""
    patch_size = model.patch_embeds[model.modalities[0]].patch_size
    scores_of = lru_cache(maxsize=32)(lambda index: sample_token_scores(model, data, index))

    def show(sample: int, layer: int, theta: float) -> None:
        images = {m: data[m][sample] for m in corrupted}
        masks = {m: data[key][sample] for m, key in corrupted.items()}
        figure = plot_token_scores(images, scores_of(sample)[layer], masks, theta, patch_size)
        display(figure)
        plt.close(figure)

    return widgets.interactive(
        show,
        sample=widgets.IntSlider(0, 0, len(data[model.modalities[0]]) - 1),
        layer=widgets.IntSlider(0, 0, len(model.layers) - 1),
        theta=widgets.FloatLogSlider(model.threshold, base=10, min=-3, max=-0.3, step=0.1),
    )


def sample_bottleneck_attention(model: nn.Module, data: Mapping[str, Tensor], index: int
                                ) -> list[dict[str, Tensor]]:
    """One MBT forward of clip ``index``: per layer, ``{modality: (h, n, n)}`` attention weights."""
    output = _forward_sample(model, data, index, return_attention=True)
    return [{m: weights[0].float().cpu() for m, weights in layer.items()} for layer in output.attention]


def bottleneck_explorer(model: nn.Module, data: Mapping[str, Tensor]) -> widgets.Widget:
    """Clip, fusion layer and bottleneck index -> where that bottleneck token attends in the
    frames and in the spectrogram, and what attends to it, drawn over the clip
    (``plot_bottleneck_attention``)."""
    if model.fusion != "bottleneck" or not model.test_with_bottlenecks or model.classifier != "token":
        raise ValueError(f"the explorer shows bottleneck fusion evaluated with its bottlenecks and CLS "
                         f"tokens, got fusion={model.fusion!r}, test_with_bottlenecks="
                         f"{model.test_with_bottlenecks}, classifier={model.classifier!r}")
    attention_of = lru_cache(maxsize=32)(lambda index: sample_bottleneck_attention(model, data, index))
    depth = len(model.layers["frames"])

    def show(clip: int, layer: int, bottleneck: int) -> None:
        maps = bottleneck_attention_maps(attention_of(clip)[layer], bottleneck, model.token_grids)
        figure = plot_bottleneck_attention(maps, bottleneck, {m: data[m][clip] for m in model.token_grids})
        display(figure)
        plt.close(figure)

    return widgets.interactive(
        show,
        clip=widgets.IntSlider(0, 0, len(data["label"]) - 1),
        layer=widgets.IntSlider(model.fusion_layer, model.fusion_layer, depth - 1),
        bottleneck=widgets.IntSlider(0, 0, model.bottleneck_tokens.shape[1] - 1),
    )


def sample_point_substitution(model: nn.Module, data: Mapping[str, Tensor], index: int) -> dict[str, Tensor]:
    """One heterogeneous TokenFusion forward of scene ``index``: the cloud ``points (n 3)``, the
    ``seeds (m 3)``, per layer their ``scores`` and ``substituted`` flags ``(L m)``, and each seed's
    Eqs. 8-9 ``patch_index (m)``."""
    if model.fusion != TOKENFUSION:
        raise ValueError(f"the explorer shows TokenFusion's scores and substitutions, "
                         f"got fusion={model.fusion!r}")
    output = _forward_sample(model, data, index)
    points = data["points"][index].float()
    if "seeds" in data:
        seeds = points[data["seeds"][index]]
    else:
        seeds = points[farthest_point_sample(points[None], model.tokenizer.num_seeds)[0]]
    patch_index, _ = project_to_patches(seeds[None], data["K"][index:index + 1], data["Rt"][index:index + 1],
                                        model.image_size, model.patch_size)
    return {"points": points, "seeds": seeds, "patch_index": patch_index[0],
            "scores": torch.stack([s[0] for s in output.scores]).float().cpu(),
            "substituted": torch.stack([m[0] for m in output.substituted]).cpu()}


def point_substitution_explorer(model: nn.Module, data: Mapping[str, Tensor]) -> widgets.Widget:
    """Scene and layer -> the seeds coloured by score, the substituted ones ringed, and the image
    patches they read (``plot_point_substitution``)."""
    sample_of = lru_cache(maxsize=32)(lambda index: sample_point_substitution(model, data, index))

    def show(scene: int, layer: int) -> None:
        sample = sample_of(scene)
        figure = plot_point_substitution(data["image"][scene], sample["points"], sample["seeds"],
                                         sample["scores"][layer], sample["substituted"][layer],
                                         sample["patch_index"], model.patch_size)
        display(figure)
        plt.close(figure)

    return widgets.interactive(show, scene=widgets.IntSlider(0, 0, len(data["points"]) - 1),
                               layer=widgets.IntSlider(0, 0, len(model.layers) - 1))


def sample_referring(model: nn.Module, scenes: Mapping, index: int, expression: str) -> dict[str, Any]:
    """LAVT on scene ``index``'s image with any ``expression`` (it need not be the scene's own; unknown
    words become <unk> with a warning, an empty or too long expression raises): the predicted ``mask
    (H W)``, the real ``words``, per stage each word's pixel attention ``(t h_i w_i)`` (heads averaged),
    and the ``gate_openings`` per gated stage."""
    if model.fusion != "pwam":
        raise ValueError(f"the explorer shows LAVT's pixel-word attention, got fusion={model.fusion!r}")
    scene = {key: scenes[key][index:index + 1] for key in ("image", "mask", "expression_type")}
    data = referring_inputs({**scene, "expression": [expression]}, model.text)
    output = _forward_sample(model, data, 0)
    real = data["word_mask"][0]
    side = scenes["image"].shape[-1] // model.patch_embed.patch_size[0]
    attention = [rearrange(weights[0].float().mean(0)[:, real.to(weights.device)].cpu(), "(h w) t -> t h w",
                           h=side // 2**stage) for stage, weights in enumerate(output.word_attention)]
    return {"mask": output.logits[0].argmax(0).bool().cpu(),
            "words": model.text.token_strings(data["words"][0][real]), "word_attention": attention,
            "gate_openings": [float(g) for g in output.gate_openings]}


def referring_explorer(model: nn.Module, scenes: Mapping) -> widgets.Widget:
    """Scene, an expression (the scene's own, any other from the data, or typed) and a stage -> the
    predicted mask, each word's pixel attention at that stage and the gates' openings
    (``plot_referring``)."""
    expressions = scenes["expression"]
    scene = widgets.IntSlider(0, 0, len(expressions) - 1, description="scene")
    expression = widgets.Combobox(value=expressions[0], options=sorted(set(expressions)), ensure_option=False,
                                  description="expression")
    scene.observe(lambda change: setattr(expression, "value", expressions[change["new"]]), names="value")

    def show(scene: int, expression: str, stage: int) -> None:
        try:
            sample = sample_referring(model, scenes, scene, expression)
        except ValueError as error:  # a typed expression that cannot be read: say why, keep the widget
            print(error)
            return
        figure = plot_referring(scenes["image"][scene], expression, sample["mask"], sample["words"],
                                sample["word_attention"][stage - 1], sample["gate_openings"], stage)
        display(figure)
        plt.close(figure)

    return widgets.interactive(show, scene=scene, expression=expression,
                               stage=widgets.IntSlider(1, 1, len(model.stages), description="stage"))
