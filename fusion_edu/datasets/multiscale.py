"""Multi-scale textured layouts for CrossViT (notebook 05): a label that needs a coarse layout *and*
a fine pattern.

Each 32x32 image is split into a lighter *region* and a darker background.  The region covers one
half of the image (``LAYOUTS``: left, right, top or bottom; its border jittered by a few pixels):
a coarse layout, cheap to see through large patches, but noisy pixel by pixel (the two colours are
close and the per-pixel noise is strong, so small patches must pool many tokens to tell them
apart).  The whole image, bar a thin frame, carries one fine texture with a two-pixel period
(``TEXTURES``: horizontal stripes, vertical stripes or a checkerboard): visible at the scale of
single pixels only.  Resampled to half size (bicubic, as CrossViT's ``img_scales`` does) a
two-pixel period averages to zero, so a half-resolution branch cannot see the texture at all; the
frame keeps the image's edges, where resampling clamps, from leaking it.  The label —
``layout * len(TEXTURES) + texture``, 12 classes — needs both scales.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .cache import cached_split

__all__ = [
    "LAYOUTS",
    "MULTISCALE_SPLIT_SIZES",
    "TEXTURES",
    "MultiScaleConfig",
    "generate_multiscale_images",
    "load_multiscale_images",
    "validate_multiscale",
]

GENERATOR_VERSION = 2  # bump when the generator changes: cached sets become stale
LAYOUTS = ("left", "right", "top", "bottom")  # where the region lies
TEXTURES = ("horizontal", "vertical", "checker")  # the fine pattern, period two pixels
MULTISCALE_SPLIT_SIZES = {"train": 3000, "val": 500, "test": 1000}


@dataclass(frozen=True)
class MultiScaleConfig:
    """Knobs of the generator; the defaults make the notebook's dataset."""

    image_size: int = 32
    border_jitter: int = 3  # pixels the region's border moves from the image's middle
    texture_amplitude: float = 0.2  # +- this around the local colour
    texture_frame: int = 2  # untextured pixels along each edge
    noise: float = 0.3  # std of the per-pixel, per-channel noise
    background_colours: tuple[float, float] = (0.30, 0.48)  # each channel uniform in this range
    region_colours: tuple[float, float] = (0.52, 0.70)  # lighter than the background, every channel

    def __post_init__(self) -> None:
        if self.image_size < 4 * self.border_jitter or self.image_size % 2:
            raise ValueError(f"image_size must be even and at least 4 * border_jitter, got "
                             f"{self.image_size} and {self.border_jitter}")
        if not 0 <= 2 * self.texture_frame < self.image_size:
            raise ValueError(f"texture_frame must lie in [0, image_size / 2), got {self.texture_frame} "
                             f"for image_size {self.image_size}")
        if self.background_colours[1] > self.region_colours[0]:
            raise ValueError(f"the region must be lighter than the background: expected "
                             f"background_colours below region_colours, got {self.background_colours} "
                             f"and {self.region_colours}")


def _texture(kind: int, size: int, frame: int) -> np.ndarray:
    """The +-1 pattern of ``TEXTURES[kind]``, ``(size, size)``, zero on a ``frame`` along the edges."""
    rows, cols = np.mgrid[0:size, 0:size]
    parity = {0: rows, 1: cols, 2: rows + cols}[kind] % 2
    inside = np.zeros((size, size), dtype=bool)
    inside[frame:size - frame, frame:size - frame] = True
    return np.where(inside, 2.0 * parity - 1.0, 0.0)


def _region_mask(layout: int, size: int, border: int) -> np.ndarray:
    rows, cols = np.mgrid[0:size, 0:size]
    return {0: cols < border, 1: cols >= border, 2: rows < border, 3: rows >= border}[layout]


def _image(rng: np.random.Generator, cfg: MultiScaleConfig) -> dict[str, np.ndarray]:
    size = cfg.image_size
    layout, texture = int(rng.integers(len(LAYOUTS))), int(rng.integers(len(TEXTURES)))
    border = size // 2 + int(rng.integers(-cfg.border_jitter, cfg.border_jitter + 1))
    region = _region_mask(layout, size, border)
    background_colour = rng.uniform(*cfg.background_colours, size=3)
    region_colour = rng.uniform(*cfg.region_colours, size=3)
    colour = np.where(region[None], region_colour[:, None, None], background_colour[:, None, None])
    pattern = cfg.texture_amplitude * _texture(texture, size, cfg.texture_frame)
    image = colour + pattern[None] + rng.normal(0, cfg.noise, (3, size, size))
    return {"image": np.clip(image, 0, 1).astype(np.float32),
            "label": np.int64(layout * len(TEXTURES) + texture),
            "layout": np.int64(layout), "texture": np.int64(texture), "region": region}


def generate_multiscale_images(num_images: int, seed: int | Sequence[int],
                               config: MultiScaleConfig = MultiScaleConfig()) -> dict[str, Tensor]:
    """``num_images`` images from ``seed`` (no cache): ``image (n 3 H W)`` float32 in [0, 1],
    ``label``, ``layout`` and ``texture`` ``(n,)`` int64, and the ``region`` mask ``(n H W)`` bool."""
    rng = np.random.default_rng(seed)
    images = [_image(rng, config) for _ in range(num_images)]
    return {key: torch.from_numpy(np.stack([image[key] for image in images])) for key in images[0]}


def load_multiscale_images(split: str, seed: int = 0, num_images: int | None = None,
                           config: MultiScaleConfig = MultiScaleConfig()) -> dict[str, Tensor]:
    """The ``split`` ("train", "val" or "test") of the multi-scale images, from the cache under data/."""
    images = cached_split("multiscale", GENERATOR_VERSION, split, MULTISCALE_SPLIT_SIZES, seed,
                          num_images, config, generate_multiscale_images, "num_images")
    validate_multiscale(images)
    return images


def validate_multiscale(images: Mapping[str, Tensor]) -> None:
    """Check ``image (n 3 H W)`` and ``label (n,)`` with labels in range; raise naming what came."""
    missing = sorted({"image", "label"} - set(images))
    if missing:
        raise KeyError(f"expected keys 'image' and 'label', missing {missing}; got {sorted(images)}")
    image, label = images["image"], images["label"]
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"expected image of shape (n, 3, H, W), got {tuple(image.shape)}")
    if tuple(label.shape) != (image.shape[0],):
        raise ValueError(f"expected label of shape ({image.shape[0]},), got {tuple(label.shape)}")
    num_classes = len(LAYOUTS) * len(TEXTURES)
    if len(label) and not (0 <= int(label.min()) and int(label.max()) < num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(label.min())}, "
                         f"{int(label.max())}]")
