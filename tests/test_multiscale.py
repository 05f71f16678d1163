from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from fusion_edu.datasets import (
    LAYOUTS,
    TEXTURES,
    MultiScaleConfig,
    generate_multiscale_images,
    load_multiscale_images,
    validate_multiscale,
)

NOISELESS = MultiScaleConfig(noise=0.0)


def _texture_of(image, mask):
    """Which +-1 pattern the pixels under ``mask`` follow (the sign of the neighbour differences)."""
    grey = image.mean(0)
    rows, cols = torch.meshgrid(torch.arange(grey.shape[0]), torch.arange(grey.shape[1]), indexing="ij")
    scores = []
    for parity in (rows % 2, cols % 2, (rows + cols) % 2):
        sign = 2.0 * parity - 1.0
        values, signs = grey[mask], sign[mask]
        scores.append((values - values.mean()) @ signs)
    return int(torch.stack(scores).argmax())


def test_generation_is_deterministic_and_shaped():
    first, again = generate_multiscale_images(20, 0), generate_multiscale_images(20, 0)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert first["image"].shape == (20, 3, 32, 32) and first["image"].dtype == torch.float32
    assert first["label"].shape == (20,) and first["region"].shape == (20, 32, 32)
    assert not torch.equal(first["image"], generate_multiscale_images(20, 1)["image"])
    torch.testing.assert_close(first["label"], first["layout"] * len(TEXTURES) + first["texture"])


def test_the_label_is_in_the_pixels():
    images = generate_multiscale_images(40, 3, NOISELESS)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[2:-2, 2:-2] = True  # the texture's frame is two pixels wide
    for i in range(40):
        image, region = images["image"][i], images["region"][i]
        layout = LAYOUTS[int(images["layout"][i])]
        half = {"left": region[:, 0], "right": region[:, -1], "top": region[0], "bottom": region[-1]}[layout]
        assert half.all() and 0.3 < region.float().mean() < 0.7  # about half of the image
        assert (image[:, region].mean(1) > image[:, ~region].mean(1)).all()  # lighter, every channel
        assert _texture_of(image, inside) == images["texture"][i]
        edge = image[:, 0, :][:, region[0]]  # the frame: the region's flat colour
        assert torch.allclose(edge, edge[:, :1].expand_as(edge))


def test_half_resolution_cannot_see_the_texture():
    """What the L-branch sees at img_scale 0.5: bicubic resampling averages the period-2 texture away."""
    images = generate_multiscale_images(12, 5, NOISELESS)["image"]
    flat = generate_multiscale_images(12, 5, replace(NOISELESS, texture_amplitude=0.0))["image"]
    assert (images - flat).abs().amax() == pytest.approx(NOISELESS.texture_amplitude, rel=1e-5)
    half = [F.interpolate(x, size=(16, 16), mode="bicubic", align_corners=False) for x in (images, flat)]
    leak = (half[0] - half[1]).abs()
    assert leak[..., 2:-2, 2:-2].amax() < 1e-6  # inside: exactly averaged away
    assert leak.amax() < 0.11 * NOISELESS.texture_amplitude  # at the frame: a tenth at most


def test_classes_are_roughly_balanced():
    labels = generate_multiscale_images(1200, 0)["label"]
    counts = torch.bincount(labels, minlength=len(LAYOUTS) * len(TEXTURES))
    assert counts.min() > 60  # 100 expected per class


def test_load_caches_and_validates(tmp_cache):
    first = load_multiscale_images("val", num_images=16)
    assert any(tmp_cache.glob("multiscale-val-seed0-n16*"))
    again = load_multiscale_images("val", num_images=16)
    assert torch.equal(first["image"], again["image"])
    assert not torch.equal(first["image"], load_multiscale_images("test", num_images=16)["image"])
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_multiscale_images("dev")


def test_validation_names_what_came():
    good = generate_multiscale_images(4, 0)
    with pytest.raises(KeyError, match=r"missing \['label'\]"):
        validate_multiscale({"image": good["image"]})
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\), got \(4, 32, 32\)"):
        validate_multiscale({**good, "image": good["image"][:, 0]})
    with pytest.raises(ValueError, match=r"label of shape \(4,\), got \(3,\)"):
        validate_multiscale({**good, "label": good["label"][:3]})
    with pytest.raises(ValueError, match=r"\[0, 12\), got \[.*, 12\]"):
        validate_multiscale({**good, "label": torch.full((4,), 12)})
    with pytest.raises(ValueError, match="image_size must be even"):
        MultiScaleConfig(image_size=31)
    with pytest.raises(ValueError, match="texture_frame must lie in"):
        MultiScaleConfig(texture_frame=16)
    with pytest.raises(ValueError, match="region must be lighter"):
        MultiScaleConfig(background_colours=(0.3, 0.6))
