import pytest
import torch
import torch.nn.functional as F

from fusion_edu.blocks import ModelOutput
from fusion_edu.concat import (
    InputFusion,
    LateFusion,
    LearnedEnsemble,
    TokenConcatFusion,
    cross_modal_attention,
)
from fusion_edu.train import seeded, training_loss
from fusion_edu.vit import VisionTransformer

MODALITIES = {"rgb": 3, "depth": 1}
SMALL = dict(img_size=16, patch_size=4, num_classes=5, embed_dim=16, depth=2, num_heads=2)


def _inputs(batch=2, size=16):
    return {"rgb": torch.randn(batch, 3, size, size), "depth": torch.randn(batch, 1, size, size)}


def test_input_fusion_is_the_sum_of_per_modality_tokens():
    with seeded(0):
        model = InputFusion(MODALITIES, **SMALL, task="segmentation")
    inputs = _inputs()
    conv = model.patch_embed.proj
    rgb_part = F.conv2d(inputs["rgb"], conv.weight[:, :3], stride=4)  # x^1 E_1
    depth_part = F.conv2d(inputs["depth"], conv.weight[:, 3:], stride=4)  # x^2 E_2
    summed = (rgb_part + depth_part + conv.bias[:, None, None]).flatten(2).transpose(1, 2)
    torch.testing.assert_close(model.patch_tokens(inputs), summed, atol=1e-5, rtol=1e-5)
    assert model(inputs).logits.shape == (2, 5, 16, 16)


def test_input_fusion_names_misaligned_shapes():
    model = InputFusion(MODALITIES, **SMALL)
    inputs = {"rgb": torch.zeros(2, 3, 16, 16), "depth": torch.zeros(2, 1, 8, 8)}
    with pytest.raises(ValueError, match=r"same batch, H and W .*'depth': \(2, 1, 8, 8\)"):
        model(inputs)


def test_token_concat_shapes_and_attention_over_both_modalities():
    with seeded(0):
        model = TokenConcatFusion(MODALITIES, **SMALL)
    output = model(_inputs(), return_attention=True)
    assert output.logits.shape == (2, 5, 16, 16)
    assert list(output.modality_logits) == ["rgb", "depth"]
    assert output.attention[0].shape == (2, 2, 1 + 2 * 16, 1 + 2 * 16)
    assert model(_inputs()).attention is None


def test_token_concat_splits_tokens_back_to_their_modality():
    with seeded(0):
        model = TokenConcatFusion(MODALITIES, **{**SMALL, "depth": 0}).eval()  # no attention layer
    inputs = _inputs()
    changed = {**inputs, "depth": torch.randn_like(inputs["depth"])}
    before, after = model(inputs).modality_logits, model(changed).modality_logits
    torch.testing.assert_close(before["rgb"], after["rgb"])  # rgb head reads only rgb tokens
    assert not torch.allclose(before["depth"], after["depth"])


def test_token_concat_mixes_modalities_through_attention():
    with seeded(0):
        model = TokenConcatFusion(MODALITIES, **SMALL).eval()
    inputs = _inputs()
    changed = {**inputs, "depth": torch.randn_like(inputs["depth"])}
    assert not torch.allclose(model(inputs).modality_logits["rgb"],
                              model(changed).modality_logits["rgb"])


def test_learned_ensemble_weighs_detached_predictions():
    ensemble = LearnedEnsemble(["rgb", "depth"])
    rgb = torch.ones(2, 3, requires_grad=True)
    depth = torch.full((2, 3), 3.0, requires_grad=True)
    combined = ensemble({"rgb": rgb, "depth": depth})
    torch.testing.assert_close(combined, torch.full((2, 3), 2.0))  # alpha = 0: the mean
    combined.sum().backward()
    assert rgb.grad is None and depth.grad is None
    assert ensemble.alpha.grad.abs().sum() > 0
    assert ensemble.weights() == {"rgb": 0.5, "depth": 0.5}
    with pytest.raises(KeyError, match=r"expected logits for \['rgb', 'depth'\] in that order"):
        ensemble({"depth": depth, "rgb": rgb})


def test_late_fusion_combines_single_modal_models():
    with seeded(0):
        models = {m: VisionTransformer(**SMALL, in_chans=c, task="segmentation", modality=m)
                  for m, c in MODALITIES.items()}
    late = LateFusion(models)
    inputs = _inputs()
    with torch.no_grad():
        late.ensemble.alpha.copy_(torch.tensor([0.0, 1.0]))
    weights = torch.tensor([0.0, 1.0]).softmax(0)
    expected = weights[0] * models["rgb"](inputs).logits + weights[1] * models["depth"](inputs).logits
    torch.testing.assert_close(late(inputs).logits, expected)
    with pytest.raises(ValueError, match="late fusion has no attention across modalities"):
        late(inputs, return_attention=True)


@pytest.mark.parametrize("build", [
    lambda: TokenConcatFusion({"rgb": 3}, **SMALL),
    lambda: InputFusion({"rgb": 3}, **SMALL),
    lambda: LateFusion({"rgb": VisionTransformer(**SMALL)}),
])
def test_fusion_needs_two_modalities(build):
    with pytest.raises(ValueError, match=r"at least two modalities, got \['rgb'\]"):
        build()


def test_loss_covers_the_ensemble_and_each_modality():
    target = torch.tensor([0, 1])
    ensemble, rgb, depth = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    output = ModelOutput(logits=ensemble, modality_logits={"rgb": rgb, "depth": depth},
                         aux_loss=torch.tensor(0.5))
    expected = sum(F.cross_entropy(x, target) for x in (ensemble, rgb, depth)) + 0.5
    torch.testing.assert_close(training_loss(output, {"label": target}), expected)


def test_cross_modal_attention_by_hand():
    n = 2  # tokens per modality; sequence [CLS, r0, r1, d0, d1]
    weights = torch.zeros(1, 1, 5, 5)
    weights[0, 0, 1] = torch.tensor([0.2, 0.2, 0.0, 0.6, 0.0])  # r0: 0.6 on d0 (its partner)
    weights[0, 0, 2] = torch.tensor([0.0, 0.5, 0.3, 0.1, 0.1])  # r1: 0.2 on depth, half on d1
    mass, partner = cross_modal_attention([weights], n)
    assert mass == pytest.approx([(0.6 + 0.2) / 2])
    assert partner == pytest.approx([(1.0 + 0.5) / 2])
