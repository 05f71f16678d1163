import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from fusion_edu.vit import DenseHead, VisionTransformer, load_timm_weights

SMALL = dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, num_classes=5)


def test_same_outputs_as_timm_with_timm_weights():
    torch.manual_seed(0)
    theirs = TimmViT(**SMALL).eval()
    ours = VisionTransformer(**SMALL).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    images = torch.randn(4, 3, 32, 32)
    expected = theirs(images)
    torch.testing.assert_close(ours(images).logits, expected, atol=1e-5, rtol=0)
    with_attention = ours({"image": images}, return_attention=True)
    torch.testing.assert_close(with_attention.logits, expected, atol=1e-5, rtol=0)
    assert len(with_attention.attention) == 2
    assert with_attention.attention[0].shape == (4, 4, 65, 65)


def test_segmentation_head_shapes_and_modality_key():
    model = VisionTransformer(**SMALL, in_chans=1, task="segmentation", modality="depth")
    out = model({"depth": torch.randn(2, 1, 32, 32), "rgb": torch.randn(2, 3, 32, 32)})
    assert out.logits.shape == (2, 5, 32, 32)
    assert out.attention is None


def test_dense_head_puts_each_token_on_its_own_pixels():
    patch, classes, grid = 2, 1, (2, 3)
    head = DenseHead(embed_dim=patch * patch * classes, num_classes=classes, patch_size=patch,
                     grid_size=grid)
    with torch.no_grad():
        head.proj.weight.copy_(torch.eye(patch * patch))
        head.proj.bias.zero_()
    token_ids = torch.arange(6.0)[None, :, None].expand(1, 6, 4)  # token n carries value n
    pixels = head(token_ids)[0, 0]
    assert pixels.shape == (4, 6)
    expected = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2],
                             [3, 3, 4, 4, 5, 5], [3, 3, 4, 4, 5, 5]], dtype=torch.float)
    assert torch.equal(pixels, expected)


def test_sincos_variant_has_fixed_positions():
    model = VisionTransformer(**SMALL, pos_embed="sincos")
    assert "pos_embed" not in dict(model.named_parameters())
    assert torch.all(model.pos_embed[0, 0] == 0)  # the class token gets no position
    assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(task="detection"), "task must be 'classification' or 'segmentation'"),
    (dict(pos_embed="rope"), "pos_embed must be 'learned' or 'sincos'"),
])
def test_rejects_unknown_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VisionTransformer(**{**SMALL, **kwargs})


def test_load_timm_weights_adapts_grid_patch_and_channels():
    torch.manual_seed(0)
    source = TimmViT(img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                     num_classes=10)
    target = VisionTransformer(**SMALL, in_chans=1, task="segmentation")
    untouched = load_timm_weights(target, source)
    assert untouched == ["head.proj.bias", "head.proj.weight"]
    torch.testing.assert_close(target.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert target.patch_embed.proj.weight.shape == (64, 1, 4, 4)
    assert target.pos_embed.shape == (1, 65, 64)
    torch.testing.assert_close(target.cls_token, source.cls_token)


def test_load_timm_weights_same_config_gives_same_outputs():
    torch.manual_seed(0)
    source = TimmViT(**SMALL).eval()
    target = VisionTransformer(**SMALL).eval()
    load_timm_weights(target, source)
    target.head.load_state_dict(source.head.state_dict())
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(target(images).logits, source(images), atol=1e-5, rtol=0)


def test_load_timm_weights_rejects_other_width_or_depth():
    narrow = TimmViT(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=4)
    message = r"cls_token has shape \(1, 1, 32\) in the source and \(1, 1, 64\) in the model"
    with pytest.raises(ValueError, match=message):
        load_timm_weights(VisionTransformer(**SMALL), narrow)
    deeper = TimmViT(**{**SMALL, "depth": 3})
    with pytest.raises(KeyError, match="weights the model lacks"):
        load_timm_weights(VisionTransformer(**SMALL), deeper)
