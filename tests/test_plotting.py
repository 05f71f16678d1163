import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from fusion_edu.crossvit import CrossViT
from fusion_edu.datasets import CLASSES, VISIBILITY
from fusion_edu.plotting import (
    attention_heatmap,
    draw_patch_grid,
    plot_attention_map,
    plot_bottleneck_attention,
    plot_cls_cross_attention,
    plot_history,
    plot_segmentations,
    plot_token_scores,
    show_rgbd_scene,
)
from fusion_edu.tokenfusion import TokenFusion
from fusion_edu.train import seeded
from fusion_edu.vit import VisionTransformer
from fusion_edu.widgets import (
    attention_explorer,
    cross_attention_explorer,
    sample_attention,
    sample_cross_attention,
    sample_token_scores,
    token_score_explorer,
)


def _attention(layers=2, heads=3, grid=2):
    tokens = 1 + grid * grid
    return torch.softmax(torch.randn(layers, heads, tokens, tokens), dim=-1)


def test_attention_heatmap_is_the_query_row_over_patches():
    attention = _attention()
    heatmap = attention_heatmap(attention, layer=1, head=2, query=3, grid_size=2)
    expected = attention[1, 2, 4, 1:].reshape(2, 2).numpy()
    np.testing.assert_array_equal(heatmap, expected)


def test_attention_widget_callback_draws_the_heatmap():
    attention = _attention()
    image = torch.rand(3, 8, 8)
    figure = plot_attention_map(image, attention, layer=0, head=1, query=2, patch_size=4)
    shown = figure.axes[1].images[-1].get_array()
    expected = np.kron(attention[0, 1, 3, 1:].reshape(2, 2).numpy(), np.ones((4, 4)))
    np.testing.assert_allclose(shown, expected)
    assert "layer 0, head 1" in figure.axes[1].get_title()
    assert figure.axes[-1].get_label() == "<colorbar>" and figure.axes[-1].get_ylabel() == "attention weight"
    assert f"{attention[0, 1, 3, 0]:.2f}" in figure.axes[1].get_title()
    plt.close(figure)
    with pytest.raises(ValueError, match=r"query patch must lie in \[0, 4\), got 4"):
        plot_attention_map(image, attention, 0, 0, 4, patch_size=4)


def test_sample_attention_and_explorer(small_scenes):
    with seeded(0):
        model = VisionTransformer(img_size=32, patch_size=8, in_chans=1, embed_dim=16, depth=2,
                                  num_heads=2, task="segmentation", modality="depth")
    attention = sample_attention(model, small_scenes, 3)
    assert attention.shape == (2, 2, 17, 17)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 2, 17))
    explorer = attention_explorer(model, small_scenes, "depth")
    sliders = {child.description: child for child in explorer.children[:-1]}
    assert sliders["layer"].max == 1 and sliders["head"].max == 1 and sliders["query_row"].max == 3
    plt.close("all")


def test_scene_history_and_segmentation_figures(small_scenes):
    figure = show_rgbd_scene(small_scenes, 0, CLASSES, VISIBILITY)
    assert [ax.get_title() for ax in figure.axes[:3]] == ["RGB", "depth (near = yellow)", "label"]
    history = [{"epoch": 1, "train_loss": 1.0, "val_miou": 0.2, "val_accuracy": 0.5},
               {"epoch": 2, "train_loss": 0.5, "val_miou": 0.4, "val_accuracy": 0.7}]
    figure = plot_history({"rgb": history})
    assert list(figure.axes[1].lines[0].get_ydata()) == [0.2, 0.4]
    figure = plot_history({"rgb": history}, metric="accuracy")
    assert list(figure.axes[1].lines[0].get_ydata()) == [0.5, 0.7]
    assert figure.axes[1].get_title() == "validation accuracy"
    with pytest.raises(ValueError, match="metric must be one of"):
        plot_history({"rgb": history}, metric="loss")
    label = small_scenes["label"][0]
    figure = plot_segmentations([("RGB", small_scenes["rgb"][0])], label, {"rgb": label}, 5)
    assert [ax.get_title() for ax in figure.axes] == ["RGB", "label", "pred: rgb"]
    plt.close("all")


def _outlined(ax):
    return [(p.get_x(), p.get_y()) for p in ax.patches]


def test_plot_token_scores_outlines_the_tokens_below_theta():
    images = {"rgb": torch.rand(3, 8, 8), "depth": torch.rand(1, 8, 8)}
    scores = {"rgb": torch.tensor([0.5, 0.01, 0.5, 0.5]), "depth": torch.tensor([0.3, 0.3, 0.3, 0.1])}
    corrupted = {m: torch.zeros(8, 8, dtype=torch.bool) for m in images}
    fig = plot_token_scores(images, scores, corrupted, threshold=0.02, patch_size=4)
    rgb_axes, depth_axes = fig.axes[:3], fig.axes[3:6]
    scales = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(scales) == 2 and scales[0].get_ylabel() == "score"  # the score panels' colour scales
    assert all(_outlined(ax) == [(3.5, -0.5)] for ax in rgb_axes)  # token 1: row 0, column 1
    assert all(_outlined(ax) == [] for ax in depth_axes)
    plt.close(fig)
    fig = plot_token_scores(images, scores, corrupted, threshold=0.2, patch_size=4)  # what if
    assert _outlined(fig.axes[3]) == [(3.5, 3.5)]  # depth token 3 is now below theta
    plt.close(fig)
    with pytest.raises(ValueError, match=r"expected 4 scores for 'rgb', got shape \(5,\)"):
        plot_token_scores(images, {**scores, "rgb": torch.rand(5)}, corrupted, 0.02, 4)
    with pytest.raises(ValueError, match=r"\(0, 1\), got 1.5"):
        plot_token_scores(images, scores, corrupted, 1.5, 4)


def test_token_score_explorer_reads_the_models_scores():
    with seeded(0):
        model = TokenFusion({"rgb": 3, "depth": 1}, img_size=8, patch_size=4, embed_dim=16, depth=2,
                            num_heads=2)
    data = {"rgb": torch.rand(3, 3, 8, 8), "depth": torch.rand(3, 1, 8, 8),
            "rgb_corrupt": torch.zeros(3, 8, 8, dtype=torch.bool),
            "depth_corrupt": torch.zeros(3, 8, 8, dtype=torch.bool)}
    scores = sample_token_scores(model, data, 2)
    expected = model({k: data[k][2:3] for k in ("rgb", "depth")}).scores
    assert len(scores) == 2
    torch.testing.assert_close(scores[1]["depth"], expected[1]["depth"][0])
    explorer = token_score_explorer(model, data, {"rgb": "rgb_corrupt", "depth": "depth_corrupt"})
    sliders = {child.description: child for child in explorer.children[:-1]}
    assert sliders["layer"].max == 1 and sliders["sample"].max == 2
    assert sliders["theta"].value == pytest.approx(0.02)
    plt.close("all")


def test_plot_cls_cross_attention_draws_each_head_over_the_image():
    weights = torch.softmax(torch.randn(3, 1 + 16), dim=-1)  # 3 heads, CLS + a 4x4 grid
    image = torch.rand(3, 32, 32)
    figure = plot_cls_cross_attention(image, weights, 8, "S CLS")
    panels = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 1 + 1 + 3  # image, mean, three heads
    assert len(figure.axes) == len(panels) + 1  # one colour scale, shared by the heatmaps
    # each heatmap panel: the image (faded) under the heatmap
    for ax in panels[1:]:
        picture, heatmap = ax.images
        np.testing.assert_allclose(picture.get_array(), image.permute(1, 2, 0).numpy(), rtol=1e-6)
        assert picture.get_alpha() < heatmap.get_alpha()
    assert {ax.images[1].get_clim() for ax in panels[1:]} == {(0, weights[:, 1:].max().item())}
    np.testing.assert_allclose(panels[1].images[1].get_array()[::8, ::8],
                               weights.mean(0)[1:].reshape(4, 4).numpy(), rtol=1e-6)
    np.testing.assert_allclose(panels[4].images[1].get_array()[8, 16], weights[2, 1 + 4 + 2].item())
    assert f"{weights[0, 0].item():.2f}" in panels[2].get_title()  # the share kept on itself
    assert figure.get_suptitle().startswith("What to look for")
    with pytest.raises(ValueError, match=r"\(heads, 17\) .* got \(3, 65\)"):
        plot_cls_cross_attention(torch.rand(3, 32, 32), torch.rand(3, 65), 8)
    plt.close("all")


def test_cross_attention_explorer_reads_the_fusion_weights():
    with seeded(0):
        model = CrossViT(img_size=16, patch_sizes=(4, 8), embed_dims=(12, 24), num_heads=(2, 2),
                         depth=((1, 1, 1),) * 2)
    data = {"image": torch.rand(3, 3, 16, 16), "label": torch.zeros(3, dtype=torch.long)}
    attention = sample_cross_attention(model, data, 1)
    expected = model(data["image"][1:2], return_attention=True).fusion_attention
    assert len(attention) == 2 and attention[1][0].shape == (2, 1 + 4)  # S CLS over L's 2x2 patches
    assert attention[0][1].shape == (2, 1 + 16)  # L CLS over S's 4x4 patches
    torch.testing.assert_close(attention[1][1], expected[1][1][0][0, :, 0])
    explorer = cross_attention_explorer(model, data)
    sliders = {child.description: child for child in explorer.children[:-1]}
    assert sliders["block"].max == 1 and sliders["sample"].max == 2
    with seeded(0):
        other = CrossViT(img_size=16, patch_sizes=(4, 8), embed_dims=(12, 24), num_heads=(2, 2),
                         fusion="class_token")
    with pytest.raises(ValueError, match="shows cross-attention fusion, got a 'class_token'"):
        cross_attention_explorer(other, data)
    plt.close("all")


def test_draw_patch_grid_draws_the_inner_edges():
    fig, ax = plt.subplots()
    draw_patch_grid(ax, 32, 8, colour="yellow", linewidth=1.5)
    edges = sorted({line.get_ydata()[0] for line in ax.lines if line.get_ydata()[0] == line.get_ydata()[1]})
    assert edges == [7.5, 15.5, 23.5] and len(ax.lines) == 6  # 3 horizontal + 3 vertical
    assert all(line.get_linewidth() == 1.5 for line in ax.lines)
    plt.close(fig)


def test_plot_bottleneck_attention_draws_each_map_over_its_input():
    frames_reads = torch.arange(8.0).reshape(2, 2, 2)  # t h w: 2 time slices of 2x2 tubelets
    maps = {"frames": {"reads": frames_reads, "read_by": frames_reads + 1, "reads_cls": torch.tensor(0.25),
                       "reads_bottlenecks": torch.tensor(0.5)},
            "spectrogram": {"reads": torch.rand(2, 3), "read_by": torch.rand(2, 3),
                            "reads_cls": torch.tensor(0.0), "reads_bottlenecks": torch.tensor(0.1)}}
    clip = {"frames": torch.rand(4, 1, 4, 4), "spectrogram": torch.rand(1, 4, 6)}  # 2-frame 2x2 tubelets
    figure = plot_bottleneck_attention(maps, 2, clip)
    panels = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 6 and len(figure.axes) == 10  # per modality: input, two maps, a scale each
    frames = clip["frames"][:, 0]
    tiled = torch.cat([torch.cat([frames[0], frames[1]], 1), torch.cat([frames[2], frames[3]], 1)], 0)
    np.testing.assert_allclose(panels[0].images[0].get_array(), tiled.numpy())  # a row per time slice
    picture, heatmap = panels[1].images
    np.testing.assert_allclose(picture.get_array(), tiled.numpy())
    # tubelet (slice 1, row 0, col 1) = 5 covers frames 2 and 3, pixels rows 0-1, cols 2-3 of each
    np.testing.assert_array_equal(heatmap.get_array()[4:6, 2:4], [[5, 5], [5, 5]])
    np.testing.assert_array_equal(heatmap.get_array()[4:6, 6:8], [[5, 5], [5, 5]])
    np.testing.assert_array_equal(panels[2].images[1].get_array()[0, ::2], [1, 2, 1, 2])  # both frames
    spectrogram_map = panels[4].images[1]
    assert spectrogram_map.origin == "lower" and spectrogram_map.get_array().shape == (4, 6)
    np.testing.assert_allclose(spectrogram_map.get_array()[::2, ::2], maps["spectrogram"]["reads"].numpy())
    assert "bottleneck 2" in panels[1].get_title() and "0.25" in panels[1].get_xlabel()
    assert figure.get_suptitle().startswith("What to look for")
    plt.close("all")
