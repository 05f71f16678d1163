"""Synthetic datasets, generated deterministically and cached under data/ (see data/README.md)."""

from .cache import cache_dir, cached
from .multiscale import (
    LAYOUTS,
    MULTISCALE_SPLIT_SIZES,
    TEXTURES,
    MultiScaleConfig,
    generate_multiscale_images,
    load_multiscale_images,
    validate_multiscale,
)
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
    "LAYOUTS",
    "MULTISCALE_SPLIT_SIZES",
    "SPLIT_SIZES",
    "TEXTURES",
    "VISIBILITY",
    "MultiScaleConfig",
    "RGBDConfig",
    "cache_dir",
    "cached",
    "corrupted_patches",
    "generate_multiscale_images",
    "generate_rgbd_scenes",
    "load_multiscale_images",
    "load_rgbd_scenes",
    "object_visibility",
    "surface_normals",
    "validate_multiscale",
    "validate_rgbd",
]
