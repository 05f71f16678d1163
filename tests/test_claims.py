"""The claims notebook 01 asserts, re-checked over several seeds at a smaller configuration.

Notebook 01 claims that a single modality has a ceiling: the RGB model does not find (predicts
background on) the objects only depth sees, the depth model those only RGB sees, and each classifies
worse than the other under its own damage. Data, initialisation and shuffling all change with the seed.
"""

import pytest

from fusion_edu.datasets import CLASSES, VISIBILITY, load_rgbd_scenes
from fusion_edu.metrics import grouped_accuracy
from fusion_edu.train import TrainConfig, fit, predict, seeded
from fusion_edu.vit import VisionTransformer

SEEDS = (0, 1, 2)
TRAIN_SCENES, TEST_SCENES = 1500, 300
CONFIG = dict(epochs=6, batch_size=32, lr=2e-3)
RGB_ONLY, DEPTH_ONLY = VISIBILITY.index("rgb_only"), VISIBILITY.index("depth_only")
GLARE, DEPTH_DAMAGE = 1, 2


def _single_modal_accuracies(seed, modality, channels, train, test):
    with seeded(seed):
        model = VisionTransformer(img_size=32, patch_size=4, in_chans=channels, num_classes=len(CLASSES),
                                  embed_dim=64, depth=4, num_heads=4, task="segmentation", modality=modality)
    fit(model, train, config=TrainConfig(**CONFIG, seed=seed), progress=False)
    predictions = predict(model, test)
    damage = test["rgb_corrupt"].long() * GLARE + test["depth_corrupt"].long() * DEPTH_DAMAGE
    found = grouped_accuracy(predictions > 0, test["label"] > 0, test["visibility"], len(VISIBILITY))
    return found, grouped_accuracy(predictions, test["label"], damage, 3)


@pytest.mark.parametrize("seed", SEEDS)
def test_each_modality_misses_what_it_cannot_see(seed, tmp_cache):
    train = load_rgbd_scenes("train", seed=seed, num_scenes=TRAIN_SCENES)
    test = load_rgbd_scenes("test", seed=seed, num_scenes=TEST_SCENES)
    rgb_found, rgb_damage = _single_modal_accuracies(seed, "rgb", 3, train, test)
    depth_found, depth_damage = _single_modal_accuracies(seed, "depth", 1, train, test)
    assert rgb_found[DEPTH_ONLY] < 0.1 < 0.4 < rgb_found[RGB_ONLY], rgb_found
    assert depth_found[RGB_ONLY] < 0.1 < 0.4 < depth_found[DEPTH_ONLY], depth_found
    assert rgb_damage[GLARE] < depth_damage[GLARE], (rgb_damage, depth_damage)
    assert depth_damage[DEPTH_DAMAGE] < rgb_damage[DEPTH_DAMAGE], (rgb_damage, depth_damage)
