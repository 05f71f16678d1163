"""Matplotlib helpers the notebooks and the widgets share; each returns its Figure."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch
from einops import rearrange
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import AutoLocator
from torch import Tensor

from .datasets.rgbd import validate_rgbd
from .sweeps import seed_spread

if TYPE_CHECKING:
    from .course import Result

__all__ = [
    "attention_heatmap",
    "colour_scale",
    "draw_patch_grid",
    "label_colormap",
    "outline_patches",
    "plot_attention_map",
    "plot_bottleneck_attention",
    "plot_cls_cross_attention",
    "plot_history",
    "plot_metric_vs_cost",
    "plot_point_substitution",
    "plot_referring",
    "plot_seed_curves",
    "plot_seed_spread",
    "plot_segmentations",
    "plot_token_scores",
    "show_rgbd_scene",
]

HISTORY_METRICS = {"miou": "mIoU", "accuracy": "accuracy"}  # fit's val_* records -> axis label
COSTS = {"mflops": "MFLOPs per sample", "train_seconds": "training time (s)",
         "params": "parameters"}  # Result field -> axis label
TASKS_PER_ROW = 3
SWEEP_METRICS = {"miou": "test mIoU", "accuracy": "test accuracy", "fused": "test accuracy",
                 "detected": "share of objects detected"}  # a recorded sweep's metric -> axis label
WHERE_MARKERS = {"none": "o", "input": "^", "inside": "D", "output": "s"}  # Result.where -> marker
PANEL_INCHES = 2.2  # width and height of one image panel
PANELS_PER_ROW = 6  # a figure with more panels wraps onto further rows
SCORE_FLOOR = 1e-3  # lowest token score a log colour scale shows
_PALETTE = ["#202020", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4",
            "#f032e6", "#bfef45", "#fabed4"]


def label_colormap(num_classes: int) -> ListedColormap:
    """A fixed colour per class (background black), for label maps and predictions."""
    if num_classes > len(_PALETTE):
        raise ValueError(f"label_colormap has {len(_PALETTE)} colours, asked for {num_classes}")
    return ListedColormap(_PALETTE[:num_classes])


def _panels(count: int, rows: int = 1) -> tuple[Figure, np.ndarray]:
    columns = -(-count // rows)
    fig, axes = plt.subplots(rows, columns, figsize=(PANEL_INCHES * columns, PANEL_INCHES * rows),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def colour_scale(fig: Figure, shown: AxesImage, axes: plt.Axes | Sequence[plt.Axes], label: str) -> None:
    """A colour bar beside ``axes`` (one panel or several sharing ``shown``'s scale), labelled."""
    bar = fig.colorbar(shown, ax=axes, fraction=0.046, pad=0.02)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)


def _rgb(image: Tensor) -> np.ndarray:
    """``(3, H, W)`` or ``(1, H, W)`` tensor (floats, or uint8 in 0..255) -> array imshow understands;
    colour is clipped to [0, 1] for display (the multi-scale images' noise is not clipped in the data)."""
    scale = 255 if image.dtype == torch.uint8 else 1
    array = image.detach().cpu().float().numpy() / scale
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0).clip(0, 1)


def draw_patch_grid(ax: plt.Axes, image_size: int, patch_size: int, colour: str = "white",
                    linewidth: float = 0.5) -> None:
    """Overlay the P x P patch grid that PatchEmbed cuts the image into."""
    for edge in np.arange(patch_size, image_size, patch_size) - 0.5:
        ax.axhline(edge, color=colour, linewidth=linewidth, alpha=0.6)
        ax.axvline(edge, color=colour, linewidth=linewidth, alpha=0.6)


OVERLAY_ALPHAS = (0.35, 0.75)  # the input, faded, under the attention heatmap


LOOK_FOR_CHARACTERS_PER_PANEL = 30  # a widget's "what to look for" line wraps at the figure's width


def _look_for(fig: Figure, text: str, columns: int) -> None:
    """A widget figure's "what to look for" line above its panels, wrapped to the figure's width."""
    fig.suptitle(textwrap.fill(text, LOOK_FOR_CHARACTERS_PER_PANEL * columns), fontsize=7)


def _overlay(ax: plt.Axes, picture: np.ndarray, heatmap: np.ndarray, vmax: float | None = None,
             origin: str = "upper", picture_cmap: str = "gray") -> AxesImage:
    """``heatmap`` drawn over the faded ``picture`` it was computed on (the same pixels); returns the
    heatmap's image, for its colour scale."""
    if picture.shape[:2] != heatmap.shape:
        raise ValueError(f"expected a heatmap of the picture's size {picture.shape[:2]}, got {heatmap.shape}")
    ax.imshow(picture, cmap=picture_cmap, alpha=OVERLAY_ALPHAS[0], origin=origin)
    return ax.imshow(heatmap, cmap="magma", alpha=OVERLAY_ALPHAS[1], vmin=0, vmax=vmax, origin=origin)


def outline_patches(ax: plt.Axes, token_mask: Tensor, patch_size: int, colour: str = "red") -> None:
    """Draw a box around every patch whose entry in the row-major ``(N,)`` ``token_mask`` is True."""
    grid = math.isqrt(token_mask.numel())
    for token in torch.nonzero(token_mask.flatten()).flatten().tolist():
        row, col = divmod(token, grid)
        ax.add_patch(Rectangle((col * patch_size - 0.5, row * patch_size - 0.5), patch_size,
                               patch_size, fill=False, edgecolor=colour, linewidth=1.5))


def _legend(ax: plt.Axes, names: Sequence[str], cmap: ListedColormap) -> None:
    handles = [Patch(color=cmap(i), label=name) for i, name in enumerate(names)]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=7,
              ncol=2, frameon=False, handlelength=1)


def show_rgbd_scene(scenes: Mapping[str, Tensor], index: int, class_names: Sequence[str],
                    visibility_names: Sequence[str]) -> Figure:
    """One RGB-D scene: RGB, depth, labels, visibility kinds, and the corruption masks."""
    validate_rgbd(scenes)
    fig, axes = _panels(5)
    rgb, depth = scenes["rgb"][index], scenes["depth"][index]
    axes[0, 0].imshow(_rgb(rgb))
    axes[0, 0].set_title("RGB")
    shown = axes[0, 1].imshow(_rgb(depth), cmap="viridis_r", vmin=0, vmax=1)
    axes[0, 1].set_title("depth (near = yellow)")
    fig.colorbar(shown, ax=axes[0, 1], fraction=0.046)
    axes[0, 2].imshow(scenes["label"][index].numpy(), cmap=label_colormap(len(class_names)),
                      vmin=0, vmax=len(class_names) - 1, interpolation="nearest")
    axes[0, 2].set_title("label")
    _legend(axes[0, 2], class_names, label_colormap(len(class_names)))
    axes[0, 3].imshow(scenes["visibility"][index].numpy(), cmap=label_colormap(len(visibility_names)),
                      vmin=0, vmax=len(visibility_names) - 1, interpolation="nearest")
    axes[0, 3].set_title("visible in")
    _legend(axes[0, 3], visibility_names, label_colormap(len(visibility_names)))
    corruption = np.zeros((*scenes["label"].shape[1:], 3))
    corruption[scenes["rgb_corrupt"][index].numpy()] = (1.0, 0.9, 0.2)
    corruption[scenes["depth_corrupt"][index].numpy()] = (0.2, 0.6, 1.0)
    axes[0, 4].imshow(corruption)
    axes[0, 4].set_title("damaged")
    axes[0, 4].legend(handles=[Patch(color=(1.0, 0.9, 0.2), label="RGB glare"),
                               Patch(color=(0.2, 0.6, 1.0), label="depth holes/noise")],
                      loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=7, frameon=False,
                      handlelength=1)
    return fig


def attention_heatmap(attention: Tensor, layer: int, head: int, query: int, grid_size: int,
                      prefix_tokens: int = 1) -> np.ndarray:
    """The attention row of patch ``query`` over the patches, as a ``grid x grid`` array.

    ``attention`` is ``(layers, heads, n, n)`` for one sample, tokens ``[CLS; patches]``.
    """
    row = attention[layer, head, prefix_tokens + query, prefix_tokens:]
    return row.detach().cpu().float().reshape(grid_size, grid_size).numpy()


def plot_attention_map(image: Tensor, attention: Tensor, layer: int, head: int, query: int,
                       patch_size: int, prefix_tokens: int = 1) -> Figure:
    """The widget callback: the image with the query patch boxed, and where that patch attends.

    ``image`` is ``(c, H, W)``; ``attention`` is ``(layers, heads, n, n)`` for that image.
    """
    grid = image.shape[-1] // patch_size
    if not 0 <= query < grid * grid:
        raise ValueError(f"query patch must lie in [0, {grid * grid}), got {query}")
    heatmap = attention_heatmap(attention, layer, head, query, grid, prefix_tokens)
    cls_share = attention[layer, head, prefix_tokens + query, :prefix_tokens].sum().item()
    fig, axes = _panels(2)
    row, col = divmod(query, grid)
    for ax in axes[0]:
        ax.imshow(_rgb(image), cmap="viridis_r")
        draw_patch_grid(ax, image.shape[-1], patch_size)
        outline_patches(ax, torch.arange(grid * grid) == query, patch_size)
    axes[0, 0].set_title(f"query patch {query} (row {row}, col {col})", fontsize=8)
    shown = axes[0, 1].imshow(np.kron(heatmap, np.ones((patch_size, patch_size))), cmap="magma",
                              alpha=0.75, vmin=0)
    axes[0, 1].set_title(f"layer {layer}, head {head}; to CLS: {cls_share:.2f}", fontsize=8)
    colour_scale(fig, shown, axes[0, 1], "attention weight")
    return fig


CROSS_ATTENTION_LOOK_FOR = (
    "What to look for: the S CLS knows the texture and needs the layout, which the L patches carry (the "
    "lighter half, its border); the L CLS needs the texture, which every S patch carries. Weight on itself "
    "is weight not spent on the other branch.")


def plot_cls_cross_attention(image: Tensor, weights: Tensor, patch_size: int, title: str = "CLS"
                             ) -> Figure:
    """The CrossViT widget callback: where one branch's CLS token looks in the other branch.

    ``image`` is ``(c, H, W)``; ``weights`` ``(heads, 1 + n)`` are that CLS token's cross-attention
    (one sample, one fusion layer) over [itself; the other branch's n patches], each of which covers
    ``patch_size`` x ``patch_size`` pixels of the image.  Panels: the image with the other branch's
    patch grid, then the mean over heads and each head drawn over the image, on one colour scale; titles
    give the share kept on the CLS itself, and a line says what to look for.
    """
    grid = image.shape[-1] // patch_size
    if weights.ndim != 2 or weights.shape[1] != 1 + grid * grid:
        raise ValueError(f"expected weights of shape (heads, {1 + grid * grid}) for {patch_size}-pixel "
                         f"patches of a {image.shape[-1]}-pixel image, got {tuple(weights.shape)}")
    weights = weights.detach().cpu().float()
    rows = [("mean over heads", weights.mean(0))] + [(f"head {h}", w) for h, w in enumerate(weights)]
    fig, axes = _panels(1 + len(rows))
    picture = _rgb(image)
    axes[0, 0].imshow(picture, cmap="viridis_r")
    draw_patch_grid(axes[0, 0], image.shape[-1], patch_size)
    axes[0, 0].set_title(title, fontsize=8)
    highest = max(row[1:].max().item() for _, row in rows)  # one scale for every panel
    for ax, (name, row) in zip(axes[0, 1:], rows, strict=True):
        heatmap = np.kron(row[1:].reshape(grid, grid).numpy(), np.ones((patch_size, patch_size)))
        shown = _overlay(ax, picture, heatmap, vmax=highest)
        ax.set_title(f"{name}; on itself {row[0].item():.2f}", fontsize=8)
    colour_scale(fig, shown, list(axes[0, 1:]), "attention weight")
    _look_for(fig, CROSS_ATTENTION_LOOK_FOR, columns=1 + len(rows))
    return fig


BOTTLENECK_LOOK_FOR = (
    "What to look for: the label is the direction of the blob we hear. Does the bottleneck read the moving "
    "blobs and the band of the voice (the bright blob's low tone, the dim blob's high one)?")


FRAMES_TITLE = "frames: a row per tubelet time slice"


def _clip_picture(clip_input: Tensor, grid: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """One modality's input and a token ``grid`` over it, as two arrays of the input's pixels.

    Frames ``(T, 1, H, W)`` with tubelets ``(t, h, w)``: one row per time slice, its T/t frames side by
    side, each tubelet's weight on its frames and its patch.  A spectrogram ``(1, mel, time)`` with
    patches ``(rows, cols)``: as is."""
    grid = grid.detach().cpu().float()
    if clip_input.ndim == 4:
        frames = clip_input[:, 0]  # T H W
        repeats = [frames.shape[0] // grid.shape[0], frames.shape[1] // grid.shape[1],
                   frames.shape[2] // grid.shape[2]]
        pixels = grid.repeat_interleave(repeats[0], 0).repeat_interleave(repeats[1], 1).repeat_interleave(
            repeats[2], 2)  # T H W
        tiled = "(t f) h w -> (t h) (f w)"  # a row per tubelet time slice, its frames side by side
        return (rearrange(frames, tiled, t=grid.shape[0]).cpu().numpy(),
                rearrange(pixels, tiled, t=grid.shape[0]).numpy())
    image = clip_input[0]  # mel time
    patch = (image.shape[0] // grid.shape[0], image.shape[1] // grid.shape[1])
    return image.cpu().numpy(), np.kron(grid.numpy(), np.ones(patch))


def plot_bottleneck_attention(maps: Mapping[str, Mapping[str, Tensor]], bottleneck_index: int,
                              clip: Mapping[str, Tensor]) -> Figure:
    """The MBT widget callback: one row per modality, its input (``clip[m]``: the frames ``(T, 1, H, W)``,
    a row of frames per tubelet time slice, or the spectrogram ``(1, mel, time)``, low mel bands at the
    bottom), then where bottleneck token ``bottleneck_index`` attends over that modality's tokens and how
    much each token attends to it, drawn over the input (``maps`` from ``mbt.bottleneck_attention_maps``; a
    frame tubelet's weight covers its frames), each with its colour scale, and a line on what to look for."""
    fig, axes = _panels(3 * len(maps), rows=len(maps))
    for row, (modality, pieces) in enumerate(maps.items()):
        origin = "lower" if pieces["reads"].ndim == 2 else "upper"
        bottleneck = f"bottleneck {bottleneck_index}"
        picture, _ = _clip_picture(clip[modality], pieces["reads"])
        axes[row, 0].imshow(picture, cmap="gray", origin=origin)
        axes[row, 0].set_title(FRAMES_TITLE if clip[modality].ndim == 4 else modality, fontsize=8)
        for ax, key, what in ((axes[row, 1], "reads", f"{bottleneck} reads {modality}"),
                              (axes[row, 2], "read_by", f"{modality} tokens read {bottleneck}")):
            shown = _overlay(ax, *_clip_picture(clip[modality], pieces[key]), origin=origin)
            ax.set_title(what, fontsize=8)
            colour_scale(fig, shown, ax, "attention weight")
        axes[row, 1].set_xlabel(f"on its CLS {pieces['reads_cls'].item():.2f}, on the bottlenecks "
                                f"{pieces['reads_bottlenecks'].item():.2f}", fontsize=7)
    _look_for(fig, BOTTLENECK_LOOK_FOR, columns=3)
    return fig


def plot_token_scores(images: Mapping[str, Tensor], scores: Mapping[str, Tensor],
                      corrupted: Mapping[str, Tensor], threshold: float, patch_size: int) -> Figure:
    """The TokenFusion widget callback: per modality (one row each), the image with the tokens
    whose score is below ``threshold`` outlined (those substituted at that theta), the score
    heatmap, and the ground-truth corruption mask with the same outlines.

    ``images[m]`` is ``(c, H, W)``, ``scores[m]`` ``(n,)`` for one layer, ``corrupted[m]`` the
    ``(H, W)`` pixel mask.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"the threshold theta must lie in (0, 1), got {threshold}")
    fig, axes = _panels(3 * len(images), rows=len(images))
    for row, (modality, image) in enumerate(images.items()):
        grid = image.shape[-1] // patch_size
        if scores[modality].shape != (grid * grid,):
            raise ValueError(f"expected {grid * grid} scores for {modality!r}, "
                             f"got shape {tuple(scores[modality].shape)}")
        below = scores[modality].cpu() < threshold
        heatmap = scores[modality].detach().cpu().float().reshape(grid, grid).numpy()
        unit = {"vmin": 0, "vmax": 1}  # scores and masks on a fixed [0, 1] scale
        panels = ((_rgb(image), {"cmap": "viridis_r"}, f"{modality}: {int(below.sum())} below θ"),
                  (np.kron(heatmap, np.ones((patch_size, patch_size))), {"cmap": "magma", **unit},
                   "score s(e)"),
                  (corrupted[modality].cpu().numpy(), {"cmap": "gray", **unit}, "ground truth: corrupted"))
        for ax, (values, style, title) in zip(axes[row], panels, strict=True):
            shown = ax.imshow(values, **style)
            outline_patches(ax, below, patch_size)
            ax.set_title(title, fontsize=8)
            if title == "score s(e)":
                colour_scale(fig, shown, ax, "score")
    return fig


def plot_history(histories: Mapping[str, list[dict]], metric: str = "miou") -> Figure:
    """Training loss and the validation ``metric`` ("miou" or "accuracy") per epoch, one line per run."""
    if metric not in HISTORY_METRICS:
        raise ValueError(f"metric must be one of {list(HISTORY_METRICS)}, got {metric!r}")
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(8, 3), layout="constrained")
    for name, history in histories.items():
        epochs = [record["epoch"] for record in history]
        loss_ax.plot(epochs, [record["train_loss"] for record in history], label=name)
        if f"val_{metric}" in history[0]:
            metric_ax.plot(epochs, [record[f"val_{metric}"] for record in history], label=name)
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="training loss")
    label = HISTORY_METRICS[metric]
    metric_ax.set(xlabel="epoch", ylabel=label, title=f"validation {label}")
    loss_ax.legend(fontsize=7)
    return fig


def plot_segmentations(images: Sequence[tuple[str, Tensor]], label: Tensor,
                       predictions: Mapping[str, Tensor], num_classes: int) -> Figure:
    """Input images, the ground-truth label map and each model's prediction, side by side."""
    fig, axes = _panels(len(images) + 1 + len(predictions))
    panels = list(axes[0])
    for ax, (title, image) in zip(panels, images, strict=False):
        ax.imshow(_rgb(image), cmap="viridis_r")
        ax.set_title(title)
    cmap = label_colormap(num_classes)
    maps = [("label", label), *((f"pred: {name}", pred) for name, pred in predictions.items())]
    for ax, (title, values) in zip(panels[len(images):], maps, strict=True):
        ax.imshow(torch.as_tensor(values).cpu().numpy(), cmap=cmap, vmin=0, vmax=num_classes - 1,
                  interpolation="nearest")
        ax.set_title(title, fontsize=9)
    return fig


def plot_point_substitution(image: Tensor, points: Tensor, seeds: Tensor, scores: Tensor, substituted: Tensor,
                            patch_index: Tensor, patch_size: int) -> Figure:
    """The heterogeneous TokenFusion widget callback: the point cloud in 3-D with each seed (a point
    token) coloured by its score and the substituted seeds ringed in red, beside the image with the
    patches those tokens took their features from outlined in red.

    ``image (3, H, W)``, ``points (n, 3)`` the whole cloud, ``seeds (m, 3)``, and per seed for one
    layer: ``scores``, ``substituted`` and ``patch_index (m,)`` (Eq. 9's patch).
    """
    if not scores.shape == substituted.shape == patch_index.shape == seeds.shape[:1]:
        raise ValueError(f"expected one score, substitution flag and patch per seed ({len(seeds)}), got "
                         f"{tuple(scores.shape)}, {tuple(substituted.shape)} and {tuple(patch_index.shape)}")
    num_patches = (image.shape[-1] // patch_size) ** 2
    if patch_index.min() < 0 or patch_index.max() >= num_patches:
        raise ValueError(f"patch indices must lie in [0, {num_patches}), "
                         f"got {patch_index.min()}..{patch_index.max()}")
    fig = plt.figure(figsize=(2 * PANEL_INCHES * 2, 2 * PANEL_INCHES), layout="constrained")
    cloud = fig.add_subplot(1, 2, 1, projection="3d")
    x, y, z = points.cpu().float().T.numpy()
    cloud.scatter(x, y, z, s=1, c="0.75", depthshade=False)
    sx, sy, sz = seeds.cpu().float().T.numpy()
    shown = scores.cpu().float().clamp(min=SCORE_FLOOR).numpy()  # scores span decades: a log scale
    dots = cloud.scatter(sx, sy, sz, s=14, c=shown, cmap="magma", norm=LogNorm(SCORE_FLOOR, 1),
                         depthshade=False)
    ring = substituted.cpu()
    cloud.scatter(sx[ring], sy[ring], sz[ring], s=60, facecolors="none", edgecolors="red", linewidths=1.2,
                  depthshade=False)
    cloud.set_title(f"point tokens: {int(ring.sum())} of {len(seeds)} substituted", fontsize=9)
    fig.colorbar(dots, ax=cloud, shrink=0.6, label="score s(e)")
    picture = fig.add_subplot(1, 2, 2)
    picture.imshow(_rgb(image))
    draw_patch_grid(picture, image.shape[-1], patch_size)
    used = torch.zeros(num_patches, dtype=torch.bool)
    used[patch_index.cpu()[ring]] = True
    outline_patches(picture, used, patch_size)
    picture.set(xticks=[], yticks=[])
    picture.set_title(f"image patches read: {int(used.sum())}", fontsize=9)
    return fig


def plot_referring(image: Tensor, expression: str, mask: Tensor, words: Sequence[str], word_attention: Tensor,
                   gate_openings: Sequence[float], stage: int) -> Figure:
    """The LAVT widget callback: the scene with the predicted mask, each word's pixel attention at
    ``stage`` (1-4, the attention of every pixel on that word, heads averaged), and the gates' mean
    opening per stage.  ``image (3, H, W)``, ``mask (H, W)`` bool, ``word_attention (t, h, w)`` for the
    ``t`` real ``words``."""
    if mask.shape != image.shape[1:]:
        raise ValueError(f"expected a mask of the image's size {tuple(image.shape[1:])}, "
                         f"got {tuple(mask.shape)}")
    if len(words) != len(word_attention):
        raise ValueError(f"expected one attention map per word ({len(words)}), got {len(word_attention)}")
    count = 2 + len(words)
    fig, axes = _panels(count, rows=-(-count // PANELS_PER_ROW))
    axes = axes.ravel()
    axes[0].imshow(_rgb(image))
    outline = mask.cpu().float().numpy()
    for colour, width in (("black", 3.0), ("white", 1.2)):  # white on black: visible on any colour
        axes[0].contour(outline, levels=[0.5], colors=colour, linewidths=width)
    axes[0].set_title(f'"{expression}" (mask outlined)', fontsize=8)
    size = image.shape[1:]
    for ax, word, weights in zip(axes[1:count - 1], words, word_attention, strict=True):
        upsampled = torch.nn.functional.interpolate(weights[None, None].float(), size=size, mode="nearest")
        shown = _overlay(ax, _rgb(image), upsampled[0, 0].cpu().numpy(), vmax=1)
        ax.set_title(f"{word!r}, stage {stage}", fontsize=8)
    if words:
        colour_scale(fig, shown, list(axes), "pixel's attention on the word")  # beside the whole grid
    bars = axes[count - 1]
    stages = range(1, len(gate_openings) + 1)
    bars.bar(stages, gate_openings, color="tab:green")
    bars.set(xticks=stages, xlabel="stage", ylabel="mean |S_i|", ylim=(0, max(0.05, *gate_openings) * 1.2))
    bars.yaxis.set_major_locator(AutoLocator())  # _panels hides ticks: this panel needs its y-axis
    bars.tick_params(labelsize=6)
    bars.set_title("gate opening", fontsize=8)
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig


def _task_panels(count: int, panel_height: float) -> tuple[Figure, list[plt.Axes]]:
    """A figure of ``count`` panels, ``TASKS_PER_ROW`` to a row, the unused ones hidden; the used panels."""
    rows, columns = math.ceil(count / TASKS_PER_ROW), min(count, TASKS_PER_ROW)
    fig, axes = plt.subplots(rows, columns, figsize=(3.8 * columns, panel_height * rows),
                             layout="constrained", squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, list(axes.flat[:count])


def plot_metric_vs_cost(results: Sequence[Result], cost: str = "mflops") -> Figure:
    """Each task's headline metric against a ``cost`` of ``COSTS`` (one panel per task, one point per model
    named in the panel's legend, its marker saying where the modalities meet (``WHERE_MARKERS``), the
    single-modality baselines hollow; both axes from zero): what each method buys, at what price."""
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {list(COSTS)}, got {cost!r}")
    if not results:
        raise ValueError("expected at least one Result to plot, got none")
    tasks = list(dict.fromkeys(result.task for result in results))
    fig, axes = _task_panels(len(tasks), panel_height=4.4)
    for ax, task in zip(axes, tasks, strict=True):
        points = [result for result in results if result.task == task]
        for index, row in enumerate(points):
            colour = _PALETTE[1 + index % (len(_PALETTE) - 1)]
            ax.scatter(getattr(row, cost), row.value, s=40, marker=WHERE_MARKERS[row.where], label=row.model,
                       color="none" if row.where == "none" else colour, edgecolors=colour, linewidths=1.5)
        # the models' names in a legend under the panel: labels beside the points would overlap
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
        notebooks = sorted({row.notebook for row in points})
        shown = notebooks[0] if len(notebooks) == 1 else f"{notebooks[0]}–{notebooks[-1]}"
        ax.set(xlabel=COSTS[cost], ylabel=points[0].metric, title=f"{task} (notebook {shown})")
        ax.title.set_fontsize(8)
        ax.set_xlim(0, 1.15 * max(getattr(row, cost) for row in points))
        ax.set_ylim(0, 1.12 * max(row.value for row in points))
    handles = [plt.Line2D([], [], marker=marker, linestyle="", color="grey", label=f"meet: {where}",
                          markerfacecolor="none" if where == "none" else "grey")
               for where, marker in WHERE_MARKERS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=7)
    return fig


def plot_seed_spread(sweeps: Sequence[Mapping], models: Sequence[str] | None = None) -> Figure:
    """One panel per recorded seed sweep (``fusion_edu.sweeps.load_sweep``): each model's metric as its mean
    over the seeds (a bar), the lowest to the highest seed (a black line) and every seed (a dot), on an
    axis from zero; ``models`` (default: every recorded one) chooses which, in that order."""
    if not sweeps:
        raise ValueError("expected at least one recorded sweep to plot, got none")
    fig, axes = _task_panels(len(sweeps), panel_height=3.4)
    for ax, sweep in zip(axes, sweeps, strict=True):
        names = list(models or next(iter(sweep["seeds"].values())))
        spreads = [seed_spread(sweep, model) for model in names]
        positions = np.arange(len(names))
        ax.bar(positions, [spread.mean for spread in spreads], color=_PALETTE[3], alpha=0.45, width=0.6)
        ax.vlines(positions, [spread.low for spread in spreads], [spread.high for spread in spreads],
                  color="black", linewidth=1.2)
        for position, spread in zip(positions, spreads, strict=True):
            ax.scatter([position] * len(spread.values), spread.values, s=9, color="black", zorder=3)
        ax.set_xticks(positions, [textwrap.fill(model.replace("_", " "), 14) for model in names], fontsize=7,
                      rotation=60, ha="right", rotation_mode="anchor")
        ax.set_ylim(0, 1.08 * max(spread.high for spread in spreads))
        ax.set_ylabel(SWEEP_METRICS.get(sweep["metric"], sweep["metric"]), fontsize=8)
        ax.set_title(f"notebook {sweep['notebook']}: {len(sweep['seeds'])} seeds", fontsize=9)
    return fig


def plot_seed_curves(sweep: Mapping, models: Sequence[str], quantities: Sequence[str], x: Sequence[float],
                     xlabel: str) -> Figure:
    """Each of ``models``' recorded ``quantities`` (one per point of ``x``) over a sweep's seeds: the mean as
    a line, the lowest to the highest seed as a band; beside it, each model's difference from the first
    model, seed by seed, with zero marked.  Both value axes start from zero or are centred on it."""
    if not 2 <= len(models) < len(_PALETTE):
        raise ValueError(f"expected a model to compare with and 1-{len(_PALETTE) - 2} more, "
                         f"got {list(models)}")
    if len(quantities) != len(x):
        raise ValueError(f"expected one quantity per point of x, got {len(quantities)} quantities and "
                         f"{len(x)} points")
    fig, (values, differences) = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
    reference = np.array([seed_spread(sweep, models[0], q).values for q in quantities])  # x seeds
    highest, widest = 0.0, 0.0
    for colour, model in zip(_PALETTE[1:], models, strict=False):  # the palette outnumbers the models
        curve = np.array([seed_spread(sweep, model, q).values for q in quantities])  # x seeds
        values.plot(x, curve.mean(1), color=colour, marker="o", markersize=3, label=model)
        values.fill_between(x, curve.min(1), curve.max(1), color=colour, alpha=0.2)
        highest = max(highest, curve.max())
        if model != models[0]:
            gap = curve - reference
            differences.plot(x, gap, color=colour, marker="o", markersize=3, linewidth=0.8, alpha=0.8)
            differences.plot([], [], color=colour, label=f"{model} - {models[0]}, each seed")
            widest = max(widest, np.abs(gap).max())
    metric = SWEEP_METRICS.get(sweep["metric"], sweep["metric"])
    values.set(xlabel=xlabel, ylabel=metric, ylim=(0, 1.1 * highest))
    values.legend(fontsize=7)
    differences.axhline(0, color="black", linewidth=0.8)
    limit = 1.2 * widest or 1.0  # identical curves: any symmetric range
    differences.set(xlabel=xlabel, ylabel="difference", ylim=(-limit, limit))
    differences.legend(fontsize=7)
    return fig
