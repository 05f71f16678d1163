from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fusion_edu.crossvit import branch_view, single_branch
from fusion_edu.datasets import (
    LAYOUTS,
    TEXTURES,
    MultiScaleConfig,
    generate_multiscale_images,
    halving_matrix,
    load_multiscale_images,
    texture_profile,
    validate_multiscale,
)
from fusion_edu.recipes import CROSSVIT
from fusion_edu.train import seeded

NOISELESS = MultiScaleConfig(noise=0.0)


def _texture_of(image, mask):
    """Which +-1 pattern the pixels under ``mask`` follow (the strongest correlation, either sign)."""
    grey = image.mean(0)
    rows, cols = torch.meshgrid(torch.arange(grey.shape[0]), torch.arange(grey.shape[1]), indexing="ij")
    scores = []
    for parity in (rows % 2, cols % 2, (rows + cols) % 2):
        sign = 2.0 * parity - 1.0
        values, signs = grey[mask], sign[mask]
        scores.append(((values - values.mean()) @ signs).abs())
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
    everywhere = torch.ones(32, 32, dtype=torch.bool)
    for i in range(40):
        image, region = images["image"][i], images["region"][i]
        layout = LAYOUTS[int(images["layout"][i])]
        half = {"left": region[:, 0], "right": region[:, -1], "top": region[0], "bottom": region[-1]}[layout]
        assert half.all() and 0.3 < region.float().mean() < 0.7  # about half of the image
        assert (image[:, region].mean(1) > image[:, ~region].mean(1)).all()  # lighter, every channel
        assert _texture_of(image, everywhere) == images["texture"][i]


def test_the_texture_profile_alternates_and_halving_sends_it_to_zero():
    profile = torch.tensor(texture_profile(32), dtype=torch.float64)
    alternation = torch.tensor([(-1.0) ** r for r in range(32)], dtype=torch.float64)
    halving = halving_matrix(32)
    # H is F.interpolate's bicubic halving (checked on a random signal)
    signal = torch.randn(32, dtype=torch.float64)
    expected = F.interpolate(signal.reshape(1, 1, 32, 1), size=(16, 1), mode="bicubic", align_corners=False)
    torch.testing.assert_close(halving @ signal, expected.flatten())
    # the plain alternation leaks at the edges (so the projection is needed); the profile does not
    assert (halving @ alternation).abs().amax() > 0.15
    assert (halving @ profile).abs().amax() < 1e-12
    assert ((profile - alternation)[2:-2]).abs().amax() < 0.03 and (profile * alternation > 0.8).all()


def test_the_l_branch_sees_the_same_with_and_without_the_texture():
    """Exact: the L-branch's view (the model's own resampling) of each image equals that of the same
    image (same colours, same noise) generated without its texture, up to float rounding."""
    textured = generate_multiscale_images(24, 5)["image"]
    flat = generate_multiscale_images(24, 5, replace(MultiScaleConfig(), texture_amplitude=0.0))["image"]
    amplitude = MultiScaleConfig().texture_amplitude
    assert (textured - flat).abs().amax() > amplitude  # the texture is there at full resolution
    half = CROSSVIT["img_size"] * CROSSVIT["img_scales"][1]
    views = [branch_view(x, CROSSVIT["img_size"], int(half)) for x in (textured, flat)]
    assert (views[0] - views[1]).abs().amax() < 1e-5
    with seeded(0), torch.no_grad():  # end to end: the L-branch's patch tokens
        l_branch = single_branch(1, **CROSSVIT)
        tokens = [l_branch.patch_tokens(x) for x in (textured, flat)]
    assert (tokens[0] - tokens[1]).abs().amax() < 1e-5 < tokens[0].abs().amax()


def _probe_texture_accuracy(train: dict, test: dict, view) -> float:
    """Test accuracy of a small MLP trained to read the texture from ``view(images)``."""
    inputs = {name: view(split["image"]).flatten(1) for name, split in (("train", train), ("test", test))}
    mean, std = inputs["train"].mean(0), inputs["train"].std(0)
    inputs = {name: (x - mean) / std for name, x in inputs.items()}
    with seeded(0):
        probe = nn.Sequential(nn.Linear(inputs["train"].shape[1], PROBE_WIDTH), nn.ReLU(),
                              nn.Linear(PROBE_WIDTH, len(TEXTURES)))
        optimizer = torch.optim.Adam(probe.parameters(), lr=1e-3, weight_decay=1e-4)
        for _ in range(PROBE_EPOCHS):
            for index in torch.randperm(len(inputs["train"])).split(PROBE_BATCH):
                loss = F.cross_entropy(probe(inputs["train"][index]), train["texture"][index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        return (probe(inputs["test"]).argmax(1) == test["texture"]).float().mean().item()


PROBE_WIDTH, PROBE_EPOCHS, PROBE_BATCH = 64, 15, 100
CHANCE_MARGIN = 0.05


def test_a_probe_reads_the_texture_from_the_s_view_and_not_from_the_l_view():
    """The issue's check: a probe trained on the L-branch's view reads the texture no better than chance
    (1/3, within 0.05); the same probe on the full image reads it, so the probe can learn it."""
    train, test = generate_multiscale_images(2000, 11), generate_multiscale_images(1000, 12)
    size = CROSSVIT["img_size"]
    full = _probe_texture_accuracy(train, test, lambda x: x)
    coarse = _probe_texture_accuracy(train, test, lambda x: branch_view(x, size, size // 2))
    assert full > 0.9, full
    assert abs(coarse - 1 / len(TEXTURES)) < CHANCE_MARGIN, coarse


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
    with pytest.raises(ValueError, match="region must be lighter"):
        MultiScaleConfig(background_colours=(0.3, 0.6))
