import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.patches import Rectangle
from torch import nn

from fusion_edu import tokenfusion_heterogeneous
from fusion_edu.camera import intrinsics
from fusion_edu.datasets.pointcloud import PointCloudConfig, generate_pointcloud_scenes
from fusion_edu.plotting import plot_point_substitution
from fusion_edu.points import farthest_point_sample, group_points
from fusion_edu.tokenfusion_heterogeneous import (
    BACKGROUND,
    FUSIONS,
    SPARSITY_BUCKETS,
    PointImageOutput,
    PointImageTokenFusion,
    detection_accuracy_by_sparsity,
    detection_targets,
    in_sparsity_bucket,
    object_detections,
    project_to_patches,
    substitute_point_tokens,
    substitution_share,
)
from fusion_edu.train import seeded
from fusion_edu.vit import NUM_PREFIX_TOKENS
from fusion_edu.widgets import point_substitution_explorer, sample_point_substitution

SMALL = dict(num_seeds=16, group_size=4, point_dim=16, image_dim=8, depth=2, num_heads=2, image_size=64,
             patch_size=8)


@pytest.fixture(scope="module")
def scenes():
    raw = generate_pointcloud_scenes(6, [3, 0], PointCloudConfig(num_points=128, num_rays=1500))
    return detection_targets(raw, num_seeds=16, patch_size=8, group_size=SMALL["group_size"])


def _identity_camera():
    return intrinsics(10.0, 64, 64)[None], torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1)[None]


def test_point_to_patch_index_is_eq_2_computed_by_hand():
    intrinsic, extrinsic = _identity_camera()
    points = torch.tensor([[[1.0, 2.0, 4.0], [0.0, 0.0, -1.0], [40.0, 0.0, 1.0]]])
    index, valid = project_to_patches(points, intrinsic, extrinsic, image_size=64, patch_size=8)
    # (1, 2, 4): u = 10 * 1/4 + 32 = 34.5, v = 10 * 2/4 + 32 = 37 -> patch row 4, column 4 of 8 -> 36
    assert index[0, 0] == 4 * 8 + 4 and valid[0].tolist() == [True, False, False]  # behind; outside
    assert index[0, 1:].tolist() == [0, 0]


def test_low_scoring_point_tokens_take_the_projected_image_token_through_h():
    point_tokens = torch.ones(1, 3, 4)
    image_tokens = torch.arange(2 * 5, dtype=torch.float).reshape(1, 5, 2)  # 5 patches, width 2
    projection = nn.Linear(2, 4)
    scores = torch.tensor([[0.9, 0.01, 0.01]])
    patch_index, valid = torch.tensor([[0, 3, 3]]), torch.tensor([[True, True, False]])
    read, substituted = substitute_point_tokens(point_tokens, scores, image_tokens, patch_index, valid,
                                                projection, threshold=0.02)
    assert substituted.tolist() == [[False, True, False]]  # the third has no patch: never substituted
    torch.testing.assert_close(read[0, [0, 2]], point_tokens[0, [0, 2]])  # kept tokens are read as they are
    torch.testing.assert_close(read[0, 1], projection(image_tokens[0, 3]))


def _by_hand(model, inputs):
    """TokenFusion's point branch written out: per layer, score the tokens, read h(image token) in place of
    those under θ, re-add the positions (only the first copy trained), scale the attention update of the
    kept tokens that have a patch by their scores (Eq. 4), and add the layer's update to each token's own
    stream."""
    tokens, positions, xyz = model.tokenizer(inputs["points"], inputs["seeds"])
    image = model.image.embed(inputs["image"])
    patch_index, valid = project_to_patches(xyz, inputs["K"], inputs["Rt"], model.image_size,
                                            model.patch_size)
    rows = torch.arange(len(tokens))[:, None]
    for index, layer in enumerate(model.layers):
        image, _ = model.image.blocks[index](image)
        scores = model.score_predictors[index](tokens)
        substituted = (scores < model.threshold) & valid
        from_image = model.projections[index](image[:, NUM_PREFIX_TOKENS:].detach()[rows, patch_index])
        read = torch.where(substituted[..., None], from_image, tokens)
        x = read + (positions if index == 0 else positions.detach())
        scale = torch.where(substituted | ~valid, 1.0, scores)  # tokens without a patch: unscaled
        x = x + scale[..., None] * layer.attn(layer.norm1(x))[0]
        x = x + layer.mlp(layer.norm2(x))
        tokens = x + (tokens - read)  # a substituted token's own stream keeps its point features
    return model.class_head(model.norm(tokens)).transpose(1, 2)


def test_the_fused_point_branch_is_the_layer_rule_written_out(scenes):
    with seeded(0):
        model = PointImageTokenFusion(threshold=0.5, **SMALL)  # scores start near 0.5: some substituted
    output = model(scenes)
    assert 0 < sum(int(mask.sum()) for mask in output.substituted) < 2 * output.has_patch.sum()
    expected = _by_hand(model, scenes)
    torch.testing.assert_close(output.logits, expected)
    grads = [torch.autograd.grad(logits.square().sum(), list(model.tokenizer.position.parameters()))
             for logits in (output.logits, expected)]
    for package, by_hand in zip(*grads, strict=True):  # RPA: only the first copy of the positions trains
        torch.testing.assert_close(package, by_hand)


def test_scores_do_not_compound_down_the_stream(scenes):
    with seeded(0):
        model = PointImageTokenFusion(threshold=0.0, **SMALL).eval()  # nothing substituted
    with torch.no_grad():
        for predictor in model.score_predictors:  # every score 1e-3 (the last layer's bias decides)
            predictor.net[-2].weight.zero_()
            predictor.net[-2].bias.copy_(torch.tensor([0.0, 6.9]))
        tokens, positions, _ = model.tokenizer(scenes["points"], scenes["seeds"])
        output = model(scenes)
        assert all(torch.allclose(s, torch.full_like(s, 1e-3), atol=1e-4) for s in output.scores)
        scale = torch.where(output.has_patch, 1e-3, 1.0)[..., None]  # tokens without a patch: unscaled
        for layer in model.layers:  # with scores near 0 the attention updates vanish; the stream does not
            x = tokens + positions
            x = x + scale * layer.attn(layer.norm1(x))[0]
            tokens = x + layer.mlp(layer.norm2(x))
        torch.testing.assert_close(output.logits, model.class_head(model.norm(tokens)).transpose(1, 2))


def test_the_controls_read_the_image_without_scores(scenes):
    with seeded(0):
        everyone = PointImageTokenFusion("substitute_all", **SMALL)
    state = everyone.state_dict()
    controls = {share: PointImageTokenFusion("random", random_share=(share, share), **SMALL)
                for share in (0, 1)}
    with seeded(0):
        additive = PointImageTokenFusion("additive", **SMALL)
    for model in (*controls.values(), additive):
        model.load_state_dict(state)
    models = {"all": everyone, "random 1": controls[1], "random 0": controls[0], "additive": additive}
    outputs = {name: model.eval()(scenes) for name, model in models.items()}
    assert all(torch.equal(m, outputs["all"].has_patch) for m in outputs["all"].substituted)
    torch.testing.assert_close(outputs["random 1"].logits, outputs["all"].logits)  # share 1 substitutes all
    assert not any(m.any() for m in outputs["random 0"].substituted)
    assert not torch.allclose(outputs["random 0"].logits, outputs["all"].logits)
    assert not torch.allclose(outputs["additive"].logits, outputs["all"].logits)
    assert all(o.scores is None for o in outputs.values())


def test_random_substitution_takes_its_share_and_is_reproducible_in_evaluation(scenes):
    with seeded(0):
        model = PointImageTokenFusion("random", random_share=(0.3, 0.7), **SMALL)
    share = substitution_share(model, scenes)
    assert abs(share[0] - 0.3) < 0.15 and abs(share[1] - 0.7) < 0.15, share
    assert substitution_share(model, scenes) == share  # evaluation draws from a fixed generator
    with seeded(0):
        same = PointImageTokenFusion("random", random_share=(0.5, 0.5), **SMALL).eval()
    first, second = same(scenes).substituted
    assert not torch.equal(first, second)  # each layer draws afresh, in evaluation as in training
    model.train()
    first, second = model(scenes).substituted, model(scenes).substituted  # training draws afresh
    assert not all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_substitution_share_counts_the_tokens_with_a_patch_that_read_the_image(scenes):
    with seeded(0):
        always, never = (PointImageTokenFusion(threshold=t, **SMALL) for t in (1.0, 0.0))
    assert substitution_share(always, scenes) == [1.0, 1.0]
    assert substitution_share(never, scenes) == [0.0, 0.0]


def test_bad_fusions_are_refused_with_what_was_expected():
    with pytest.raises(ValueError, match="fusion must be one of"):
        PointImageTokenFusion("late", **SMALL)
    with pytest.raises(ValueError, match=r"one share in \[0, 1\] per layer \(2\).*random_share=None"):
        PointImageTokenFusion("random", **SMALL)
    with pytest.raises(ValueError, match=r"per layer \(2\)"):
        PointImageTokenFusion("random", random_share=(0.5,), **SMALL)
    with pytest.raises(ValueError, match="only it takes shares"):
        PointImageTokenFusion(random_share=(0.5, 0.5), **SMALL)
    for shares in ([], (0.5, 1.5)):
        with pytest.raises(ValueError, match=r"one share in \[0, 1\] per layer"):
            PointImageTokenFusion("random", random_share=shares, **SMALL)
    with seeded(0), pytest.raises(ValueError, match="point-only model reads no image"):
        substitution_share(PointImageTokenFusion("none", **SMALL), {})


def test_detection_targets_label_seeds_by_the_object_they_lie_on(scenes):
    rows = torch.arange(len(scenes["seeds"]))[:, None]
    instance = scenes["point_instance"].long()[rows, scenes["seeds"]]
    assert torch.equal(instance, scenes["seed_instance"])
    on_object = instance >= 0
    assert (scenes["label"][~on_object] == BACKGROUND).all()
    expected = scenes["object_class"][rows.expand_as(instance)[on_object], instance[on_object]] + 1
    assert torch.equal(scenes["label"][on_object], expected)
    assert scenes["image"].dtype == torch.float32 and scenes["image"].max() <= 1
    assert (scenes["patch_label"] > 0).sum() > 0  # projected object centres mark image patches


def test_groups_made_once_with_the_data_are_those_each_forward_would_make(scenes, monkeypatch):
    raw = {key: value for key, value in scenes.items() if key != "groups"}
    monkeypatch.setattr(tokenfusion_heterogeneous, "TARGETS_CHUNK", 4)  # 6 scenes: two chunks
    chunked = detection_targets(raw, SMALL["num_seeds"], patch_size=8, group_size=SMALL["group_size"])
    assert torch.equal(chunked["seeds"], farthest_point_sample(raw["points"], SMALL["num_seeds"]))
    one_by_one = torch.cat([group_points(raw["points"][[b]], raw["seeds"][[b]], SMALL["group_size"])
                            for b in range(len(raw["points"]))])
    assert torch.equal(chunked["groups"], one_by_one) and one_by_one.shape == (6, 16, SMALL["group_size"], 3)
    with seeded(0):
        model = PointImageTokenFusion("tokenfusion", **SMALL)
    with_groups, without = model(scenes), model(raw)
    assert torch.equal(with_groups.logits, without.logits)
    assert torch.equal(with_groups.aux_loss, without.aux_loss)
    wrong = model({**scenes, "groups": torch.zeros_like(scenes["groups"])})  # stored groups are what it reads
    assert not torch.equal(wrong.logits, with_groups.logits)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_forward_shapes_and_a_finite_loss(scenes, fusion):
    with seeded(0):
        shares = (0.5, 0.5) if fusion == "random" else None
        model = PointImageTokenFusion(fusion, random_share=shares, **SMALL)
    output = model(scenes)
    assert output.logits.shape == (6, 5, 16) and output.centres.shape == (6, 16, 3)
    assert torch.isfinite(output.aux_loss)
    assert (output.scores is not None) == (fusion == "tokenfusion")
    assert (output.patch_logits is not None) == (fusion != "none")
    if fusion != "none":
        assert output.patch_logits.shape == (6, 5, 64) and len(output.substituted) == 2


def test_point_loss_reaches_the_scores_but_not_the_image_branch(scenes):
    with seeded(0):
        model = PointImageTokenFusion(lambda_l1=0.0, **SMALL)
    output = model(scenes)
    torch.nn.functional.cross_entropy(output.logits, scenes["label"]).backward()
    assert model.score_predictors[0].net[1].weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.image.blocks.parameters())


def test_points_all_behind_the_camera_are_never_substituted(scenes):
    with seeded(0):
        model = PointImageTokenFusion(threshold=0.99, **SMALL)
    flipped = {**scenes, "Rt": scenes["Rt"] * torch.tensor([-1.0, 1.0, -1.0])[:, None]}  # turned around
    output = model(flipped)
    assert not any(mask.any() for mask in output.substituted) and torch.isfinite(output.logits).all()
    assert any(mask.any() for mask in model(scenes).substituted)  # the same scores, seen: substituted


class _Oracle(nn.Module):
    """Predicts every seed's true class and centre: every object with a seed is detected."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, inputs):
        logits = torch.nn.functional.one_hot(inputs["label"], 5).float().transpose(1, 2) * 10
        return PointImageOutput(logits=logits + self.weight, centres=inputs["seed_centre"])


def test_object_detections_from_seed_votes(scenes):
    detections = object_detections(_Oracle(), scenes, torch.device("cpu"))
    present = scenes["object_class"] >= 0
    assert len(detections["correct"]) == int(present.sum())
    assert torch.equal(detections["correct"], detections["seeds"] > 0)
    torch.testing.assert_close(detections["points"], scenes["object_points"][present])
    table = detection_accuracy_by_sparsity(detections)
    assert sum(count for _, count in table.values()) == int(present.sum())


def test_sparsity_buckets_split_objects_by_their_points():
    points = torch.tensor([0, 1, 8, 9, 32, 33, 500])
    members = {name: in_sparsity_bucket(points, name).tolist() for name in SPARSITY_BUCKETS}
    assert members == {"none": [True] + [False] * 6, "1-8": [False, True, True] + [False] * 4,
                       "9-32": [False] * 3 + [True, True, False, False], "33+": [False] * 5 + [True, True]}
    detections = {"points": points, "correct": torch.tensor([False, True, False, True, True, False, True])}
    detections["class_correct"] = torch.ones(7, dtype=torch.bool)
    assert detection_accuracy_by_sparsity(detections) == {"none": (0.0, 1), "1-8": (0.5, 2), "9-32": (1.0, 2),
                                                          "33+": (0.5, 2)}
    assert detection_accuracy_by_sparsity(detections, "class_correct")["1-8"] == (1.0, 2)
    with pytest.raises(ValueError, match="bucket must be one of"):
        in_sparsity_bucket(points, "sparse")


def test_patch_labels_come_from_the_projected_boxes_and_cover_what_the_image_shows(scenes):
    centres = torch.arange(4, 64, 8)  # the pixel at each 8x8 patch's centre
    shown = scenes["pixel_instance"][:, centres][:, :, centres].flatten(1).long()  # b N
    on_object = shown >= 0
    assert on_object.any()
    assert (scenes["patch_label"][on_object] != BACKGROUND).all()  # every object pixel lies in its box
    classes = scenes["object_class"].gather(1, shown.clamp(min=0)) + 1
    same = (scenes["patch_label"] == classes)[on_object].float().mean()
    assert same > 0.8, same  # the rest: patches where a nearer object's box overlaps


def _outlined_patches(ax):
    boxes = [r for r in ax.patches if isinstance(r, Rectangle)]
    return sorted((round(r.get_x() + 0.5), round(r.get_y() + 0.5)) for r in boxes)


def test_plot_point_substitution_rings_the_substituted_seeds_and_outlines_their_patches():
    points, seeds = torch.rand(20, 3), torch.rand(3, 3)
    scores = torch.tensor([0.9, 0.01, 0.01])
    substituted = torch.tensor([False, True, True])
    patch_index = torch.tensor([0, 9, 2])  # 8x8 image, 4x4 patches -> a 2x2 grid: 9 is out of range
    with pytest.raises(ValueError, match=r"\[0, 4\), got 0..9"):
        plot_point_substitution(torch.rand(3, 8, 8), points, seeds, scores, substituted, patch_index, 4)
    fig = plot_point_substitution(torch.rand(3, 8, 8), points, seeds, scores, substituted,
                                  torch.tensor([0, 3, 2]), 4)
    cloud, picture = fig.axes[0], fig.axes[2]  # axes[1] is the colour bar
    assert cloud.collections[2].get_offsets().shape[0] == 2  # the ring: two substituted seeds
    assert _outlined_patches(picture) == [(0, 4), (4, 4)]  # patches 2 (row 1, col 0) and 3 (row 1, col 1)
    with pytest.raises(ValueError, match=r"one score.*\(3\), got \(2,\)"):
        plot_point_substitution(torch.rand(3, 8, 8), points, seeds, scores[:2], substituted, patch_index, 4)
    plt.close("all")


def test_point_substitution_explorer_reads_the_models_substitutions(scenes):
    with seeded(0):
        model = PointImageTokenFusion(threshold=0.5, **SMALL)
    sample = sample_point_substitution(model, scenes, 4)
    output = model.eval()({key: value[4:5] for key, value in scenes.items()})
    assert sample["scores"].shape == sample["substituted"].shape == (2, 16)
    torch.testing.assert_close(sample["scores"][1], output.scores[1][0].detach())
    assert torch.equal(sample["substituted"][0], output.substituted[0][0])
    torch.testing.assert_close(sample["seeds"], scenes["points"][4][scenes["seeds"][4]])
    expected_index, _ = project_to_patches(sample["seeds"][None], scenes["K"][4:5], scenes["Rt"][4:5], 64, 8)
    assert torch.equal(sample["patch_index"], expected_index[0])
    explorer = point_substitution_explorer(model, scenes)
    sliders = {child.description: child for child in explorer.children[:-1]}
    assert sliders["scene"].max == 5 and sliders["layer"].max == 1
    with seeded(0):
        point_only = PointImageTokenFusion("none", **SMALL)
    with pytest.raises(ValueError, match="fusion='none'"):
        sample_point_substitution(point_only, scenes, 0)
    plt.close("all")
