"""The Vision Transformer parts every paper in this repo reuses.

Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021), Sec. 3.1, Eq. 1-4:

    z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos        (Eq. 1)  PatchEmbed + positional embedding
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}                      (Eq. 2)  Block, first half
    z_l  = MLP(LN(z'_l)) + z'_l                            (Eq. 3)  Block, second half
    y    = LN(z_L^0)                                       (Eq. 4)  final norm, then a head

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``blocks.0.attn.qkv`` ...)
so timm's pretrained single-modal weights load straight into every backbone built from these parts.
Mlp and DropPath come from timm: they are not the lesson here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "Mlp",
    "ModelOutput",
    "PatchEmbed",
    "aligned_modalities",
    "init_vit_weights",
    "select_modality",
    "sincos_2d_position_embedding",
]

LAYER_NORM_EPS = 1e-6  # timm's ViT LayerNorm epsilon; kept so pretrained weights behave identically
SINCOS_TEMPERATURE = 10_000.0  # the "10000" of Vaswani et al.'s sinusoids


@dataclass
class ModelOutput:
    """What every model's forward returns: the logits plus the internals the widgets show.

    ``aux_loss`` is an extra term the training loop adds to the task loss (TokenFusion's l1
    sparsity, for instance); ``attention`` holds one ``(b, heads, n, n)`` tensor per layer when
    the forward was asked for it.  A fusion model whose ``logits`` ensemble per-modality
    predictions returns those in ``modality_logits``: the training loop puts the task loss on
    each of them as well as on the ensemble (as TokenFusion's official training does), or, with
    ``mean_modality_loss``, on each of them only, averaged (MBT's training).  ``class_weights``, when
    set, weight the cross-entropy per class (LAVT's [0.9, 1.1] for background and target).
    """

    logits: Tensor
    attention: list[Tensor] | None = None
    aux_loss: Tensor | None = None
    modality_logits: dict[str, Tensor] | None = None
    mean_modality_loss: bool = False
    class_weights: tuple[float, ...] | None = None


def aligned_modalities(inputs: Mapping[str, Tensor], modalities: Sequence[str]) -> list[Tensor]:
    """``[inputs[m] for m in modalities]``, checked to be images of one batch and one size.

    Pixel-aligned fusion (adding or stacking aligned tokens) is only meaningful when every
    modality has the same ``(b, _, H, W)``; anything else raises, naming every shape.
    """
    if len(modalities) < 2:
        raise ValueError(f"fusion needs at least two modalities, got {list(modalities)}")
    images = [select_modality(inputs, name) for name in modalities]
    shapes = {name: tuple(image.shape) for name, image in zip(modalities, images, strict=True)}
    if any(image.ndim != 4 for image in images) or len(
            {(image.shape[0], *image.shape[2:]) for image in images}) != 1:
        raise ValueError(f"expected aligned images (batch, channels, H, W) with the same batch, H "
                         f"and W for every modality, got {shapes}")
    return images


def select_modality(inputs: Tensor | Mapping[str, Tensor], modality: str) -> Tensor:
    """Return ``inputs[modality]`` from a dict of named modalities (a bare tensor passes through)."""
    if isinstance(inputs, Tensor):
        return inputs
    if modality not in inputs:
        raise KeyError(
            f"expected modality {modality!r} in the inputs, got keys {sorted(inputs)}"
        )
    return inputs[modality]


class PatchEmbed(nn.Module):
    """Split an image into P x P patches and project each to a D-dim token: x_p^i E of Eq. 1.

    A linear map of a flattened patch is exactly a convolution with kernel = stride = P, which is
    how timm (and we) compute it.  ``(b, c, H, W) -> (b, N, d)`` with ``N = (H/P) (W/P)``.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(
                f"patch size must divide the image size: got image size {img_size} and "
                f"patch size {patch_size} ({img_size} % {patch_size} = {img_size % patch_size})"
            )
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        expected = (self.in_chans, self.img_size, self.img_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"expected images of shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(channels, height, width), got {tuple(images.shape)}"
            )
        patches = self.proj(images)  # b d h w
        return rearrange(patches, "b d h w -> b (h w) d")


def sincos_2d_position_embedding(grid_h: int, grid_w: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine positional embedding, ``(grid_h * grid_w, dim)``.

    Half of the channels encode the row, half the column, each with the 1-D sinusoids of
    Vaswani et al. (2017, Sec. 3.5): PE(pos, 2i) = sin(pos / T^(2i/d')), PE(pos, 2i+1) = cos(...),
    with d' = dim / 2 per axis (as in MAE and big_vision).  Token order is row-major (h w).
    """
    if dim % 4 != 0:
        raise ValueError(f"sin-cos 2-D embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / SINCOS_TEMPERATURE ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    row_angles = rows.flatten()[:, None] * omega[None, :]  # (h w) d/4
    col_angles = cols.flatten()[:, None] * omega[None, :]  # (h w) d/4
    embedding = torch.cat(
        [row_angles.sin(), row_angles.cos(), col_angles.sin(), col_angles.cos()], dim=1
    )
    return embedding.float()


class Attention(nn.Module):
    """Multi-head self-attention, MSA of Eq. 2 (Vaswani et al. 2017, Eq. 1):

        Attention(Q, K, V) = softmax(Q K^T / sqrt(d_head)) V,   [q; k; v] = z U_qkv

    Uses ``F.scaled_dot_product_attention`` (fused kernels) unless the weights are asked for,
    in which case it computes the softmax explicitly and returns it, ``(b, heads, n_q, n_k)``.
    ``attn_mask`` is a boolean ``(n_q, n_k)`` or ``(b, 1, n_q, n_k)`` mask, True where a query
    may attend.  ``context (b, n_c, d)``, if given, joins the keys and values only: the queries
    (and the outputs) are x's n tokens, the keys and values [context; x]'s n_c + n.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed dim must be divisible by num_heads, got {dim} and {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, return_attention: bool = False,
                context: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        q, k, v = self._queries_keys_values(x, context)  # b h n_q e, b h n_k e, b h n_k e
        if return_attention:
            logits = (q * self.scale) @ k.transpose(-2, -1)  # b h n_q n_k
            if attn_mask is not None:
                logits = logits.masked_fill(~attn_mask, float("-inf"))
            weights = logits.softmax(dim=-1)
            out = self.attn_drop(weights) @ v
        else:
            weights = None
            dropout = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        out = rearrange(out, "b h n e -> b n (h e)")
        return self.proj_drop(self.proj(out)), weights

    def _queries_keys_values(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """[q; k; v] = z U_qkv; with a context, U_qkv split: q from x alone, k and v from [context; x]."""
        if context is None:
            return rearrange(self.qkv(x), "b n (three h e) -> three b h n e", three=3, h=self.num_heads)
        dim = x.shape[-1]
        weight_q, weight_kv = self.qkv.weight.split([dim, 2 * dim])
        bias_q, bias_kv = (None, None) if self.qkv.bias is None else self.qkv.bias.split([dim, 2 * dim])
        q = rearrange(F.linear(x, weight_q, bias_q), "b n (h e) -> b h n e", h=self.num_heads)
        k, v = rearrange(F.linear(torch.cat([context, x], dim=1), weight_kv, bias_kv),
                         "b n (two h e) -> two b h n e", two=2, h=self.num_heads)
        return q, k, v


class Block(nn.Module):
    """Pre-norm transformer layer, Eq. 2-3: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, return_attention: bool = False,
                attention_scale: Tensor | None = None, context: Tensor | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """``attention_scale (b n)``, if given, multiplies each token's attention update:
        x + s · MSA(LN(x)), TokenFusion's Eq. 4 in its official form.  ``context (b n_c d)``, if
        given, is read as keys and values beside x (normalised by the same LN) but not updated:
        only x's tokens come out."""
        normed_context = None if context is None else self.norm1(context)
        attended, weights = self.attn(self.norm1(x), attn_mask, return_attention, normed_context)
        if attention_scale is not None:
            attended = attended * attention_scale[..., None]  # b n d
        x = x + self.drop_path1(attended)  # Eq. 2
        x = x + self.drop_path2(self.mlp(self.norm2(x)))  # Eq. 3
        return x, weights


def init_vit_weights(module: nn.Module) -> None:
    """timm's default ViT initialisation: truncated normal (std 0.02) Linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_in = module.in_channels * math.prod(module.kernel_size)
        nn.init.trunc_normal_(module.weight, std=1.0 / math.sqrt(fan_in))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
