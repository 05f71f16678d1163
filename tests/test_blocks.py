import math

import pytest
import torch

from fusion_edu.blocks import (
    Attention,
    Block,
    PatchEmbed,
    select_modality,
    sincos_2d_position_embedding,
)


def test_patch_embed_shapes_and_token_order():
    embed = PatchEmbed(img_size=8, patch_size=4, in_chans=1, embed_dim=1)
    with torch.no_grad():
        embed.proj.weight.fill_(1.0)
        embed.proj.bias.zero_()
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 4:, :4] = 1.0  # bottom-left patch = patch index 2 in row-major order
    tokens = embed(image)
    assert tokens.shape == (1, 4, 1)
    assert tokens[0, :, 0].tolist() == [0.0, 0.0, 16.0, 0.0]


def test_patch_embed_rejects_patch_not_dividing_image():
    with pytest.raises(ValueError, match="patch size must divide the image size: got image size 30"):
        PatchEmbed(img_size=30, patch_size=4, in_chans=3, embed_dim=8)


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 3, 16, 16), (3, 32, 32)])
def test_patch_embed_rejects_wrong_input(shape):
    embed = PatchEmbed(img_size=32, patch_size=4, in_chans=3, embed_dim=8)
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 3, 32, 32\).*got"):
        embed(torch.zeros(shape))


def test_attention_fused_equals_explicit_softmax():
    torch.manual_seed(0)
    attention = Attention(dim=16, num_heads=4).eval()
    x = torch.randn(2, 5, 16)
    fused, none = attention(x)
    explicit, weights = attention(x, return_attention=True)
    assert none is None
    torch.testing.assert_close(fused, explicit, atol=1e-6, rtol=1e-5)
    assert weights.shape == (2, 4, 5, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 5))


def test_attention_by_hand_single_head():
    torch.manual_seed(0)
    attention = Attention(dim=4, num_heads=1).eval()
    x = torch.randn(1, 3, 4)
    q, k, v = attention.qkv(x).chunk(3, dim=-1)
    expected_weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(4), dim=-1)
    expected = attention.proj(expected_weights @ v)
    out, weights = attention(x, return_attention=True)
    torch.testing.assert_close(weights[:, 0], expected_weights)
    torch.testing.assert_close(out, expected)


def test_attention_mask_equals_dropping_the_masked_keys():
    torch.manual_seed(0)
    attention = Attention(dim=8, num_heads=2).eval()
    x = torch.randn(1, 4, 8)
    keep = torch.tensor([True, True, True, False])
    mask = keep.expand(4, 4)
    masked_fused, _ = attention(x, attn_mask=mask)
    masked_explicit, weights = attention(x, attn_mask=mask, return_attention=True)
    torch.testing.assert_close(masked_fused, masked_explicit, atol=1e-6, rtol=1e-5)
    assert torch.all(weights[..., 3] == 0)
    subset, _ = attention(x[:, :3])
    torch.testing.assert_close(masked_fused[:, :3], subset, atol=1e-6, rtol=1e-5)


def test_attention_rejects_heads_not_dividing_dim():
    with pytest.raises(ValueError, match="divisible by num_heads, got 10 and 4"):
        Attention(dim=10, num_heads=4)


def test_block_is_prenorm_residual():
    torch.manual_seed(0)
    block = Block(dim=8, num_heads=2).eval()
    x = torch.randn(2, 3, 8)
    attended, _ = block.attn(block.norm1(x))
    middle = x + attended
    expected = middle + block.mlp(block.norm2(middle))
    out, weights = block(x, return_attention=True)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    assert weights.shape == (2, 2, 3, 3)


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_a_context_is_read_as_keys_and_values_as_if_it_were_in_the_sequence(qkv_bias):
    torch.manual_seed(0)
    block = Block(dim=8, num_heads=2, mlp_ratio=2.0, qkv_bias=qkv_bias)
    with torch.no_grad():  # every weight and bias non-zero, so a wrong split of U_qkv shows
        for parameter in block.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)
    context, x = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    mask = torch.rand(8, 8) > 0.3
    mask[:, -1] = True  # every query keeps a key
    whole, whole_weights = block(torch.cat([context, x], dim=1), attn_mask=mask, return_attention=True)
    own, own_weights = block(x, attn_mask=mask[3:], return_attention=True, context=context)
    torch.testing.assert_close(own, whole[:, 3:])  # the outputs scenic keeps
    torch.testing.assert_close(own_weights, whole_weights[:, :, 3:])  # b h n (n_c + n)
    fused, _ = block(x, attn_mask=mask[3:], context=context)  # the fused kernel agrees
    torch.testing.assert_close(fused, own)


def test_sincos_embedding_values():
    embedding = sincos_2d_position_embedding(2, 3, 8)
    assert embedding.shape == (6, 8)
    # token 0 is (row 0, col 0): sin(0) = 0, cos(0) = 1 in both halves
    assert embedding[0].tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    # token 4 is (row 1, col 1); the first frequency is 1, so sin(1) appears in both halves
    assert embedding[4, 0].item() == pytest.approx(math.sin(1.0))
    assert embedding[4, 4].item() == pytest.approx(math.sin(1.0))
    assert embedding[4, 1].item() == pytest.approx(math.sin(1.0 / 100))  # 10000 ** (1/2)


def test_sincos_rejects_dim_not_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4, got 6"):
        sincos_2d_position_embedding(2, 2, 6)


def test_select_modality_names_the_missing_key():
    inputs = {"depth": torch.zeros(1)}
    with pytest.raises(KeyError, match=r"expected modality 'rgb' in the inputs, got keys \['depth'\]"):
        select_modality(inputs, "rgb")
    assert select_modality(inputs, "depth") is inputs["depth"]
