import math

import pytest
import torch

from fusion_edu.blocks import Block
from fusion_edu.tokenfusion import (
    PAPER_FORM,
    ScorePredictor,
    SharedLayerViTs,
    TokenFusion,
    TokenFusionLayer,
    l1_sparsity,
    least_exchanging_layer,
    pooled_on_corrupted,
    preallocate,
    share_below_threshold,
    shuffle_tokens,
    substitute_tokens,
    substitution_rates,
    substitution_statistics,
    token_scores_and_masks,
)
from fusion_edu.train import TrainConfig, fit, seeded
from fusion_edu.vit import VisionTransformer

SMALL = dict(img_size=16, patch_size=4, num_classes=5, embed_dim=16, depth=2, num_heads=2)
MODALITIES = {"rgb": 3, "depth": 1}
TWO = ["rgb", "depth"]


def _inputs(batch=2):
    return {"rgb": torch.randn(batch, 3, 16, 16), "depth": torch.randn(batch, 1, 16, 16)}


def test_score_predictor_is_the_first_softmax_entry():
    with seeded(0):
        predictor = ScorePredictor(16)
    tokens = torch.randn(2, 5, 16)
    scores = predictor(tokens)
    assert scores.shape == (2, 5) and ((scores > 0) & (scores < 1)).all()
    torch.testing.assert_close(scores, predictor.net[:-1](tokens).softmax(-1)[..., 0])
    widths = [layer.out_features for layer in predictor.net if isinstance(layer, torch.nn.Linear)]
    assert widths == [16, 8, 4, 2]  # d, d/2, d/4, 2 as in the official predictor


def test_l1_sparsity_sums_over_layers_modalities_and_tokens():
    scores = [{"rgb": torch.full((2, 3), 0.5), "depth": torch.zeros(2, 3)},
              {"rgb": torch.ones(2, 3), "depth": torch.full((2, 3), 0.25)}]
    assert l1_sparsity(scores).item() == pytest.approx(6 * 0.5 + 6 * 1.0 + 6 * 0.25)


def test_preallocation_two_and_three_modalities():
    two = preallocate(8, TWO)
    assert two["rgb"].tolist() == [1] * 8 and two["depth"].tolist() == [0] * 8
    three = preallocate(64, ["rgb", "depth", "normals"], torch.Generator().manual_seed(0))
    for index, (modality, sources) in enumerate(three.items()):
        assert (sources != index).all(), modality
        counts = torch.bincount(sources, minlength=3)
        assert counts[index] == 0 and sorted(counts.tolist()) == [0, 32, 32]  # M - 1 equal groups
    again = preallocate(64, ["rgb", "depth", "normals"], torch.Generator().manual_seed(0))
    assert all(torch.equal(three[m], again[m]) for m in three)
    with pytest.raises(ValueError, match=r"at least two modalities, got \['rgb'\]"):
        preallocate(8, ["rgb"])


def test_substitution_by_hand():
    rgb = torch.arange(6.0).reshape(1, 3, 2)  # tokens [0,1], [2,3], [4,5]
    depth = -rgb
    scores = {"rgb": torch.tensor([[0.5, 0.01, 0.5]]), "depth": torch.tensor([[0.001, 0.5, 0.5]])}
    new, masks = substitute_tokens({"rgb": rgb, "depth": depth}, scores, 0.02, preallocate(3, TWO))
    assert masks["rgb"].tolist() == [[False, True, False]]
    assert masks["depth"].tolist() == [[True, False, False]]
    assert new["rgb"].tolist() == [[[0, 1], [-2, -3], [4, 5]]]  # token 1 from depth
    assert new["depth"].tolist() == [[[0, 1], [-2, -3], [-4, -5]]]  # token 0 from rgb (before swap)


def test_substitution_with_three_modalities_follows_the_allocation():
    tokens = {m: torch.full((1, 4, 1), float(i)) for i, m in enumerate(["a", "b", "c"])}
    scores = {m: torch.zeros(1, 4) for m in tokens}  # everything substituted
    allocation = {"a": torch.tensor([1, 2, 1, 2]), "b": torch.tensor([0, 0, 2, 2]),
                  "c": torch.tensor([1, 0, 1, 0])}
    new, _ = substitute_tokens(tokens, scores, 0.5, allocation)
    assert new["a"].flatten().tolist() == [1, 2, 1, 2]
    assert new["b"].flatten().tolist() == [0, 0, 2, 2]
    assert new["c"].flatten().tolist() == [1, 0, 1, 0]


@pytest.mark.parametrize("theta", [0.0, 1.0, -0.1, 2.0])
def test_threshold_outside_unit_interval_is_named(theta):
    tokens = {"rgb": torch.zeros(1, 2, 1), "depth": torch.zeros(1, 2, 1)}
    scores = {m: torch.zeros(1, 2) for m in tokens}
    with pytest.raises(ValueError, match=rf"theta must lie in \(0, 1\), got {theta}"):
        substitute_tokens(tokens, scores, theta, preallocate(2, TWO))
    with pytest.raises(ValueError, match="theta must lie in"):
        TokenFusion(MODALITIES, **SMALL, threshold=theta)


def test_mismatched_token_counts_and_bad_allocations_are_named():
    scores = {"rgb": torch.zeros(1, 3), "depth": torch.zeros(1, 2)}
    mismatched = {"rgb": torch.zeros(1, 3, 4), "depth": torch.zeros(1, 2, 4)}
    with pytest.raises(ValueError, match=r"same \(batch, tokens, dim\).*'depth': \(1, 2, 4\)"):
        substitute_tokens(mismatched, scores, 0.02, preallocate(3, TWO))
    tokens = {"rgb": torch.zeros(1, 3, 4), "depth": torch.zeros(1, 3, 4)}
    scores = {m: torch.zeros(1, 3) for m in tokens}
    with pytest.raises(ValueError, match="every one of the 3 tokens of 'rgb' a source modality, got shape"):
        substitute_tokens(tokens, scores, 0.02, {"rgb": torch.tensor([1, 1]), "depth": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"for 'rgb' must point to another of \['rgb', 'depth'\]"):
        substitute_tokens(tokens, scores, 0.02, {"rgb": torch.tensor([1, 0, 1]),
                                                 "depth": torch.zeros(3, dtype=torch.long)})


def test_layer_with_unit_scores_is_a_plain_block_per_modality():
    with seeded(0):
        layer = TokenFusionLayer(TWO, dim=8, num_heads=2)
        block = Block(8, 2)
    block.attn.load_state_dict(layer.attn[0].state_dict())
    block.mlp.load_state_dict(layer.mlp[0].state_dict())
    tokens = {m: torch.randn(2, 5, 8) for m in TWO}
    out, masks, _ = layer(tokens, {m: torch.ones(2, 5) for m in TWO})
    assert masks is None
    for modality in TWO:
        block.norm1.load_state_dict(layer.norm1[modality].state_dict())
        block.norm2.load_state_dict(layer.norm2[modality].state_dict())
        torch.testing.assert_close(out[modality], block(tokens[modality])[0])


def test_layer_scores_scale_the_attention_output():
    with seeded(0):
        layer = TokenFusionLayer(TWO, dim=8, num_heads=2)
    tokens = {m: torch.randn(1, 4, 8) for m in TWO}
    zero, _, _ = layer(tokens, {m: torch.zeros(1, 4) for m in TWO})
    expected = tokens["rgb"] + layer.mlp[0](layer.norm2["rgb"](tokens["rgb"]))  # MSA term gone
    torch.testing.assert_close(zero["rgb"], expected)


def test_paper_form_of_eq4_scores_the_attention_input():
    """Eq. 4 as the paper writes it, e + MSA(LN(e) * s), then the MLP; not the official s * MSA(LN(e))."""
    with seeded(0):
        paper = TokenFusionLayer(TWO, dim=8, num_heads=2, score_at="input")
    official = TokenFusionLayer(TWO, dim=8, num_heads=2)
    official.load_state_dict(paper.state_dict())
    tokens = {m: torch.randn(2, 5, 8) for m in TWO}
    scores = {m: torch.rand(2, 5) for m in TWO}
    out, _, _ = paper(tokens, scores)
    for index, modality in enumerate(TWO):
        attn, mlp, norm1, norm2 = paper._weights(index)
        x = tokens[modality] + attn(norm1(tokens[modality]) * scores[modality][..., None])[0]
        torch.testing.assert_close(out[modality], x + mlp(norm2(x)))
    assert (out["rgb"] - official(tokens, scores)[0]["rgb"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"'output' \(official\) or 'input' \(paper\), got 'both'"):
        TokenFusionLayer(TWO, dim=8, num_heads=2, score_at="both")


def test_input_placement_substitutes_before_rpa_so_each_token_keeps_its_own_position():
    """Eq. 6 on the layer inputs, then each modality's positional embedding: a substituted token is the
    donor's token plus the *receiving* modality's position."""
    with seeded(0):
        model = TokenFusion(MODALITIES, **SMALL, **PAPER_FORM)
    assert [layer.score_at for layer in model.layers] == ["input"] * 2 and "score_at='input'" in repr(model)
    with torch.no_grad():
        model.pos_embeds["rgb"].fill_(10.0)
        model.pos_embeds["depth"].fill_(-10.0)
    low = torch.zeros(2, 16)
    low[:, 3] = 1  # only token 3 of each image scores above theta
    model.score_predictors[0]["rgb"].forward = lambda tokens: low  # rgb's token 3 kept, the rest substituted
    model.score_predictors[0]["depth"].forward = lambda tokens: torch.ones(2, 16)  # depth keeps all
    seen = []
    model.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    inputs = _inputs()
    output = model(inputs)
    embedded = {m: model.patch_embeds[m](inputs[m]) for m in TWO}  # b n d, before any position
    substituted = output.substituted[0]["rgb"]
    assert not substituted[:, 3].any() and substituted[:, 4].all()
    torch.testing.assert_close(seen[0]["rgb"][:, 4], embedded["depth"][:, 4] + 10.0)  # depth's, rgb's PE
    torch.testing.assert_close(seen[0]["rgb"][:, 3], embedded["rgb"][:, 3] + 10.0)
    torch.testing.assert_close(seen[0]["depth"], embedded["depth"] - 10.0)


def test_weight_and_norm_sharing_options():
    shared = TokenFusionLayer(TWO, 8, 2)
    separate = TokenFusionLayer(TWO, 8, 2, share_weights=False, share_norms=True)
    assert len(shared.attn) == 1 and len(shared.norm1) == 2
    assert len(separate.attn) == 2 and list(separate.norm1) == ["shared"]


def test_model_outputs_scores_masks_and_l1():
    with seeded(0):
        model = TokenFusion(MODALITIES, **SMALL, lambda_l1=1e-3)
    output = model(_inputs(), return_attention=True)
    assert output.logits.shape == (2, 5, 16, 16) and list(output.modality_logits) == TWO
    assert len(output.scores) == 2 and output.scores[0]["rgb"].shape == (2, 16)
    assert output.substituted[1]["depth"].dtype == torch.bool
    torch.testing.assert_close(output.aux_loss, 1e-3 * l1_sparsity(output.scores))
    assert output.layer_attention[0]["rgb"].shape == (2, 2, 16, 16)
    shares = share_below_threshold(output.scores)
    assert set(shares) == set(TWO) and all(0 <= v <= 1 for v in shares.values())


@pytest.mark.parametrize("placement", ["attention", "input"])
def test_every_token_is_substituted_when_every_score_is_low(placement):
    with seeded(0):
        model = TokenFusion(MODALITIES, **SMALL, threshold=0.999, placement=placement)
    output = model(_inputs())
    assert all(mask.all() for layer in output.substituted for mask in layer.values())
    with seeded(0):
        ablation = TokenFusion(MODALITIES, **SMALL, threshold=0.999, substitution=False)
    assert not any(mask.any() for layer in ablation(_inputs()).substituted for mask in layer.values())


def test_residual_positional_alignment_keeps_gradient_only_at_the_first_layer():
    model = TokenFusion(MODALITIES, **SMALL)
    assert model._positions(0)["rgb"].requires_grad
    assert not model._positions(1)["rgb"].requires_grad
    torch.testing.assert_close(model._positions(1)["rgb"], model.pos_embeds["rgb"])


def test_model_errors():
    with pytest.raises(ValueError, match=r"at least two modalities, got \['rgb'\]"):
        TokenFusion({"rgb": 3}, **SMALL)
    with pytest.raises(ValueError, match="placement must be 'attention' or 'input', got 'output'"):
        TokenFusion(MODALITIES, **SMALL, placement="output")
    model = TokenFusion(MODALITIES, **SMALL)
    with pytest.raises(ValueError, match="same batch, H and W"):
        model({"rgb": torch.zeros(2, 3, 16, 16), "depth": torch.zeros(2, 1, 8, 8)})


def test_trains_with_the_shared_loop(small_scenes):
    data = {k: small_scenes[k][:40, ..., :16, :16] for k in ("rgb", "depth", "label")}
    data = {k: v.contiguous() for k, v in data.items()}
    with seeded(0):
        model = TokenFusion(MODALITIES, **SMALL)
    history = fit(model, data, config=TrainConfig(epochs=1, batch_size=20), progress=False)
    assert torch.isfinite(torch.tensor(history[0]["train_loss"]))


@pytest.mark.parametrize("share_weights", [False, True])
def test_load_single_modal_copies_each_modalitys_weights(share_weights):
    with seeded(0):
        singles = {m: VisionTransformer(**SMALL, in_chans=c, task="segmentation", modality=m)
                   for m, c in MODALITIES.items()}
        model = TokenFusion(MODALITIES, **SMALL, share_weights=share_weights)
    model.load_single_modal(singles)
    for index, (modality, vit) in enumerate(singles.items()):
        assert torch.equal(model.patch_embeds[modality].proj.weight, vit.patch_embed.proj.weight)
        assert torch.equal(model.pos_embeds[modality], vit.pos_embed[:, 1:])
        assert torch.equal(model.heads[modality].proj.weight, vit.head.proj.weight)
        assert torch.equal(model.layers[1].norm2[modality].weight, vit.blocks[1].norm2.weight)
        source = singles["rgb"] if share_weights else vit
        attn = model.layers[1].attn[0 if share_weights else index]
        assert torch.equal(attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    with pytest.raises(KeyError, match=r"some of \['rgb', 'depth'\], in that order, got \['depth', 'rgb'\]"):
        model.load_single_modal({"depth": singles["depth"], "rgb": singles["rgb"]})
    with pytest.raises(KeyError, match=r"got \['normals'\]"):
        model.load_single_modal({"normals": singles["depth"]})


def test_load_single_modal_for_some_modalities_leaves_the_others_fresh():
    three = {"rgb": 3, "depth": 1, "normals": 3}
    with seeded(0):
        depth = VisionTransformer(**SMALL, in_chans=1, task="segmentation", modality="depth")
        model = TokenFusion(three, **SMALL, share_weights=False)
    fresh = model.layers[0].attn[2].qkv.weight.clone()
    model.load_single_modal({"depth": depth})
    assert torch.equal(model.layers[0].attn[1].qkv.weight, depth.blocks[0].attn.qkv.weight)
    assert torch.equal(model.layers[0].attn[2].qkv.weight, fresh)


def test_shared_layer_vits_train_one_attention_and_mlp_on_every_modality(small_scenes):
    data = {k: small_scenes[k][:40, ..., :16, :16].contiguous() for k in ("rgb", "depth", "label")}
    with seeded(0):
        pair = SharedLayerViTs(MODALITIES, **SMALL, task="segmentation")
    rgb, depth = pair.models["rgb"], pair.models["depth"]
    assert rgb.blocks[1].attn is depth.blocks[1].attn and rgb.blocks[1].mlp is depth.blocks[1].mlp
    assert rgb.blocks[1].norm1 is not depth.blocks[1].norm1 and rgb.head is not depth.head
    separate = sum(p.numel() for m in pair.models.values() for p in m.parameters())
    shared_layers = sum(p.numel() for b in rgb.blocks for p in (*b.attn.parameters(), *b.mlp.parameters()))
    assert sum(p.numel() for p in pair.parameters()) == separate - shared_layers
    output = pair({k: data[k][:2] for k in MODALITIES})
    mean = (output.modality_logits["rgb"] + output.modality_logits["depth"]) / 2
    assert output.mean_modality_loss and torch.allclose(output.logits, mean)
    before = rgb.blocks[0].attn.qkv.weight.clone()
    fit(pair, data, config=TrainConfig(epochs=1, batch_size=20), progress=False)
    assert not torch.equal(rgb.blocks[0].attn.qkv.weight, before)
    with seeded(0):
        model = TokenFusion(MODALITIES, **SMALL, share_weights=True)
    model.load_single_modal(dict(pair.models))
    assert torch.equal(model.layers[0].attn[0].qkv.weight, depth.blocks[0].attn.qkv.weight)
    assert torch.equal(model.layers[0].norm1["depth"].weight, depth.blocks[0].norm1.weight)


def test_shuffle_tokens_keeps_each_images_scores():
    scores = torch.rand(3, 10)
    with seeded(0):
        shuffled = shuffle_tokens(scores)
    assert not torch.equal(shuffled, scores)
    torch.testing.assert_close(shuffled.sort(1).values, scores.sort(1).values)


def test_random_substitution_exchanges_as_many_tokens_elsewhere():
    with seeded(0):
        model = TokenFusion(MODALITIES, **SMALL, threshold=0.5)
        randomised = TokenFusion(MODALITIES, **SMALL, threshold=0.5, random_substitution=True)
    randomised.load_state_dict(model.state_dict())
    inputs = _inputs(4)
    with seeded(1):
        chosen, shuffled = model(inputs), randomised(inputs)
    for by_scores, at_random in zip(chosen.substituted, shuffled.substituted, strict=True):
        for modality in MODALITIES:
            assert torch.equal(by_scores[modality].sum(1), at_random[modality].sum(1))
    pairs = zip(chosen.substituted, shuffled.substituted, strict=True)
    assert any(not torch.equal(a[m], b[m]) for a, b in pairs for m in MODALITIES)


def test_substitution_statistics_by_hand():
    corrupted = {"rgb": torch.tensor([[True, False, False, False]])}
    substituted = [{"rgb": torch.tensor([[True, True, False, False]])},
                   {"rgb": torch.tensor([[False, False, False, False]])}]
    stats = substitution_statistics(substituted, corrupted)["rgb"]
    assert stats["share"] == [0.5, 0.0]
    assert stats["on_corrupted"][0] == 0.5 and math.isnan(stats["on_corrupted"][1])
    assert stats["random"] == [0.25, 0.25]
    with pytest.raises(ValueError, match=r"shape \(1, 4\) for 'rgb', got \(1, 3\)"):
        substitution_statistics(substituted, {"rgb": torch.zeros(1, 3, dtype=torch.bool)})


def test_pooled_on_corrupted_weighs_layers_by_their_substitutions():
    stats = {"share": [0.9, 0.1, 0.3, 0.0], "on_corrupted": [0.05, 0.5, 0.3, float("nan")]}
    assert pooled_on_corrupted(stats, [1, 2]) == pytest.approx((0.1 * 0.5 + 0.3 * 0.3) / 0.4)
    assert pooled_on_corrupted(stats, [0]) == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"no token was substituted in layers \[3\]"):
        pooled_on_corrupted(stats, [3])
    with pytest.raises(ValueError, match="at least one layer"):
        pooled_on_corrupted(stats, [])


def test_the_least_exchanging_layer_and_its_substitution_rates_by_bayes_rule():
    # 4 layers over 8 tokens, 2 of them corrupted; layer 2 substitutes both corrupted tokens and 1 clean one
    stats = {"share": [1.0, 0.0, 3 / 8, 0.5], "on_corrupted": [0.25, float("nan"), 2 / 3, 0.25],
             "random": [0.25] * 4}
    assert least_exchanging_layer(stats) == 2  # layer 1 substitutes nothing: not a candidate
    assert substitution_rates(stats, 2) == pytest.approx((1.0, 1 / 6))  # 2 of 2 corrupted, 1 of 6 clean
    assert substitution_rates(stats, 0) == pytest.approx((1.0, 1.0))
    assert substitution_rates(stats, 1) == (0.0, 0.0)
    with pytest.raises(ValueError, match="no layer substituted"):
        least_exchanging_layer({"share": [0.0, 0.0]})
    with pytest.raises(ValueError, match="corrupted share 0"):
        substitution_rates({**stats, "random": [0.0] * 4}, 2)


def test_token_scores_and_masks_cover_the_data():
    with seeded(0):
        model = TokenFusion(MODALITIES, **SMALL, threshold=0.5)
    data = _inputs(5)
    scores, masks = token_scores_and_masks(model, data)
    assert len(scores) == len(masks) == SMALL["depth"]
    out = model.eval()(data)
    for layer in range(SMALL["depth"]):
        for modality in MODALITIES:
            torch.testing.assert_close(scores[layer][modality], out.scores[layer][modality])
            assert torch.equal(masks[layer][modality], out.substituted[layer][modality])
