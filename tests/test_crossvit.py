import itertools

import pytest
import timm
import torch

from fusion_edu.crossvit import (
    FUSIONS,
    NO_FUSION,
    CrossAttention,
    CrossViT,
    fusion_flops,
    load_timm_crossvit,
    single_branch,
)
from fusion_edu.train import seeded

SMALL = dict(img_size=32, patch_sizes=(4, 8), num_classes=7, embed_dims=(16, 32), num_heads=(2, 4),
             mlp_ratios=(2.0, 3.0))


def _timm_crossvit(cross_depth, img_scale):
    # timm's layout: depth per block = (S-branch layers, L-branch layers, cross layers; 0 means one)
    return timm.create_model("crossvit_tiny_240", pretrained=False, img_size=32, img_scale=img_scale,
                             patch_size=(4, 8), num_classes=7, embed_dim=(16, 32), num_heads=(2, 4),
                             mlp_ratio=(2.0, 3.0, 4.0), depth=((1, 2, cross_depth), (1, 2, cross_depth)))


@pytest.mark.parametrize(("cross_depth", "img_scale"), [(0, (1.0, 1.0)), (2, (1.0, 1.0)), (0, (1.0, 0.5))])
def test_same_logits_as_timm_with_timm_weights(cross_depth, img_scale):
    with seeded(0):
        reference = _timm_crossvit(cross_depth, img_scale).eval()
        ours = CrossViT(**SMALL, depth=((1, 2, cross_depth),) * 2, reattach_patches=False,
                        img_scales=img_scale).eval()
    load_timm_crossvit(ours, reference)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(images).logits, reference(images), atol=1e-5, rtol=1e-5)
        with_weights = ours(images, return_attention=True)
    torch.testing.assert_close(with_weights.logits, reference(images), atol=1e-5, rtol=1e-5)


def test_reattaching_patches_changes_only_deeper_cross_layers():
    with seeded(0):
        reference = CrossViT(**SMALL, depth=((1, 1, 2),), reattach_patches=False).eval()
    ours = CrossViT(**SMALL, depth=((1, 1, 2),), reattach_patches=True).eval()
    ours.load_state_dict(reference.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref_out = reference(images, return_attention=True)
        our_out = ours(images, return_attention=True)
    small_to_large = 0  # direction 0: the S-branch CLS reads the L-branch's 16 patches
    first_ref, second_ref = ref_out.fusion_attention[0][small_to_large]
    first_ours, second_ours = our_out.fusion_attention[0][small_to_large]
    assert first_ref.shape == first_ours.shape == (2, 4, 1, 1 + 16)
    torch.testing.assert_close(first_ref, first_ours)
    assert second_ref.shape == (2, 4, 1, 1)  # the reference: the CLS token attends only to itself
    torch.testing.assert_close(second_ref, torch.ones(2, 4, 1, 1))
    assert second_ours.shape == (2, 4, 1, 1 + 16)
    assert not torch.allclose(our_out.logits, ref_out.logits)


def test_cross_attention_by_hand():
    with seeded(0):
        attention = CrossAttention(8, num_heads=2)
    x = torch.randn(2, 5, 8)
    out, weights = attention(x, return_attention=True)
    q = attention.wq(x[:, :1]).reshape(2, 1, 2, 4).transpose(1, 2)
    k = attention.wk(x).reshape(2, 5, 2, 4).transpose(1, 2)
    v = attention.wv(x).reshape(2, 5, 2, 4).transpose(1, 2)
    expected_weights = (q @ k.transpose(-2, -1) / 2.0).softmax(-1)  # sqrt(C / h) = sqrt(4)
    torch.testing.assert_close(weights, expected_weights)
    expected = attention.proj((expected_weights @ v).transpose(1, 2).reshape(2, 1, 8))
    torch.testing.assert_close(out, expected)
    fused, _ = attention(x)  # scaled_dot_product_attention path
    torch.testing.assert_close(fused, out, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fusion", (*FUSIONS, NO_FUSION))
def test_every_fusion_runs_and_trains(fusion):
    with seeded(0):
        model = CrossViT(**SMALL, depth=((1, 1, 1),) * 2, fusion=fusion)
    images = torch.randn(2, 3, 32, 32)
    output = model({"image": images})
    assert output.logits.shape == (2, 7) and len(output.branch_logits) == 2
    torch.testing.assert_close(output.logits, (output.branch_logits[0] + output.branch_logits[1]) / 2)
    output.logits.sum().backward()
    assert model.patch_embeds[0].proj.weight.grad.abs().sum() > 0
    assert model.patch_embeds[1].proj.weight.grad.abs().sum() > 0


def test_fusions_mix_the_branches():
    """Changing only the L-branch's parameters changes the S-branch's head output (and vice versa)."""
    images = torch.randn(2, 3, 32, 32)
    for fusion in FUSIONS:
        with seeded(0):
            model = CrossViT(**SMALL, depth=((1, 1, 1),), fusion=fusion).eval()
        with torch.no_grad():
            before = model(images).branch_logits[0]
            model.patch_embeds[1].proj.weight.mul_(2.0)
            after = model(images).branch_logits[0]
        assert not torch.allclose(before, after), fusion
    with seeded(0):
        control = CrossViT(**SMALL, depth=((1, 1, 1),), fusion=NO_FUSION).eval()
    with torch.no_grad():
        before = control(images).branch_logits[0]
        control.patch_embeds[1].proj.weight.mul_(2.0)
        torch.testing.assert_close(control(images).branch_logits[0], before)  # the control exchanges nothing


def test_bad_configurations_raise_clear_errors():
    with pytest.raises(ValueError, match="patch size must divide the image size"):
        CrossViT(**{**SMALL, "patch_sizes": (4, 12)})
    with pytest.raises(ValueError, match="width 30 with 4 heads"):
        CrossViT(**{**SMALL, "embed_dims": (16, 30)})
    with pytest.raises(ValueError, match="two branches"):
        CrossViT(**{**SMALL, "patch_sizes": (4, 8, 16)})
    with pytest.raises(ValueError, match="fusion must be one of"):
        CrossViT(**SMALL, fusion="concat")
    with pytest.raises(ValueError, match=r"\(batch, channels, 32, 32\), got \(2, 3, 16, 16\)"):
        CrossViT(**SMALL)(torch.rand(2, 3, 16, 16))  # never silently resampled
    with pytest.raises(ValueError, match="branches 0 \\(S\\) and 1 \\(L\\), got 2"):
        single_branch(2, **SMALL)


def test_single_branch_is_that_branch_alone():
    config = {**SMALL, "img_scales": (1.0, 0.5), "patch_sizes": (4, 4), "depth": ((1, 2, 1), (1, 3, 1))}
    small, large = single_branch(0, **config), single_branch(1, **config)
    assert len(small.blocks) == 2 and len(large.blocks) == 5  # the branch's layers over all blocks
    assert small.patch_embed.num_patches == 64 and large.patch_embed.num_patches == 16  # 16x16 view
    assert large.cls_token.shape[-1] == SMALL["embed_dims"][1]
    images = torch.rand(2, 3, 32, 32)
    half = torch.nn.functional.interpolate(images, size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(large.patch_tokens(images), large.patch_embed(half))
    assert large(images).logits.shape == (2, SMALL["num_classes"])


def test_fusion_flops_grow_linearly_for_cross_attention_and_quadratically_for_all_attention():
    sizes = (64, 256, 1024)  # S tokens; the L-branch has a quarter as many
    cross = [fusion_flops("cross_attention", (n, n // 4)) for n in sizes]
    full = [fusion_flops("all_attention", (n, n // 4)) for n in sizes]
    cross_growth = [b / a for a, b in itertools.pairwise(cross)]
    full_growth = [b / a for a, b in itertools.pairwise(full)]
    assert all(3.0 < g < 4.2 for g in cross_growth)  # 4x the tokens: about 4x the FLOPs
    assert full_growth[-1] > 10  # 4x the tokens: towards 16x the FLOPs
    assert all(c < f for c, f in zip(cross, full, strict=True))
    assert fusion_flops("class_token", (64, 16)) == fusion_flops("class_token", (1024, 256))
