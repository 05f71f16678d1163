"""Multi-scale textured layouts for CrossViT (notebook 05): a label that needs a coarse layout *and*
a fine pattern, with the fine pattern provably out of the coarse view's sight.

Each 32x32 image is split into a lighter *region* and a darker background.  The region covers one
half of the image (``LAYOUTS``: left, right, top or bottom; its border jittered by a few pixels):
a coarse layout, cheap to see through large patches, but noisy pixel by pixel (the two colours are
close and the per-pixel noise is strong, so small patches must pool many tokens to tell them
apart).  The whole image carries one fine texture with a two-pixel period (``TEXTURES``: horizontal
stripes, vertical stripes or a checkerboard): visible at the scale of single pixels only.  The label,
``layout * len(TEXTURES) + texture`` (12 classes), needs both scales.

**Why the half-size view carries no texture at all.**  CrossViT's L-branch sees the image resampled
to half size (``img_scales``; bicubic, as timm).  Bicubic halving is a linear map H; applied to the
rows and columns, it takes an image X to H X H^T.  In the interior it sends a ``+1, -1, +1, ...``
alternation to zero, but at the image's edges, where it repeats the border pixel, it does not: a
plain stripe pattern leaks about 0.19 of its amplitude into the first and last coarse pixels, enough
for a probe to read the texture.  So the pattern's 1-D profile is the alternation *projected onto the
null space of H* (``texture_profile``): the closest profile to it that H sends to exactly zero.  It is
+-1 within 0.03 everywhere but the two pixels nearest each edge (1.16 and -0.82 there).
Every texture is built from that profile (stripes: the profile along one axis; the checkerboard: the
product of the two), so H sends each to zero.  The pixels are not clipped to [0, 1]: with clipping,
the image would no longer be colour + texture + noise, and H would see what clipping did to the
texture.  So the half-size view of an image is *exactly* (up to float rounding) the half-size view
of the same image without its texture: no probe, no L-branch, can read the texture from it
(``tests/test_multiscale.py`` checks both).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .cache import cached_split

__all__ = [
    "LAYOUTS",
    "MULTISCALE_SPLIT_SIZES",
    "TEXTURES",
    "MultiScaleConfig",
    "generate_multiscale_images",
    "halving_matrix",
    "load_multiscale_images",
    "texture_profile",
    "validate_multiscale",
]

GENERATOR_VERSION = 3  # bump when the generator changes: cached sets become stale
LAYOUTS = ("left", "right", "top", "bottom")  # where the region lies
TEXTURES = ("horizontal", "vertical", "checker")  # the fine pattern, period two pixels
MULTISCALE_SPLIT_SIZES = {"train": 3000, "val": 500, "test": 1000}


@dataclass(frozen=True)
class MultiScaleConfig:
    """Knobs of the generator; the defaults make the notebook's dataset."""

    image_size: int = 32
    border_jitter: int = 3  # pixels the region's border moves from the image's middle
    texture_amplitude: float = 0.2  # +- this around the local colour (times the profile, see texture_profile)
    noise: float = 0.3  # std of the per-pixel, per-channel noise
    background_colours: tuple[float, float] = (0.30, 0.48)  # each channel uniform in this range
    region_colours: tuple[float, float] = (0.52, 0.70)  # lighter than the background, every channel

    def __post_init__(self) -> None:
        if self.image_size < 4 * self.border_jitter or self.image_size % 2:
            raise ValueError(f"image_size must be even and at least 4 * border_jitter, got "
                             f"{self.image_size} and {self.border_jitter}")
        if self.background_colours[1] > self.region_colours[0]:
            raise ValueError(f"the region must be lighter than the background: expected "
                             f"background_colours below region_colours, got {self.background_colours} "
                             f"and {self.region_colours}")


def halving_matrix(size: int) -> Tensor:
    """H, ``(size/2, size)``: bicubic resampling of a length-``size`` signal to half its length, as
    ``F.interpolate(..., mode="bicubic", align_corners=False)`` computes it (border pixels repeated)."""
    columns = torch.eye(size, dtype=torch.float64).reshape(size, 1, size, 1)  # one unit signal per batch item
    halved = F.interpolate(columns, size=(size // 2, 1), mode="bicubic", align_corners=False)
    return halved.reshape(size, size // 2).T


@cache
def texture_profile(size: int) -> tuple[float, ...]:
    """The texture's 1-D profile: the alternation ``a = (+1, -1, +1, ...)`` projected onto the null space
    of the halving H, ``a - H^+ H a`` (H^+ the pseudo-inverse), so that ``H @ profile = 0``."""
    halving = halving_matrix(size)
    alternation = torch.tensor([(-1.0) ** index for index in range(size)], dtype=torch.float64)
    profile = alternation - torch.linalg.pinv(halving) @ (halving @ alternation)
    return tuple(profile.tolist())


def _texture(kind: int, size: int) -> np.ndarray:
    """The pattern of ``TEXTURES[kind]``, ``(size, size)``: the profile down the rows (horizontal stripes),
    along the columns (vertical stripes), or their product (the checkerboard)."""
    profile = np.asarray(texture_profile(size))
    flat = np.ones(size)
    rows, cols = np.outer(profile, flat), np.outer(flat, profile)
    return {0: rows, 1: cols, 2: rows * cols}[kind]


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
    pattern = cfg.texture_amplitude * _texture(texture, size)
    image = colour + pattern[None] + rng.normal(0, cfg.noise, (3, size, size))  # not clipped: see above
    return {"image": image.astype(np.float32),
            "label": np.int64(layout * len(TEXTURES) + texture),
            "layout": np.int64(layout), "texture": np.int64(texture), "region": region}


def generate_multiscale_images(num_images: int, seed: int | Sequence[int],
                               config: MultiScaleConfig = MultiScaleConfig()) -> dict[str, Tensor]:
    """``num_images`` images from ``seed`` (no cache): ``image (n 3 H W)`` float32 (colours in [0, 1] plus
    texture and noise, not clipped),
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
