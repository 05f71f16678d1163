import pytest
import torch

from fusion_edu.camera import project_points
from fusion_edu.datasets import load_pointcloud_scenes
from fusion_edu.datasets.pointcloud import (
    CLASS_COLOURS,
    FLOOR,
    SHAPES,
    PointCloudConfig,
    generate_pointcloud_scenes,
    validate_pointcloud,
)


@pytest.fixture(scope="module")
def scenes():
    return generate_pointcloud_scenes(40, [7, 0])


def _pixels_of_points(scenes):
    """Pixel (row, column) of each point through the image camera, and whether it lands in the image."""
    uvz = project_points(scenes["points"], scenes["K"], scenes["Rt"])
    size = scenes["image"].shape[-1]
    u, v, depth = uvz.unbind(-1)
    inside = (u >= 0) & (u < size) & (v >= 0) & (v < size) & (depth > 0)
    return v.long().clamp(0, size - 1), u.long().clamp(0, size - 1), inside


def test_generation_is_deterministic_and_seeded(scenes):
    again = generate_pointcloud_scenes(40, [7, 0])
    assert all(torch.equal(scenes[key], again[key]) for key in scenes)
    other = generate_pointcloud_scenes(40, [8, 0])
    assert not torch.equal(scenes["points"], other["points"])


def test_points_and_pixels_agree_on_what_the_camera_sees(scenes):
    # the image and the cloud come from one pose: a point's pixel shows the same object (occlusion included)
    rows, columns, inside = _pixels_of_points(scenes)
    batch = torch.arange(len(rows))[:, None].expand_as(rows)
    seen = scenes["pixel_instance"][batch, rows, columns]
    agree = (seen == scenes["point_instance"].to(seen.dtype))[inside].float().mean()
    assert agree > 0.9, agree  # the rest: sub-pixel rays on silhouettes, and 1 cm of sensor noise
    # the depth sensor sees wider than the camera: some points fall outside the image
    assert 0.6 < inside.float().mean() < 0.98


def test_two_dimensional_labels_are_the_projected_three_dimensional_ones(scenes):
    present = scenes["object_class"] >= 0
    boxes, centres = scenes["object_box_2d"], scenes["object_centre_2d"]
    size = scenes["image"].shape[-1]
    for scene in range(len(boxes)):
        for index in torch.nonzero(present[scene]).flatten().tolist():
            rows, columns = torch.nonzero(scenes["pixel_instance"][scene] == index, as_tuple=True)
            u0, v0, u1, v1 = boxes[scene, index].tolist()
            # every pixel of the object lies inside the projection of its 3-D box
            assert (columns + 0.5 >= u0).all() and (columns + 0.5 <= u1).all()
            assert (rows + 0.5 >= v0).all() and (rows + 0.5 <= v1).all()
            u, v = centres[scene, index].tolist()
            if 0 <= u < size and 0 <= v < size:
                assert u0 <= u <= u1 and v0 <= v <= v1


def test_objects_span_dense_sparse_and_missing_points(scenes):
    present = scenes["object_class"] >= 0
    instance = scenes["point_instance"]
    counts = torch.stack([(instance == index).sum(1) for index in range(present.shape[1])], dim=1)
    assert torch.equal(counts[present], scenes["object_points"][present])
    points = scenes["object_points"][present]
    assert (points <= 5).any() and (points >= 100).any()
    assert (scenes["object_pixels"][present] > 0).float().mean() > 0.9  # the image still sees them
    assert (scenes["point_instance"] == FLOOR).any()
    assert set(scenes["object_class"][present].tolist()) == set(range(len(SHAPES)))
    assert torch.isfinite(scenes["points"]).all()


def test_load_caches_and_validates(tmp_cache):
    config = PointCloudConfig(num_points=256, num_rays=800)
    first = load_pointcloud_scenes("val", num_scenes=5, config=config)
    assert list(tmp_cache.glob("pointcloud-val-seed0-n5*.pt"))
    second = load_pointcloud_scenes("val", num_scenes=5, config=config)
    assert torch.equal(first["points"], second["points"]) and first["points"].shape == (5, 256, 3)


def test_bad_scenes_raise_clear_errors(scenes):
    with pytest.raises(ValueError, match=r"non-empty points of shape \(n, N, 3\), got \(40, 0, 3\)"):
        validate_pointcloud({**scenes, "points": scenes["points"][:, :0]})
    with pytest.raises(ValueError, match="NaN or inf"):
        validate_pointcloud({**scenes, "points": scenes["points"] * float("nan")})
    with pytest.raises(ValueError, match="expected uint8 images"):
        validate_pointcloud({**scenes, "image": scenes["image"].float()})
    with pytest.raises(KeyError, match=r"missing \['Rt'\]"):
        validate_pointcloud({key: value for key, value in scenes.items() if key != "Rt"})


def test_the_image_shows_each_class_in_its_own_hue(scenes):
    # the camera's cue the depth sensor lacks: an object's mean chromaticity is nearest its class's paint
    image = scenes["image"].float() / 255  # n 3 H W
    names = []
    for index in range(len(image)):
        for slot, shape in enumerate(scenes["object_class"][index].tolist()):
            pixels = scenes["pixel_instance"][index] == slot
            if shape >= 0 and pixels.sum() >= 10:
                colour = image[index][:, pixels].mean(1)
                chroma = colour / colour.sum()  # shading scales all channels: compare chromaticities
                distance = (chroma - CLASS_COLOURS / CLASS_COLOURS.sum(1, keepdim=True)).norm(dim=1)
                names.append(int(distance.argmin()) == shape)
    assert len(names) > 50 and sum(names) / len(names) > 0.9, (sum(names), len(names))
