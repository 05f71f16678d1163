"""Synthetic datasets, generated deterministically and cached under data/ (see data/README.md)."""

from .cache import cache_dir, cached
from .rgbd import (
    CLASSES,
    SPLIT_SIZES,
    VISIBILITY,
    RGBDConfig,
    corrupted_patches,
    generate_rgbd_scenes,
    load_rgbd_scenes,
    object_visibility,
    surface_normals,
    validate_rgbd,
)

__all__ = [
    "CLASSES",
    "SPLIT_SIZES",
    "VISIBILITY",
    "RGBDConfig",
    "cache_dir",
    "cached",
    "corrupted_patches",
    "generate_rgbd_scenes",
    "load_rgbd_scenes",
    "object_visibility",
    "surface_normals",
    "validate_rgbd",
]
