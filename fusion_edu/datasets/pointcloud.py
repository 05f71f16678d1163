"""Point-cloud + image scenes for heterogeneous TokenFusion (notebook 04): 3-D primitives on a floor.

Each scene holds 2–4 objects (``SHAPES``: box, sphere, cylinder, cone; the class) standing on a floor,
seen by a **pinhole camera** (``fusion_edu.camera``) from a random direction above the floor.  Both
modalities come from the same camera pose, as from an RGB-D sensor:

- the **image** (``image_size`` square, RGB) is ray-cast: one ray through each pixel centre, the
  nearest surface wins (occlusion), shaded by a fixed light (Lambert) in the object's colour —
  each class its own hue (``CLASS_COLOURS``, jittered): paint a camera sees and a depth sensor does not;
  the floor is a grey checkerboard of 1-unit squares;
- the **point cloud** comes from a depth sensor at the same pose with a wider field of view
  (``depth_focal_scale`` < 1), so some points fall outside the image: rays through random sub-pixel
  positions hit the visible surfaces only (occlusion again), floor points beyond ``floor_radius`` are
  dropped and ``floor_keep`` of the others kept, and each object is thinned — its share of points
  kept is drawn log-uniformly from [``min_keep``, 1] (**sparsity**) — and, with probability
  ``hole_probability``, loses every point within ``hole_radius`` of one of its points (a **missing
  region**, like a dark or shiny surface).
  Sensor noise (σ = ``point_noise``) is added; exactly ``num_points`` points are kept (random subset,
  or repeats when fewer survive).

Labels, per object: the class, the 3-D centre (the task: classify each object and regress its centre),
and the 2-D labels obtained by **projecting the 3-D ones** through the camera, as the paper does: the
2-D centre and the 2-D box of the projected 3-D box corners.  Also per object: how many cloud points
and image pixels it got (``object_points`` sorts objects into sparsity buckets), and per point and
pixel the object it belongs to (-1: the floor; -2: the sky, pixels only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..camera import camera_rays, intrinsics, look_at, project_points
from .cache import cached_split

__all__ = [
    "MAX_OBJECTS",
    "POINTCLOUD_SPLIT_SIZES",
    "SHAPES",
    "PointCloudConfig",
    "generate_pointcloud_scenes",
    "load_pointcloud_scenes",
    "validate_pointcloud",
]

GENERATOR_VERSION = 2  # bump when the generator changes: cached sets become stale
SHAPES = ("box", "sphere", "cylinder", "cone")
MAX_OBJECTS = 4  # per scene; missing objects are padded with class -1
POINTCLOUD_SPLIT_SIZES = {"train": 3000, "val": 500, "test": 1000}
FLOOR, SKY = -1, -2  # instance ids of what is not an object (points and pixels)
_LIGHT = torch.tensor([0.4, -0.3, 0.87], dtype=torch.float64)  # direction towards the light
_AMBIENT = 0.35
_SKY_COLOUR = torch.tensor([0.15, 0.18, 0.3], dtype=torch.float64)
_CHECKER = 1.0  # floor checkerboard square, in world units
# each class's paint (RGB), jittered per object by ``colour_jitter``: the image sees it, the depth sensor not
CLASS_COLOURS = torch.tensor([[0.85, 0.30, 0.25], [0.30, 0.80, 0.35], [0.30, 0.45, 0.90], [0.90, 0.80, 0.30]],
                             dtype=torch.float64)


@dataclass(frozen=True)
class PointCloudConfig:
    image_size: int = 64
    focal: float = 56.0  # pixels: about 60 degrees across the image
    depth_focal_scale: float = 0.8  # the depth sensor's focal length relative to the image's
    num_rays: int = 3000  # rays the depth sensor casts per scene
    num_points: int = 1024
    floor_radius: float = 2.2  # floor points farther than this from the scene centre are dropped
    floor_keep: float = 0.3  # share of the floor points kept (the sensor sees mostly floor)
    min_keep: float = 0.05  # sparsest object keeps this share of its points
    hole_probability: float = 0.3
    hole_radius: float = 0.25
    point_noise: float = 0.01
    pixel_noise: float = 0.02
    colour_jitter: float = 0.15  # per channel, uniform: objects of a class share a hue, not a colour
    placement_radius: float = 1.4  # object centres lie in this square half-width around the origin
    camera_distance: tuple[float, float] = (3.4, 4.2)
    camera_elevation_degrees: tuple[float, float] = (25.0, 45.0)


def load_pointcloud_scenes(split: str, seed: int = 0, num_scenes: int | None = None,
                           config: PointCloudConfig = PointCloudConfig()) -> dict[str, Tensor]:
    """The ``split`` ("train", "val" or "test") of the point-cloud + image scenes, from the cache."""
    scenes = cached_split("pointcloud", GENERATOR_VERSION, split, POINTCLOUD_SPLIT_SIZES, seed, num_scenes,
                          config, generate_pointcloud_scenes, "num_scenes")
    validate_pointcloud(scenes)
    return scenes


def generate_pointcloud_scenes(num_scenes: int, seed: int | Sequence[int],
                               config: PointCloudConfig = PointCloudConfig()) -> dict[str, Tensor]:
    """``num_scenes`` scenes from ``seed`` (no cache).  Keys: ``points (n N 3)``, ``point_instance (n N)``,
    ``image (n 3 H W)`` in uint8 (0–255, as a camera delivers it), ``pixel_instance (n H W)``, the image
    camera's ``K (n 3 3)`` and ``Rt (n 3 4)``, the depth sensor's ``depth_K (n 3 3)``, and per object
    (padded to ``MAX_OBJECTS`` with class -1): ``object_class``, ``object_centre (n O 3)``,
    ``object_centre_2d (n O 2)``, ``object_box_2d (n O 4)`` (u0, v0, u1, v1),
    ``object_points``, ``object_pixels``."""
    rng = np.random.default_rng(seed)
    scenes = [_scene(rng, config) for _ in range(num_scenes)]
    return {key: torch.stack([scene[key] for scene in scenes]) for key in scenes[0]}


@dataclass(frozen=True)
class _Primitive:
    shape: str
    centre: tuple[float, float]  # on the floor (x, y)
    radius: float  # sphere and cylinder radius, cone base radius, box half-width
    height: float  # box, cylinder and cone height (a sphere's is its diameter)
    yaw: float  # box rotation about the vertical axis

    @property
    def footprint(self) -> float:
        """Radius of a vertical cylinder around the object (keeps objects apart)."""
        return self.radius * (math.sqrt(2) if self.shape == "box" else 1.0)

    @property
    def centre_3d(self) -> Tensor:
        return torch.tensor([*self.centre, self.height / 2], dtype=torch.float64)

    def box_corners(self) -> Tensor:
        """The 8 corners of the object's upright 3-D bounding box, ``(8, 3)``."""
        half = self.radius
        corners = torch.tensor([[sx * half, sy * half, z] for sx in (-1, 1) for sy in (-1, 1)
                                for z in (0.0, self.height)], dtype=torch.float64)
        if self.shape == "box":
            corners[:, :2] = corners[:, :2] @ _rotation_2d(self.yaw).T
        return corners + torch.tensor([*self.centre, 0.0], dtype=torch.float64)

    def intersect(self, origin: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
        """Distance along each ray to the first hit (inf: none) and the surface normal there."""
        return _INTERSECT[self.shape](self, origin, directions)


def _rotation_2d(angle: float) -> Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


def _nearest_root(a: Tensor, b: Tensor, c: Tensor, valid_at) -> Tensor:
    """Smallest positive t with a t² + 2 b t + c = 0 and ``valid_at(t)``; inf where none."""
    discriminant = b * b - a * c
    root = torch.sqrt(discriminant.clamp(min=0))
    safe_a = torch.where(a.abs() > 1e-12, a, torch.full_like(a, 1e-12))
    best = torch.full_like(a, math.inf)
    for t in ((-b - root) / safe_a, (-b + root) / safe_a):
        ok = (discriminant >= 0) & (t > 1e-9) & valid_at(t)
        best = torch.where(ok & (t < best), t, best)
    return best


def _sphere(p: _Primitive, origin: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    offset = origin - p.centre_3d  # |o + t d - c|² = r², with |d| = 1
    t = _nearest_root(torch.ones_like(d[:, 0]), d @ offset, (offset @ offset - p.radius**2).expand(len(d)),
                      lambda t: torch.ones_like(t, dtype=torch.bool))
    hit = origin + t.clamp(max=1e6)[:, None] * d
    return t, (hit - p.centre_3d) / p.radius


def _cylinder(p: _Primitive, origin: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    axis = torch.tensor([*p.centre, 0.0], dtype=torch.float64)
    o = origin - axis
    side = _nearest_root(d[:, 0] ** 2 + d[:, 1] ** 2, o[0] * d[:, 0] + o[1] * d[:, 1],
                         (o[0] ** 2 + o[1] ** 2 - p.radius**2).expand(len(d)),
                         lambda t: (o[2] + t * d[:, 2] >= 0) & (o[2] + t * d[:, 2] <= p.height))
    top = _cap(o, d, p.height, p.radius)
    t = torch.minimum(side, top)
    hit = o + t.clamp(max=1e6)[:, None] * d
    normal = torch.stack([hit[:, 0] / p.radius, hit[:, 1] / p.radius, torch.zeros_like(t)], dim=1)
    normal[top < side] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    return t, normal


def _cap(o: Tensor, d: Tensor, height: float, radius: float) -> Tensor:
    """Distance to the disc of ``radius`` at ``height`` (relative to the axis foot ``o``), seen from above."""
    safe = torch.where(d[:, 2].abs() > 1e-12, d[:, 2], torch.full_like(d[:, 2], -1e-12))
    t = (height - o[2]) / safe
    hit = o + t[:, None] * d
    inside = (hit[:, 0] ** 2 + hit[:, 1] ** 2 <= radius**2) & (t > 1e-9) & (d[:, 2] < 0)
    return torch.where(inside, t, torch.full_like(t, math.inf))


def _cone(p: _Primitive, origin: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    apex = torch.tensor([*p.centre, p.height], dtype=torch.float64)
    q = origin - apex  # the cone: q_x² + q_y² = k² q_z², -height <= q_z <= 0
    k2 = (p.radius / p.height) ** 2
    t = _nearest_root(d[:, 0] ** 2 + d[:, 1] ** 2 - k2 * d[:, 2] ** 2,
                      q[0] * d[:, 0] + q[1] * d[:, 1] - k2 * q[2] * d[:, 2],
                      (q[0] ** 2 + q[1] ** 2 - k2 * q[2] ** 2).expand(len(d)),
                      lambda t: (q[2] + t * d[:, 2] <= 0) & (q[2] + t * d[:, 2] >= -p.height))
    hit = q + t.clamp(max=1e6)[:, None] * d
    normal = torch.stack([hit[:, 0], hit[:, 1], -k2 * hit[:, 2]], dim=1)
    return t, normal / normal.norm(dim=1, keepdim=True).clamp(min=1e-12)


def _box(p: _Primitive, origin: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Slab method in the box's own frame (rotated by ``yaw`` about the vertical axis)."""
    rotation = torch.eye(3, dtype=torch.float64)
    rotation[:2, :2] = _rotation_2d(p.yaw)
    centre = p.centre_3d
    o_local, d_local = (origin - centre) @ rotation, d @ rotation  # world -> box frame
    half = torch.tensor([p.radius, p.radius, p.height / 2], dtype=torch.float64)
    safe = torch.where(d_local.abs() > 1e-12, d_local, torch.full_like(d_local, 1e-12))
    near, far = (-half - o_local) / safe, (half - o_local) / safe
    entry, exit_ = torch.minimum(near, far), torch.maximum(near, far)
    t_in, axis = entry.max(dim=1)
    t = torch.where((t_in <= exit_.min(dim=1).values) & (t_in > 1e-9), t_in, torch.full_like(t_in, math.inf))
    normal_local = torch.zeros_like(d)
    normal_local[torch.arange(len(d)), axis] = -torch.sign(d_local[torch.arange(len(d)), axis])
    return t, normal_local @ rotation.T


_INTERSECT = {"box": _box, "sphere": _sphere, "cylinder": _cylinder, "cone": _cone}


def _trace(objects: list[_Primitive], origin: Tensor, directions: Tensor
           ) -> tuple[Tensor, Tensor, Tensor]:
    """First hit of each ray: distance (inf: sky), instance (object index, ``FLOOR`` or ``SKY``), normal."""
    distance = torch.where(directions[:, 2] < 0, -origin[2] / directions[:, 2].clamp(max=-1e-12),
                           torch.full_like(directions[:, 2], math.inf))  # the floor, z = 0
    instance = torch.where(distance.isfinite(), FLOOR, SKY)
    normal = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(directions).clone()
    for index, primitive in enumerate(objects):
        t, n = primitive.intersect(origin, directions)
        closer = t < distance
        distance, instance = torch.where(closer, t, distance), torch.where(closer, index, instance)
        normal[closer] = n[closer]
    return distance, instance, normal


def _place_objects(rng: np.random.Generator, config: PointCloudConfig) -> list[_Primitive]:
    objects: list[_Primitive] = []
    count = int(rng.integers(2, MAX_OBJECTS + 1))
    while len(objects) < count:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        radius = float(rng.uniform(0.25, 0.45))
        height = 2 * radius if shape == "sphere" else float(rng.uniform(0.5, 1.0))
        centre = tuple(rng.uniform(-config.placement_radius, config.placement_radius, size=2))
        candidate = _Primitive(shape, centre, radius, height, float(rng.uniform(0, math.pi / 2)))
        if all(math.dist(candidate.centre, other.centre) > candidate.footprint + other.footprint + 0.1
               for other in objects):
            objects.append(candidate)
    return objects


def _camera(rng: np.random.Generator, config: PointCloudConfig) -> Tensor:
    azimuth = rng.uniform(0, 2 * math.pi)
    elevation = math.radians(rng.uniform(*config.camera_elevation_degrees))
    distance = rng.uniform(*config.camera_distance)
    eye = distance * torch.tensor([math.cos(elevation) * math.cos(azimuth),
                                   math.cos(elevation) * math.sin(azimuth), math.sin(elevation)])
    return look_at(eye.double(), torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64),
                   torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


def _render(objects: list[_Primitive], colours: Tensor, intrinsic: Tensor, extrinsic: Tensor,
            config: PointCloudConfig, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """The image ``(3, H, W)`` and the instance id of each pixel ``(H, W)``, one ray per pixel centre."""
    size = config.image_size
    v, u = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    uv = torch.stack([u.flatten(), v.flatten()], dim=1).double() + 0.5  # pixel centres
    origin, directions = camera_rays(intrinsic, extrinsic, uv)
    distance, instance, normal = _trace(objects, origin, directions)
    shading = _AMBIENT + (1 - _AMBIENT) * (normal @ _LIGHT).clamp(min=0)
    hit = origin + distance.clamp(max=1e6)[:, None] * directions
    checker = ((hit[:, 0] / _CHECKER).floor() + (hit[:, 1] / _CHECKER).floor()) % 2
    floor_colour = (0.45 + 0.15 * checker)[:, None].expand(-1, 3)
    object_colour = colours[instance.clamp(min=0)]
    colour = torch.where((instance >= 0)[:, None], object_colour, floor_colour) * shading[:, None]
    colour = torch.where((instance == SKY)[:, None], _SKY_COLOUR.expand_as(colour), colour)
    colour = colour + config.pixel_noise * torch.from_numpy(rng.standard_normal(colour.shape))
    image = colour.clamp(0, 1).T.reshape(3, size, size)
    return image, instance.reshape(size, size)


def _sample_points(objects: list[_Primitive], intrinsic: Tensor, extrinsic: Tensor, config: PointCloudConfig,
                   rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """The depth sensor's points ``(N, 3)`` and their instance ids ``(N,)``: visible surfaces only."""
    uv = torch.from_numpy(rng.uniform(0, config.image_size, size=(config.num_rays, 2)))
    origin, directions = camera_rays(_depth_intrinsic(intrinsic, config), extrinsic, uv)
    distance, instance, _ = _trace(objects, origin, directions)
    points = origin + distance.clamp(max=1e6)[:, None] * directions
    near_floor = (instance == FLOOR) & (points[:, :2].norm(dim=1) < config.floor_radius)
    keep = (instance >= 0) | (near_floor & torch.from_numpy(rng.random(len(points)) < config.floor_keep))
    for index in range(len(objects)):
        mine = instance == index
        share = math.exp(rng.uniform(math.log(config.min_keep), 0.0))  # sparsity: log-uniform share kept
        keep &= ~mine | torch.from_numpy(rng.random(len(mine)) < share)
        if rng.random() < config.hole_probability and mine.any():
            centre = points[torch.nonzero(mine)[int(rng.integers(int(mine.sum())))]]
            keep &= ~(mine & ((points - centre).norm(dim=1) < config.hole_radius))
    points, instance = points[keep], instance[keep]
    chosen = rng.choice(len(points), size=config.num_points, replace=len(points) < config.num_points)
    chosen = torch.from_numpy(chosen)
    noise = config.point_noise * torch.from_numpy(rng.standard_normal((config.num_points, 3)))
    return points[chosen] + noise, instance[chosen]


def _depth_intrinsic(intrinsic: Tensor, config: PointCloudConfig) -> Tensor:
    """The depth sensor's K: the image camera's, with the focal length scaled (a wider field of view)."""
    depth = intrinsic.clone()
    depth[[0, 1], [0, 1]] *= config.depth_focal_scale
    return depth


def _scene(rng: np.random.Generator, config: PointCloudConfig) -> dict[str, Tensor]:
    objects = _place_objects(rng, config)
    jitter = torch.from_numpy(rng.uniform(-1, 1, size=(len(objects), 3))) * config.colour_jitter
    colours = (CLASS_COLOURS[[SHAPES.index(o.shape) for o in objects]] + jitter).clamp(0, 1)
    intrinsic = intrinsics(config.focal, config.image_size, config.image_size).double()
    extrinsic = _camera(rng, config)
    image, pixel_instance = _render(objects, colours, intrinsic, extrinsic, config, rng)
    points, point_instance = _sample_points(objects, intrinsic, extrinsic, config, rng)
    centres = torch.stack([o.centre_3d for o in objects])
    cameras = intrinsic.expand(len(objects), 3, 3), extrinsic.expand(len(objects), 3, 4)
    corners = project_points(torch.stack([o.box_corners() for o in objects]), *cameras)[..., :2]
    labels = {
        "object_class": torch.tensor([SHAPES.index(o.shape) for o in objects]),
        "object_centre": centres.float(),
        "object_centre_2d": project_points(centres[None], intrinsic[None], extrinsic[None])[0, :, :2].float(),
        "object_box_2d": torch.cat([corners.amin(1), corners.amax(1)], dim=1).clamp(0, config.image_size)
                         .float(),
        "object_points": torch.stack([(point_instance == i).sum() for i in range(len(objects))]),
        "object_pixels": torch.stack([(pixel_instance == i).sum() for i in range(len(objects))]),
    }
    return {"points": points.float(), "point_instance": point_instance.to(torch.int8),
            "image": (image * 255).round().to(torch.uint8), "pixel_instance": pixel_instance.to(torch.int8),
            "K": intrinsic.float(), "Rt": extrinsic.float(),
            "depth_K": _depth_intrinsic(intrinsic, config).float(),
            **{key: _pad(value) for key, value in labels.items()}}


def _pad(values: Tensor) -> Tensor:
    """Pad per-object labels to ``MAX_OBJECTS`` rows: class -1 marks a missing object, zeros elsewhere."""
    padding = torch.full((MAX_OBJECTS - len(values), *values.shape[1:]), -1 if values.ndim == 1 else 0,
                         dtype=values.dtype)
    return torch.cat([values, padding])


def validate_pointcloud(scenes: Mapping[str, Tensor]) -> None:
    """Check the keys and shapes of point-cloud + image scenes; raise naming what was expected and came."""
    expected = {"points", "point_instance", "image", "K", "Rt", "object_class", "object_centre"}
    missing = sorted(expected - set(scenes))
    if missing:
        raise KeyError(f"expected keys {sorted(expected)}, missing {missing}; got {sorted(scenes)}")
    points, image = scenes["points"], scenes["image"]
    if points.ndim != 3 or points.shape[-1] != 3 or len(points) == 0 or points.shape[1] == 0:
        raise ValueError(f"expected non-empty points of shape (n, N, 3), got {tuple(points.shape)}")
    if image.ndim != 4 or image.shape[1] != 3 or len(image) != len(points) or image.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images of shape ({len(points)}, 3, H, W), got {image.dtype} "
                         f"of shape {tuple(image.shape)}")
    if not torch.isfinite(points).all():
        raise ValueError("points hold NaN or inf values")
    classes = scenes["object_class"]
    if classes.ndim != 2 or len(classes) != len(points) or classes.max() >= len(SHAPES) or classes.min() < -1:
        raise ValueError(f"expected object_class (n, objects) in [-1, {len(SHAPES)}), got shape "
                         f"{tuple(classes.shape)}, range [{int(classes.min())}, {int(classes.max())}]")
