import pytest
import torch

from fusion_edu.camera import MIN_DEPTH, camera_rays, intrinsics, look_at, project_points, validate_camera


def _identity_camera(focal=10.0, size=64):
    return intrinsics(focal, size, size)[None], torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1)[None]


def test_projection_is_the_pinhole_formula_computed_by_hand():
    intrinsic, extrinsic = _identity_camera()
    uvz = project_points(torch.tensor([[[1.0, 2.0, 4.0], [-3.0, 0.5, 2.0]]]), intrinsic, extrinsic)
    # u = f x / z + c_u, v = f y / z + c_v, with f = 10 and c = (32, 32)
    expected = torch.tensor([[[10 * 1 / 4 + 32, 10 * 2 / 4 + 32, 4.0],
                              [10 * -3 / 2 + 32, 10 * 0.5 / 2 + 32, 2.0]]])
    torch.testing.assert_close(uvz, expected)


def test_look_at_is_a_rigid_transform_that_puts_the_target_on_the_optical_axis():
    eye, target = torch.tensor([3.0, -2.0, 2.5]), torch.tensor([0.0, 0.5, 0.3])
    extrinsic = look_at(eye, target)
    rotation = extrinsic[:, :3]
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(3), atol=1e-6, rtol=0)
    assert torch.linalg.det(rotation) == pytest.approx(1.0, abs=1e-6)
    # the eye goes to the origin
    torch.testing.assert_close(rotation @ eye + extrinsic[:, 3], torch.zeros(3), atol=1e-6, rtol=0)
    uvz = project_points(target[None, None], intrinsics(50.0, 64, 64)[None], extrinsic[None])
    torch.testing.assert_close(uvz[0, 0], torch.tensor([32.0, 32.0, (target - eye).norm().item()]))
    # "up" is up in the image: a point above the target lands in a row above the centre (smaller v)
    above = target + torch.tensor([0.0, 0.0, 0.5])
    above = project_points(above[None, None], intrinsics(50.0, 64, 64)[None], extrinsic[None])
    assert above[0, 0, 1] < 32


def test_camera_rays_invert_the_projection():
    intrinsic, extrinsic = intrinsics(40.0, 64, 64), look_at(torch.tensor([4.0, 1.0, 3.0]), torch.zeros(3))
    uv = torch.tensor([[0.5, 0.5], [63.5, 10.0], [20.0, 40.0]])
    origin, directions = camera_rays(intrinsic, extrinsic, uv)
    torch.testing.assert_close(directions.norm(dim=1), torch.ones(3))
    for distance in (1.0, 7.5):
        uvz = project_points((origin + distance * directions)[None], intrinsic[None], extrinsic[None])
        torch.testing.assert_close(uvz[0, :, :2], uv, atol=1e-4, rtol=0)


def test_points_behind_the_camera_get_no_pixel_and_no_nan():
    intrinsic, extrinsic = _identity_camera()
    behind, on_the_plane, in_front = [0.0, 0.0, -2.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]
    uvz = project_points(torch.tensor([[behind, on_the_plane, in_front]]), intrinsic, extrinsic)
    assert torch.isfinite(uvz).all()
    torch.testing.assert_close(uvz[0, :2, :2], torch.full((2, 2), -1.0))
    assert (uvz[0, :2, 2] <= MIN_DEPTH).all() and uvz[0, 2, 2] == 1.0


def test_bad_cameras_raise_clear_errors():
    intrinsic, extrinsic = _identity_camera()
    points = torch.ones(1, 5, 3)
    with pytest.raises(ValueError, match=r"intrinsics K of shape \(batch, 3, 3\), got \(3, 3\)"):
        project_points(points, intrinsic[0], extrinsic)
    with pytest.raises(ValueError, match=r"\[R\|t\] of shape \(batch, 3, 4\), got \(1, 3, 3\)"):
        project_points(points, intrinsic, extrinsic[:, :, :3])
    with pytest.raises(ValueError, match="singular intrinsics"):
        validate_camera(torch.zeros(1, 3, 3), extrinsic)
    with pytest.raises(ValueError, match=r"R R\^T = I"):
        validate_camera(intrinsic, 2 * extrinsic)
    with pytest.raises(ValueError, match="reflection"):
        mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0]))
        validate_camera(intrinsic, torch.cat([mirror, torch.zeros(3, 1)], dim=1)[None])
    with pytest.raises(ValueError, match=r"points of shape \(batch, n, 3\), got \(5, 3\)"):
        project_points(points[0], intrinsic, extrinsic)
    with pytest.raises(ValueError, match="one camera per point cloud, got 1 cameras and 2 clouds"):
        project_points(torch.ones(2, 5, 3), intrinsic, extrinsic)
    with pytest.raises(ValueError, match="eye == target"):
        look_at(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="parallel to up"):
        look_at(torch.tensor([0.0, 0.0, 5.0]), torch.zeros(3))
    with pytest.raises(ValueError, match="focal length must be positive"):
        intrinsics(-1.0, 64, 64)
