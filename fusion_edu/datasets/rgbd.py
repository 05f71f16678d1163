"""RGB-D scenes for semantic segmentation, built so that fusing the two modalities matters.

Each scene is a textured background on a tilted floor plane with 2-4 shapes (square, disc,
triangle, cross), labelled per pixel (background + 4 classes).  Every object draws one
*visibility* kind:

- ``both``: coloured in RGB and raised above the floor in depth;
- ``rgb_only``: a flat sticker, coloured in RGB but at floor depth (invisible in depth);
- ``depth_only``: camouflaged, exactly the background colour and texture in RGB, raised in depth.

Then each modality is corrupted in a few cells of a coarse grid, never the same cell in both:
*glare* saturates RGB to white, and depth gets *holes* (zeros, as a real sensor reports missing
depth) or *noise* (uniform garbage).  The corrupted pixels are returned as ground truth, so a
notebook can ask whether a fusion model replaces exactly the corrupted tokens (TokenFusion).
The layout of the returned dict is documented in ``data/README.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from einops import reduce
from torch import Tensor

from .cache import cached_split

__all__ = [
    "CLASSES",
    "SPLIT_SIZES",
    "VISIBILITY",
    "RGBDConfig",
    "corrupted_patches",
    "damage_scenes",
    "generate_rgbd_scenes",
    "load_rgbd_scenes",
    "object_visibility",
    "surface_normals",
    "validate_rgbd",
]

GENERATOR_VERSION = 2  # bump when the generator changes: cached sets become stale
CLASSES = ("background", "square", "disc", "triangle", "cross")
VISIBILITY = ("background", "both", "rgb_only", "depth_only")
SPLIT_SIZES = {"train": 4000, "val": 500, "test": 1000}
_PLACEMENT_TRIES = 50
_CROSS_ARM = 1 / 3  # half-width of a cross arm, as a share of the half-size


@dataclass(frozen=True)
class RGBDConfig:
    """Every knob of the generator; a cached set is reused only for the same config."""

    image_size: int = 32
    min_objects: int = 2
    max_objects: int = 4
    min_half_size: int = 5  # pixels from centre to edge
    max_half_size: int = 8
    min_separation: float = 0.8  # centres at least this share of the summed half-sizes apart
    visibility_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)  # both, rgb, depth only
    min_colour_distance: float = 0.35  # Euclidean, RGB in [0, 1]
    min_height: float = 0.12  # how far a depth-visible object stands above the floor
    max_height: float = 0.3
    rgb_noise: float = 0.04  # std of the per-pixel texture
    depth_noise: float = 0.01  # std of the depth sensor noise
    floor_depth: tuple[float, float] = (0.45, 0.75)
    floor_slope: float = 0.004  # per pixel, each axis
    corruption_cell: int = 8  # corruption happens on this grid (pixels)
    rgb_glare_cells: tuple[int, int] = (1, 2)  # inclusive range per image
    depth_bad_cells: tuple[int, int] = (1, 2)
    glare_level: float = 0.97

    def __post_init__(self) -> None:
        if self.image_size % self.corruption_cell != 0:
            raise ValueError(f"corruption_cell must divide image_size, got {self.corruption_cell}"
                             f" and {self.image_size}")
        if abs(sum(self.visibility_probs) - 1) > 1e-6:
            raise ValueError(f"visibility_probs must sum to 1, got {self.visibility_probs}")


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
    """Pixels of a shape centred at the origin; ``dx, dy`` are offsets from its centre."""
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "disc":
        return dx**2 + dy**2 <= half**2
    if shape == "triangle":  # apex up, base at the bottom
        return (dy >= -half) & (dy <= half) & (np.abs(dx) <= (dy + half) / 2)
    arm = half * _CROSS_ARM
    horizontal = (np.abs(dx) <= half) & (np.abs(dy) <= arm)
    vertical = (np.abs(dy) <= half) & (np.abs(dx) <= arm)
    return horizontal | vertical


def _place(rng: np.random.Generator, cfg: RGBDConfig, placed: list[tuple[float, float, int]]
           ) -> tuple[float, float, int] | None:
    """A centre and half-size that keep the object inside and apart from the others, or None."""
    for _ in range(_PLACEMENT_TRIES):
        half = int(rng.integers(cfg.min_half_size, cfg.max_half_size + 1))
        cx, cy = rng.integers(half, cfg.image_size - half, size=2)
        if all(np.hypot(cx - x, cy - y) >= cfg.min_separation * (half + h) for x, y, h in placed):
            return float(cx), float(cy), half
    return None


def _distinct_colour(rng: np.random.Generator, background: np.ndarray, min_distance: float
                     ) -> np.ndarray:
    while True:
        colour = rng.uniform(0.0, 1.0, size=3)
        if np.linalg.norm(colour - background) >= min_distance:
            return colour


def _corrupt(rng: np.random.Generator, cfg: RGBDConfig, rgb: np.ndarray, depth: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Glare on some RGB cells, holes or noise on other depth cells; returns both pixel masks."""
    size, cell = cfg.image_size, cfg.corruption_cell
    cells_per_side = size // cell
    order = rng.permutation(cells_per_side**2)  # distinct cells for the two modalities
    n_glare = int(rng.integers(cfg.rgb_glare_cells[0], cfg.rgb_glare_cells[1] + 1))
    n_bad = int(rng.integers(cfg.depth_bad_cells[0], cfg.depth_bad_cells[1] + 1))
    masks = []
    for cells in (order[:n_glare], order[n_glare:n_glare + n_bad]):
        mask = np.zeros((size, size), dtype=bool)
        for index in cells:
            row, col = divmod(int(index), cells_per_side)
            mask[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = True
        masks.append(mask)
    rgb_mask, depth_mask = masks
    rgb[:, rgb_mask] = cfg.glare_level + rng.normal(0, cfg.rgb_noise, size=(3, rgb_mask.sum()))
    if rng.random() < 0.5:
        depth[depth_mask] = 0.0  # holes: the sensor returns no depth
    else:
        depth[depth_mask] = rng.uniform(0.0, 1.0, size=depth_mask.sum())  # noise
    return rgb_mask, depth_mask


def _scene(rng: np.random.Generator, cfg: RGBDConfig) -> dict[str, np.ndarray]:
    size = cfg.image_size
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    background = rng.uniform(0.15, 0.85, size=3)
    colour_map = np.broadcast_to(background[:, None, None], (3, size, size)).copy()
    slope_x, slope_y = rng.uniform(-cfg.floor_slope, cfg.floor_slope, size=2)
    floor = rng.uniform(*cfg.floor_depth) + slope_x * (xs - size / 2) + slope_y * (ys - size / 2)
    depth = floor.copy()
    label = np.zeros((size, size), dtype=np.int64)
    visibility = np.zeros((size, size), dtype=np.uint8)
    instance = np.zeros((size, size), dtype=np.uint8)
    placed: list[tuple[float, float, int]] = []
    for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
        placement = _place(rng, cfg, placed)
        if placement is None:
            continue
        cx, cy, half = placement
        placed.append(placement)
        class_index = int(rng.integers(1, len(CLASSES)))
        kind = int(rng.choice(3, p=cfg.visibility_probs)) + 1
        mask = _shape_mask(CLASSES[class_index], xs - cx, ys - cy, half)
        # camouflage and flatness must also cover whatever an earlier object left under this one
        colour = background
        if VISIBILITY[kind] != "depth_only":
            colour = _distinct_colour(rng, background, cfg.min_colour_distance)
        colour_map[:, mask] = colour[:, None]
        height = 0.0
        if VISIBILITY[kind] != "rgb_only":
            height = rng.uniform(cfg.min_height, cfg.max_height)
        depth[mask] = floor[mask] - height
        label[mask], visibility[mask], instance[mask] = class_index, kind, len(placed)
    rgb = colour_map + rng.normal(0, cfg.rgb_noise, size=colour_map.shape)  # texture
    depth = depth + rng.normal(0, cfg.depth_noise, size=depth.shape)  # sensor noise
    rgb_corrupt, depth_corrupt = _corrupt(rng, cfg, rgb, depth)
    return {
        "rgb": np.clip(rgb, 0, 1), "depth": np.clip(depth, 0, 1)[None], "label": label,
        "visibility": visibility, "instance": instance,
        "rgb_corrupt": rgb_corrupt, "depth_corrupt": depth_corrupt,
    }


def generate_rgbd_scenes(num_scenes: int, seed: int | Sequence[int], config: RGBDConfig = RGBDConfig()
                         ) -> dict[str, Tensor]:
    """Generate ``num_scenes`` scenes deterministically from ``seed`` (no cache).

    Returns ``rgb (n 3 H W)`` and ``depth (n 1 H W)`` float32 in [0, 1], ``label (n H W)`` int64
    class indices, ``visibility (n H W)`` uint8 indices into ``VISIBILITY``, ``instance (n H W)``
    uint8 object ids (0 = background), and the boolean ``rgb_corrupt`` / ``depth_corrupt``
    pixel masks ``(n H W)``.
    """
    rng = np.random.default_rng(seed)
    scenes = [_scene(rng, config) for _ in range(num_scenes)]
    stacked = {key: np.stack([scene[key] for scene in scenes]) for key in scenes[0]}
    out = {key: torch.from_numpy(value) for key, value in stacked.items()}
    out["rgb"] = out["rgb"].float()
    out["depth"] = out["depth"].float()
    return out


def damage_scenes(scenes: Mapping[str, Tensor], cells: tuple[int, int], seed: int,
                  config: RGBDConfig = RGBDConfig()) -> dict[str, Tensor]:
    """The same undamaged ``scenes`` with damage drawn afresh, as the generator draws it: ``cells`` (fewest,
    most) glare cells in RGB and as many bad cells in depth per image, never the same cell in both, from a
    random stream of its own (``seed``).  Scenes generated without damage (``rgb_glare_cells`` and
    ``depth_bad_cells`` of ``(0, 0)``), damaged at growing ``cells``, test one set of scenes at growing
    damage; the generator's own damage rate draws from the scenes' stream, so another rate gives other
    scenes.  Labels, visibility and instances are unchanged."""
    validate_rgbd(scenes)
    if scenes["rgb_corrupt"].any() or scenes["depth_corrupt"].any():
        raise ValueError("expected undamaged scenes (generated with 0 damaged cells), got "
                         f"{int(scenes['rgb_corrupt'].flatten(1).any(1).sum())} images with glare and "
                         f"{int(scenes['depth_corrupt'].flatten(1).any(1).sum())} with bad depth")
    rng = np.random.default_rng(seed)
    damage = replace(config, rgb_glare_cells=cells, depth_bad_cells=cells)
    rgb = scenes["rgb"].double().numpy().copy()  # n 3 H W
    depth = scenes["depth"][:, 0].double().numpy().copy()  # n H W
    masks = [_corrupt(rng, damage, rgb[index], depth[index]) for index in range(len(rgb))]  # in place
    rgb_corrupt, depth_corrupt = (torch.from_numpy(np.stack(mask)) for mask in zip(*masks, strict=True))
    return {**scenes, "rgb": torch.from_numpy(np.clip(rgb, 0, 1)).float(),
            "depth": torch.from_numpy(np.clip(depth, 0, 1)[:, None]).float(),
            "rgb_corrupt": rgb_corrupt, "depth_corrupt": depth_corrupt}


NORMAL_PIXEL_SPACING = 0.05  # the width of one pixel in depth units, for the slopes of normals


def surface_normals(depth: Tensor) -> Tensor:
    """A third modality derived from depth: ``(n, 1, H, W)`` depth -> ``(n, 3, H, W)`` surface
    normals, encoded as normal maps are, (n + 1) / 2 in [0, 1].

    The normal of the surface z(x, y) is (-dz/dx, -dz/dy, 1), normalised, with the slopes taken
    by central differences (one-sided at the border) over ``NORMAL_PIXEL_SPACING``.  A depth
    hole or noise makes the normals of its cell (and its rim) wrong too: the damage is inherited.
    """
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(f"expected depth of shape (n, 1, H, W), got {tuple(depth.shape)}")
    dz_dy, dz_dx = torch.gradient(depth[:, 0] / NORMAL_PIXEL_SPACING, dim=(1, 2))
    normals = torch.stack([-dz_dx, -dz_dy, torch.ones_like(dz_dx)], dim=1)  # n 3 H W
    return (normals / normals.norm(dim=1, keepdim=True) + 1) / 2


def load_rgbd_scenes(split: str, seed: int = 0, num_scenes: int | None = None,
                     config: RGBDConfig = RGBDConfig()) -> dict[str, Tensor]:
    """The ``split`` ("train", "val" or "test") of the RGB-D scenes, from the cache under data/.

    ``num_scenes`` defaults to ``SPLIT_SIZES[split]``; each split has its own random stream, so
    splits never share a scene and a smaller set is not a prefix of a larger one's other split.
    """
    scenes = cached_split("rgbd", GENERATOR_VERSION, split, SPLIT_SIZES, seed, num_scenes, config,
                          generate_rgbd_scenes, "num_scenes")
    validate_rgbd(scenes)
    return scenes


def validate_rgbd(scenes: Mapping[str, Tensor]) -> None:
    """Check that ``scenes`` holds aligned ``rgb (n 3 H W)``, ``depth (n 1 H W)``, ``label (n H W)``.

    Raises an error naming what was expected and what came, so that a student's own RGB-D data
    (or a real dataset on Colab) fails early and clearly instead of broadcasting silently.
    """
    missing = sorted({"rgb", "depth", "label"} - set(scenes))
    if missing:
        raise KeyError(f"expected keys 'rgb', 'depth' and 'label', missing {missing}; "
                       f"got {sorted(scenes)}")
    rgb, depth, label = scenes["rgb"], scenes["depth"], scenes["label"]
    for name, tensor, channels in (("rgb", rgb, 3), ("depth", depth, 1)):
        if tensor.ndim != 4 or tensor.shape[1] != channels:
            raise ValueError(f"expected {name} of shape (n, {channels}, H, W), got "
                             f"{tuple(tensor.shape)}")
    if depth.shape[0] != rgb.shape[0] or depth.shape[2:] != rgb.shape[2:]:
        raise ValueError(f"rgb and depth must be aligned (same n, H, W): got rgb "
                         f"{tuple(rgb.shape)} and depth {tuple(depth.shape)}")
    expected_label = (rgb.shape[0], *rgb.shape[2:])
    if tuple(label.shape) != expected_label:
        raise ValueError(f"expected label of shape {expected_label} (n, H, W), got "
                         f"{tuple(label.shape)}")


def object_visibility(scenes: dict[str, Tensor]) -> Tensor:
    """The visibility kind (index into ``VISIBILITY``) of every object still visible in a scene,
    ``(num_objects,)``, read from the ``instance`` and ``visibility`` maps."""
    instance = scenes["instance"].long()
    keys = torch.arange(len(instance))[:, None, None] * (instance.max() + 1) + instance  # n H W
    foreground = instance > 0
    kinds = torch.zeros(int(keys.max()) + 1, dtype=torch.long)
    kinds[keys[foreground]] = scenes["visibility"][foreground].long()
    return kinds[torch.unique(keys[foreground])]


def corrupted_patches(pixel_mask: Tensor, patch_size: int, min_share: float = 0.5) -> Tensor:
    """Per-patch ground truth: ``(n, H, W)`` pixel mask -> ``(n, N)`` True where at least
    ``min_share`` of the patch's pixels are corrupted (token order row-major, as PatchEmbed)."""
    if pixel_mask.ndim != 3:
        raise ValueError(f"expected a pixel mask of shape (n, H, W), got {tuple(pixel_mask.shape)}")
    if pixel_mask.shape[-1] % patch_size or pixel_mask.shape[-2] % patch_size:
        raise ValueError(f"patch size {patch_size} does not divide the mask size "
                         f"{tuple(pixel_mask.shape[-2:])}")
    share = reduce(pixel_mask.float(), "n (h p1) (w p2) -> n (h w)", "mean", p1=patch_size,
                   p2=patch_size)
    return share >= min_share
