import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fusion_edu.datasets import (
    CLASSES,
    VISIBILITY,
    RGBDConfig,
    cache_dir,
    corrupted_patches,
    damage_scenes,
    generate_rgbd_scenes,
    load_rgbd_scenes,
    object_visibility,
    surface_normals,
    validate_rgbd,
)
from fusion_edu.datasets.rgbd import NORMAL_PIXEL_SPACING

MIN_PIXELS = 4  # ignore objects almost entirely hidden or corrupted


def _object_contrasts(scenes, index):
    """Measured from the images alone: per object, its RGB and depth contrast to the background."""
    rgb, depth = scenes["rgb"][index].numpy(), scenes["depth"][index, 0].numpy()
    instance, visibility = scenes["instance"][index].numpy(), scenes["visibility"][index].numpy()
    rgb_ok, depth_ok = ~scenes["rgb_corrupt"][index].numpy(), ~scenes["depth_corrupt"][index].numpy()
    background = instance == 0
    background_colour = rgb[:, background & rgb_ok].mean(axis=1)
    ys, xs = np.nonzero(background & depth_ok)
    design = np.stack([np.ones_like(xs), xs, ys], axis=1).astype(float)
    plane, *_ = np.linalg.lstsq(design, depth[ys, xs], rcond=None)  # the floor
    rows_index, cols_index = np.mgrid[0 : depth.shape[0], 0 : depth.shape[1]]
    floor = plane[0] + plane[1] * cols_index + plane[2] * rows_index
    rows = []
    for object_id in range(1, instance.max() + 1):
        pixels = instance == object_id
        if min((pixels & rgb_ok).sum(), (pixels & depth_ok).sum()) < MIN_PIXELS:
            continue
        colour = rgb[:, pixels & rgb_ok].mean(axis=1)
        height = (floor - depth)[pixels & depth_ok].mean()
        kind = VISIBILITY[visibility[pixels][0]]
        rows.append((kind, np.linalg.norm(colour - background_colour), height))
    return rows


def test_design_each_modality_misses_a_fair_share_of_objects(small_scenes):
    rows = [row for i in range(len(small_scenes["rgb"])) for row in _object_contrasts(small_scenes, i)]
    rgb_contrast = np.array([r[1] for r in rows])
    height = np.array([r[2] for r in rows])
    kinds = np.array([r[0] for r in rows])
    invisible_in_rgb = rgb_contrast < 0.05
    invisible_in_depth = height < 0.03
    # the kinds are what the images show, measured, not only what the generator says
    assert np.array_equal(invisible_in_rgb, kinds == "depth_only")
    assert np.array_equal(invisible_in_depth, kinds == "rgb_only")
    assert not np.any(invisible_in_rgb & invisible_in_depth)  # every object is seen by one
    assert invisible_in_rgb.mean() > 0.25 and invisible_in_depth.mean() > 0.25
    assert np.all(rgb_contrast[~invisible_in_rgb] > 0.25)
    assert np.all(height[~invisible_in_depth] > 0.09)


def test_labels_and_classes(small_scenes):
    labels = small_scenes["label"]
    assert labels.dtype == torch.int64 and labels.min() == 0 and labels.max() == len(CLASSES) - 1
    for class_index in range(len(CLASSES)):
        assert (labels == class_index).any(), CLASSES[class_index]
    assert torch.equal(labels > 0, small_scenes["instance"] > 0)
    assert torch.equal(labels > 0, small_scenes["visibility"] > 0)


def test_corruption_masks_are_ground_truth(small_scenes):
    rgb_mask, depth_mask = small_scenes["rgb_corrupt"], small_scenes["depth_corrupt"]
    assert not (rgb_mask & depth_mask).any()  # never the same cell in both modalities
    assert rgb_mask.flatten(1).any(1).all() and depth_mask.flatten(1).any(1).all()
    glare = small_scenes["rgb"].permute(1, 0, 2, 3)[:, rgb_mask]
    assert glare.mean() > 0.9  # saturated
    depth = small_scenes["depth"][:, 0]
    bad = depth[depth_mask]
    good = depth[~depth_mask]
    assert (bad == 0).float().mean() > 0.2  # holes
    assert (good == 0).float().mean() < 1e-3
    cell = RGBDConfig().corruption_cell
    cells = corrupted_patches(rgb_mask, cell, min_share=1e-6)
    assert torch.equal(corrupted_patches(rgb_mask, cell, min_share=1.0), cells)  # whole cells


def test_corrupted_patches_by_hand():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True  # patch 0 fully
    mask[0, 2, 2] = True  # a quarter of patch 3
    assert corrupted_patches(mask, 2).tolist() == [[True, False, False, False]]
    assert corrupted_patches(mask, 2, min_share=0.25).tolist() == [[True, False, False, True]]
    with pytest.raises(ValueError, match=r"patch size 3 does not divide the mask size \(4, 4\)"):
        corrupted_patches(mask, 3)


def test_damage_scenes_damages_the_same_scenes_afresh_in_distinct_cells():
    clean = generate_rgbd_scenes(30, 5, RGBDConfig(rgb_glare_cells=(0, 0), depth_bad_cells=(0, 0)))
    damaged = damage_scenes(clean, (7, 8), seed=1)
    cell = RGBDConfig().corruption_cell
    for key in ("rgb_corrupt", "depth_corrupt"):
        per_image = damaged[key][:, ::cell, ::cell].flatten(1).sum(1)  # damaged cells per image
        assert per_image.min() == 7 and per_image.max() == 8, per_image
    assert not (damaged["rgb_corrupt"] & damaged["depth_corrupt"]).any()
    untouched = ~damaged["rgb_corrupt"][:, None].expand_as(clean["rgb"])
    assert torch.equal(damaged["rgb"][untouched], clean["rgb"][untouched])
    depth_untouched = ~damaged["depth_corrupt"][:, None]
    assert torch.equal(damaged["depth"][depth_untouched], clean["depth"][depth_untouched])
    for key in ("label", "visibility", "instance"):
        assert torch.equal(damaged[key], clean[key]), key
    assert not clean["rgb_corrupt"].any()
    assert damaged["rgb"][~untouched].mean() > 0.9  # glare: 0.97 plus noise
    assert torch.equal(damage_scenes(clean, (7, 8), seed=1)["depth"], damaged["depth"])
    assert not torch.equal(damage_scenes(clean, (7, 8), seed=2)["depth_corrupt"], damaged["depth_corrupt"])
    with pytest.raises(ValueError, match=r"expected undamaged scenes .* got 30 images with glare"):
        damage_scenes(damaged, (1, 2), seed=1)


def test_generation_is_deterministic_and_seed_dependent():
    a, b = generate_rgbd_scenes(5, seed=7), generate_rgbd_scenes(5, seed=7)
    c = generate_rgbd_scenes(5, seed=8)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["rgb"], c["rgb"])


def test_unknown_split_is_named():
    with pytest.raises(ValueError, match="unknown split 'trian'; expected one of train, val, test"):
        load_rgbd_scenes("trian")


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="corruption_cell must divide image_size, got 7 and 32"):
        RGBDConfig(corruption_cell=7)


def test_a_cache_without_locks_still_reads_and_makes_entries(tmp_cache, monkeypatch):
    """Where no lock file can be opened (a read-only class cache, say), the cache works as without locks."""
    first = load_rgbd_scenes("val", num_scenes=6)
    open_file = Path.open

    def refuse_lock_files(self, *args, **kwargs):
        if self.name.endswith(".lock"):
            raise PermissionError(f"read-only: {self}")
        return open_file(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse_lock_files)
    again = load_rgbd_scenes("val", num_scenes=6)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert load_rgbd_scenes("test", num_scenes=6)["rgb"].shape == first["rgb"].shape  # made unlocked
    assert not (tmp_cache / ".rgbd-test-seed0-n6.pt.lock").exists()


def test_cache_round_trip_and_splits_differ(tmp_cache):
    first = load_rgbd_scenes("val", num_scenes=6)
    assert cache_dir() == tmp_cache
    assert sorted(p.name for p in tmp_cache.iterdir()) == [".rgbd-val-seed0-n6.pt.lock",  # made_once's
                                                           "rgbd-val-seed0-n6.json", "rgbd-val-seed0-n6.pt"]
    again = load_rgbd_scenes("val", num_scenes=6)
    for key in first:
        assert torch.equal(first[key], again[key])
    test = load_rgbd_scenes("test", num_scenes=6)
    assert not torch.equal(first["rgb"], test["rgb"])


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_cache_is_detected_and_regenerated(tmp_cache, damage):
    original = load_rgbd_scenes("val", num_scenes=4)
    path = tmp_cache / "rgbd-val-seed0-n4.pt"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="is corrupt: expected sha256 [0-9a-f]{64}, found [0-9a-f]{64}"):
        rebuilt = load_rgbd_scenes("val", num_scenes=4)
    assert torch.equal(rebuilt["rgb"], original["rgb"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # valid again: read back without a warning
        load_rgbd_scenes("val", num_scenes=4)


def test_stale_cache_is_regenerated(tmp_cache):
    load_rgbd_scenes("val", num_scenes=4)
    sidecar = tmp_cache / "rgbd-val-seed0-n4.json"
    sidecar.write_text(sidecar.read_text().replace('"version": 2', '"version": 1'))
    with pytest.warns(UserWarning, match="is stale: expected .*'version': 2.*found .*'version': 1"):
        load_rgbd_scenes("val", num_scenes=4)


def test_another_config_gets_its_own_cache_entry(tmp_cache):
    default = load_rgbd_scenes("val", num_scenes=4)
    variant = load_rgbd_scenes("val", num_scenes=4, config=RGBDConfig(visibility_probs=(1.0, 0.0, 0.0)))
    names = sorted(p.name for p in tmp_cache.iterdir() if p.suffix == ".pt")
    assert len(names) == 2 and "rgbd-val-seed0-n4.pt" in names, names
    assert any(name.startswith("rgbd-val-seed0-n4-config") for name in names), names
    assert not torch.equal(default["visibility"], variant["visibility"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default entry was not overwritten: read back without a warning
        again = load_rgbd_scenes("val", num_scenes=4)
    assert torch.equal(again["rgb"], default["rgb"])


def test_no_temporary_files_left_behind(tmp_cache):
    load_rgbd_scenes("val", num_scenes=3)
    assert not [p for p in tmp_cache.iterdir() if p.name.endswith(".tmp")]


def test_object_visibility_by_hand():
    instance = torch.tensor([[[0, 1], [2, 2]], [[1, 0], [0, 0]]], dtype=torch.uint8)
    visibility = torch.tensor([[[0, 3], [2, 2]], [[1, 0], [0, 0]]], dtype=torch.uint8)
    kinds = object_visibility({"instance": instance, "visibility": visibility})
    assert kinds.tolist() == [3, 2, 1]  # scene 0: objects 1 and 2; scene 1: object 1


@pytest.mark.parametrize("change, message", [
    (dict(depth=torch.zeros(4, 1, 16, 16)), r"rgb and depth must be aligned \(same n, H, W\): got rgb "
                                            r"\(4, 3, 32, 32\) and depth \(4, 1, 16, 16\)"),
    (dict(depth=torch.zeros(3, 1, 32, 32)), "must be aligned"),
    (dict(rgb=torch.zeros(4, 1, 32, 32)), r"expected rgb of shape \(n, 3, H, W\), got \(4, 1, 32, 32\)"),
    (dict(depth=torch.zeros(4, 32, 32)), r"expected depth of shape \(n, 1, H, W\), got \(4, 32, 32\)"),
    (dict(label=torch.zeros(4, 32, 31)), r"expected label of shape \(4, 32, 32\) \(n, H, W\), got"),
])
def test_misaligned_rgbd_is_named(change, message):
    scenes = {"rgb": torch.zeros(4, 3, 32, 32), "depth": torch.zeros(4, 1, 32, 32),
              "label": torch.zeros(4, 32, 32)}
    validate_rgbd(scenes)  # aligned: no error
    with pytest.raises(ValueError, match=message):
        validate_rgbd({**scenes, **change})
    with pytest.raises(KeyError, match=r"missing \['depth'\]"):
        validate_rgbd({"rgb": scenes["rgb"], "label": scenes["label"]})


def test_surface_normals_of_planes():
    xs = torch.arange(8.0).expand(8, 8)  # x grows along each row
    slope = 0.01
    plane = (0.5 + slope * xs)[None, None]  # tilted along x only
    normals = surface_normals(plane) * 2 - 1  # decode the (n + 1) / 2 encoding
    expected = torch.tensor([-slope / NORMAL_PIXEL_SPACING, 0.0, 1.0])
    expected = expected / expected.norm()
    torch.testing.assert_close(normals[0, :, 4, 4], expected)
    torch.testing.assert_close(normals.norm(dim=1), torch.ones(1, 8, 8))
    flat = surface_normals(torch.full((2, 1, 8, 8), 0.3))
    torch.testing.assert_close(flat, torch.tensor([0.5, 0.5, 1.0])[None, :, None, None].expand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(n, 1, H, W\), got \(8, 8\)"):
        surface_normals(torch.zeros(8, 8))
