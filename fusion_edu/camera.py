"""A pinhole camera: the geometry that aligns a point cloud with an image (TokenFusion Sec. 3.5).

A world point p = [x, y, z] reaches pixel (u, v) through the intrinsic matrix K and the extrinsic
matrix [R | t] (world to camera), in homogeneous coordinates

    z_c [u, v, 1]^T = K [R | t] [x, y, z, 1]^T,      K = [[f, 0, c_u], [0, f, c_v], [0, 0, 1]],

where z_c is the point's depth along the camera's viewing axis.  Conventions (those of OpenCV and of
image arrays): the camera looks along its +z axis, x points right and y points down, so u counts
columns and v rows, and pixel (i, j) covers u in [j, j + 1), v in [i, i + 1).

Used twice: by the point-cloud + image scenes (``datasets.pointcloud``: rays cast through pixels
render the image and sample the point cloud) and by TokenFusion's point-to-patch projection (Eqs. 8-9).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["camera_rays", "intrinsics", "look_at", "project_points", "validate_camera"]

MIN_DEPTH = 1e-6  # points closer than this to the camera plane, or behind it, do not project
_SINGULAR_TOLERANCE = 1e-9
_ROTATION_TOLERANCE = 1e-4


def intrinsics(focal: float, width: int, height: int) -> Tensor:
    """K for square pixels of focal length ``focal`` (in pixels), principal point at the image centre."""
    if focal <= 0:
        raise ValueError(f"the focal length must be positive, got {focal}")
    return torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """Extrinsics [R | t] (3 x 4, world to camera) of a camera at ``eye`` looking at ``target``.

    The rows of R are the camera's axes in world coordinates: x (right), y (down, away from ``up``)
    and z (forward, towards the target); ``up`` defaults to +z; t = -R eye puts the camera at the origin.
    """
    up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype) if up is None else up
    forward = target - eye
    if forward.norm() < _SINGULAR_TOLERANCE:
        raise ValueError("the camera cannot look at its own position (eye == target)")
    forward = forward / forward.norm()
    right = torch.linalg.cross(forward, up)
    if right.norm() < _SINGULAR_TOLERANCE:
        raise ValueError(f"the viewing direction {forward.tolist()} is parallel to up = {up.tolist()}")
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    rotation = torch.stack([right, down, forward])  # 3 x 3, rows: camera axes in the world
    return torch.cat([rotation, -(rotation @ eye)[:, None]], dim=1)


def validate_camera(intrinsic: Tensor, extrinsic: Tensor) -> None:
    """Check K = ``intrinsic (b 3 3)`` is an invertible intrinsic matrix and [R|t] = ``extrinsic (b 3 4)``
    a rigid transform (R orthonormal, det +1), for a batch of b cameras; raise naming what came."""
    if intrinsic.ndim != 3 or intrinsic.shape[1:] != (3, 3):
        raise ValueError(f"expected intrinsics K of shape (batch, 3, 3), got {tuple(intrinsic.shape)}")
    if extrinsic.ndim != 3 or extrinsic.shape[1:] != (3, 4):
        raise ValueError(f"expected extrinsics [R|t] of shape (batch, 3, 4), got {tuple(extrinsic.shape)}")
    if len(intrinsic) != len(extrinsic):
        raise ValueError(f"expected one K per [R|t], got {len(intrinsic)} and {len(extrinsic)}")
    focal = intrinsic[:, [0, 1], [0, 1]]
    if (focal.abs() < _SINGULAR_TOLERANCE).any():
        raise ValueError(f"singular intrinsics: focal lengths must be non-zero, got {focal.tolist()}")
    last_row = torch.tensor([0.0, 0.0, 1.0], dtype=intrinsic.dtype)
    if (intrinsic[:, 2] - last_row).abs().max() > _ROTATION_TOLERANCE:
        raise ValueError(f"expected K's last row to be [0, 0, 1], got {intrinsic[:, 2].tolist()}")
    rotation = extrinsic[:, :, :3]
    identity = torch.eye(3, dtype=extrinsic.dtype).expand_as(rotation)
    if (rotation @ rotation.transpose(1, 2) - identity).abs().max() > _ROTATION_TOLERANCE:
        raise ValueError("expected R in [R|t] to be a rotation (R R^T = I); got a matrix that is not")
    if (torch.linalg.det(rotation) < 0).any():
        raise ValueError("expected R in [R|t] to be a rotation (det +1); got a reflection")


def project_points(points: Tensor, intrinsic: Tensor, extrinsic: Tensor) -> Tensor:
    """(u, v, z_c) of ``points (b n 3)`` seen by cameras K = ``intrinsic (b 3 3)``, [R|t] = ``extrinsic
    (b 3 4)``: ``(b n 3)``.

    u and v are NaN-free for every point: where the depth z_c is below ``MIN_DEPTH`` (on or behind the
    camera plane) they are set to -1, outside any image, and the caller masks them by z_c.
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"expected points of shape (batch, n, 3), got {tuple(points.shape)}")
    validate_camera(intrinsic, extrinsic)
    if len(points) != len(intrinsic):
        raise ValueError(f"expected one camera per point cloud, got {len(intrinsic)} cameras and "
                         f"{len(points)} clouds")
    homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)  # b n 4: [x y z 1]
    camera = homogeneous @ extrinsic.transpose(1, 2)  # b n 3: [R|t] p, in camera coordinates
    image = camera @ intrinsic.transpose(1, 2)  # b n 3: K [R|t] p = z_c [u, v, 1]
    depth = image[..., 2]
    in_front = depth > MIN_DEPTH
    safe_depth = torch.where(in_front, depth, torch.ones_like(depth))
    outside = torch.full_like(image[..., :2], -1)
    uv = torch.where(in_front[..., None], image[..., :2] / safe_depth[..., None], outside)
    return torch.cat([uv, depth[..., None]], dim=-1)


def camera_rays(intrinsic: Tensor, extrinsic: Tensor, uv: Tensor) -> tuple[Tensor, Tensor]:
    """World-space rays through image points ``uv (n 2)`` of one camera: origin (3,), unit directions (n 3).

    The inverse of the projection: direction ∝ R^T K^-1 [u, v, 1]^T from the centre -R^T t.
    """
    validate_camera(intrinsic[None], extrinsic[None])
    rotation, translation = extrinsic[:, :3], extrinsic[:, 3]
    pixels = torch.cat([uv, torch.ones_like(uv[:, :1])], dim=1)  # n 3: [u v 1]
    directions = pixels @ torch.linalg.inv(intrinsic).T @ rotation  # n 3: R^T K^-1 [u v 1]
    return -rotation.T @ translation, directions / directions.norm(dim=1, keepdim=True)
