"""CrossViT: Chen et al., "CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image
Classification", ICCV 2021.

Two branches see the same image through different patch sizes: the S-branch through small
patches (many tokens, narrow), the L-branch through large patches (few tokens, wider and deeper).
Each has its own CLS token and positional embedding.  The multi-scale encoder stacks K blocks;
each runs every branch's transformer layers and then *fuses* the branches (Sec. 3.3, Fig. 3):

- ``"cross_attention"`` (the paper's choice, Sec. 3.4): the CLS token of one branch, projected by
  f to the other branch's width, is the only query over [CLS; the other branch's patch tokens];
  the result is added to it, projected back by g, and re-attached to its own patch tokens.  One
  query: linear, not quadratic, in the number of tokens;
- ``"all_attention"``: every token of both branches, projected to a common width, in one
  self-attention, then projected back;
- ``"class_token"``: the CLS tokens, projected to a common width, summed and projected back;
- ``"pairwise"``: as class-token fusion, and each patch token also summed with the tokens at the
  same place in the other branch (its grid resized to match);
- ``"none"``, the control: no fusion at all.  The two branches train jointly, and only their heads'
  logits are averaged; what a fusion adds over this comes from the exchange and the fusion's own layers.

The official code (IBM/CrossViT) and timm implement cross-attention only; the other three follow
the paper's Fig. 3 and its equations, with f and g the same projections as in cross-attention
(LayerNorm, GELU, Linear, as in the official code) and the common width the widest branch's.

Where the official and timm code stack more than one cross-attention layer in a fusion, each layer
returns only the CLS token, so from the second layer on the CLS token attends only to itself.  We
re-attach the other branch's patch tokens before every layer; ``reattach_patches=False`` gives the
reference behaviour (the timm equivalence test uses it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .blocks import (
    LAYER_NORM_EPS,
    Attention,
    Block,
    ModelOutput,
    PatchEmbed,
    init_vit_weights,
    select_modality,
)
from .flops import count_flops
from .vit import POS_STD, VisionTransformer

__all__ = [
    "FUSIONS",
    "NO_FUSION",
    "AllAttentionFusion",
    "ClassTokenFusion",
    "CrossAttention",
    "CrossAttentionBlock",
    "CrossAttentionFusion",
    "CrossViT",
    "CrossViTOutput",
    "MultiScaleBlock",
    "PairwiseFusion",
    "SingleBranchViT",
    "branch_view",
    "fusion_flops",
    "load_timm_crossvit",
    "projection",
    "single_branch",
]

FUSIONS = ("cross_attention", "all_attention", "class_token", "pairwise")  # the paper's Fig. 3
NO_FUSION = "none"  # the control: two branches trained together, logits averaged, nothing exchanged
Fusion = Literal["cross_attention", "all_attention", "class_token", "pairwise", "none"]


def projection(in_dim: int, out_dim: int) -> nn.Sequential:
    """f or g of the paper: the official LayerNorm, GELU, Linear, from one branch's width to another's."""
    return nn.Sequential(nn.LayerNorm(in_dim, eps=LAYER_NORM_EPS), nn.GELU(), nn.Linear(in_dim, out_dim))


class CrossAttention(nn.Module):
    """Sec. 3.4, the cross-attention equations: the CLS token is the only query,

        q = x'_cls W_q,   k = x' W_k,   v = x' W_v,   A = softmax(q k^T / sqrt(C / h)),   CA(x') = A v

    over ``x' = [f(x_cls); x_patch of the other branch]`` ``(b, 1 + n, C)``, so the CLS token also
    attends to itself.  Returns ``(b, 1, C)`` (after the output projection) and, if asked, the
    weights ``(b, h, 1, 1 + n)``; otherwise ``F.scaled_dot_product_attention`` computes it.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"cross-attention width must be divisible by num_heads, got {dim} and "
                             f"{num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.wq = nn.Linear(dim, dim, bias=qkv_bias)
        self.wk = nn.Linear(dim, dim, bias=qkv_bias)
        self.wv = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        q = rearrange(self.wq(x[:, :1]), "b one (h e) -> b h one e", h=self.num_heads)  # the CLS query
        k = rearrange(self.wk(x), "b n (h e) -> b h n e", h=self.num_heads)
        v = rearrange(self.wv(x), "b n (h e) -> b h n e", h=self.num_heads)
        if return_attention:
            weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # b h 1 n
            out = weights @ v
        else:
            weights, out = None, F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h one e -> b one (h e)")), weights


class CrossAttentionBlock(nn.Module):
    """y_cls = f(x_cls) + CA(LN([f(x_cls); x_patch])): a residual on the CLS token only, no MLP."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = CrossAttention(dim, num_heads, qkv_bias)

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        attended, weights = self.attn(self.norm1(x), return_attention)
        return x[:, :1] + attended, weights


class CrossAttentionFusion(nn.Module):
    """One direction of cross-attention fusion: branch i's CLS token reads branch j's patches.

    z_cls^i = g(y_cls),  y_cls = f(x_cls^i) + CA(LN([f(x_cls^i); x_patch^j]))  (``depth`` such layers)
    """

    def __init__(self, dim: int, other_dim: int, num_heads: int, depth: int = 1,
                 reattach_patches: bool = True) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"a cross-attention fusion needs at least one layer, got depth {depth}")
        self.reattach_patches = reattach_patches
        self.f = projection(dim, other_dim)
        self.layers = nn.ModuleList(CrossAttentionBlock(other_dim, num_heads) for _ in range(depth))
        self.g = projection(other_dim, dim)

    def forward(self, cls_token: Tensor, other_patches: Tensor, return_attention: bool = False
                ) -> tuple[Tensor, list[Tensor | None]]:
        """``cls_token`` ``(b, 1, d_i)``, ``other_patches`` ``(b, n_j, d_j)`` -> ``(b, 1, d_i)``."""
        y, weights = self.f(cls_token), []
        for index, layer in enumerate(self.layers):
            sees_patches = index == 0 or self.reattach_patches
            y, layer_weights = layer(torch.cat([y, other_patches], dim=1) if sees_patches else y,
                                     return_attention)
            weights.append(layer_weights)
        return self.g(y), weights


def _cls_and_patches(tokens: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    return [t[:, :1] for t in tokens], [t[:, 1:] for t in tokens]


class AllAttentionFusion(nn.Module):
    """Fig. 3(a): every token of both branches, projected by f^i to a common width, in one
    self-attention, o = y + MSA(LN(y)) with y = [f^1(x^1); f^2(x^2)], then z^i = g^i(o^i).
    Quadratic in the total number of tokens.  (From the paper: the official code has no such fusion.)"""

    def __init__(self, dims: Sequence[int], num_heads: int) -> None:
        super().__init__()
        common = max(dims)
        self.f = nn.ModuleList(projection(d, common) for d in dims)
        self.norm = nn.LayerNorm(common, eps=LAYER_NORM_EPS)
        self.attn = Attention(common, num_heads)  # MSA only: the paper's all-attention has no MLP
        self.g = nn.ModuleList(projection(common, d) for d in dims)

    def forward(self, tokens: Sequence[Tensor], return_attention: bool = False
                ) -> tuple[list[Tensor], list[Tensor | None]]:
        projected = [f(t) for f, t in zip(self.f, tokens, strict=True)]
        y = torch.cat(projected, dim=1)  # b (n1 + n2 + 2) d
        attended, weights = self.attn(self.norm(y), return_attention=return_attention)
        outputs = (y + attended).split([t.shape[1] for t in tokens], dim=1)
        return [g(o) for g, o in zip(self.g, outputs, strict=True)], [weights]


class ClassTokenFusion(nn.Module):
    """Fig. 3(c): z^i = [g^i(sum_j f^j(x_cls^j)); x_patch^i], the CLS tokens summed at a common width.
    (From the paper: the official code has no such fusion.)"""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        common = max(dims)
        self.f = nn.ModuleList(projection(d, common) for d in dims)
        self.g = nn.ModuleList(projection(common, d) for d in dims)

    def fused_cls(self, cls_tokens: Sequence[Tensor]) -> list[Tensor]:
        summed = sum(f(c) for f, c in zip(self.f, cls_tokens, strict=True))  # b 1 common
        return [g(summed) for g in self.g]

    def forward(self, tokens: Sequence[Tensor], return_attention: bool = False
                ) -> tuple[list[Tensor], list[Tensor | None]]:
        cls_tokens, patches = _cls_and_patches(tokens)
        fused = self.fused_cls(cls_tokens)
        return [torch.cat([c, p], dim=1) for c, p in zip(fused, patches, strict=True)], []


class PairwiseFusion(ClassTokenFusion):
    """Fig. 3(b): CLS tokens fused as in class-token fusion, and every patch token summed with the
    tokens at the same place in the other branch, whose grid is resized (bilinear) to match:
    z_patch^i = g^i(sum_j f^j(resize_i(x_patch^j))).  (From the paper: no official counterpart.)"""

    def forward(self, tokens: Sequence[Tensor], return_attention: bool = False
                ) -> tuple[list[Tensor], list[Tensor | None]]:
        cls_tokens, patches = _cls_and_patches(tokens)
        fused_cls = self.fused_cls(cls_tokens)
        outputs = []
        for index, target in enumerate(patches):
            grid = int(target.shape[1] ** 0.5)
            summed = sum(f(_resize_grid(p, grid)) for f, p in zip(self.f, patches, strict=True))
            outputs.append(torch.cat([fused_cls[index], self.g[index](summed)], dim=1))
        return outputs, []


def _resize_grid(patches: Tensor, grid: int) -> Tensor:
    """``(b, h w, d)`` patch tokens on a square grid -> ``(b, grid grid, d)``, bilinear."""
    side = int(patches.shape[1] ** 0.5)
    if side == grid:
        return patches
    image = rearrange(patches, "b (h w) d -> b d h w", h=side)
    resized = F.interpolate(image, size=(grid, grid), mode="bilinear", align_corners=False)
    return rearrange(resized, "b d h w -> b (h w) d")


class MultiScaleBlock(nn.Module):
    """One of the K multi-scale blocks: each branch's transformer layers, then the fusion."""

    def __init__(self, dims: Sequence[int], depths: Sequence[int], num_heads: Sequence[int],
                 mlp_ratios: Sequence[float], fusion: Fusion = "cross_attention", cross_depth: int = 1,
                 reattach_patches: bool = True) -> None:
        super().__init__()
        self.fusion_kind = fusion
        self.branches = nn.ModuleList(
            nn.ModuleList(Block(d, h, r) for _ in range(n))
            for d, n, h, r in zip(dims, depths, num_heads, mlp_ratios, strict=True))
        if fusion == "cross_attention":
            self.fusion = nn.ModuleList(
                CrossAttentionFusion(dims[i], dims[1 - i], num_heads[1 - i], cross_depth, reattach_patches)
                for i in range(2))
        elif fusion == "all_attention":
            self.fusion = AllAttentionFusion(dims, num_heads[int(dims[1] > dims[0])])
        elif fusion == "class_token":
            self.fusion = ClassTokenFusion(dims)
        elif fusion == "pairwise":
            self.fusion = PairwiseFusion(dims)
        elif fusion != NO_FUSION:
            raise ValueError(f"fusion must be one of {(*FUSIONS, NO_FUSION)}, got {fusion!r}")

    def forward(self, tokens: Sequence[Tensor], return_attention: bool = False
                ) -> tuple[list[Tensor], list]:
        """``tokens[i]`` ``(b, 1 + n_i, d_i)`` -> the same shapes, and the fusion's attention."""
        outputs = []
        for branch, x in zip(self.branches, tokens, strict=True):
            for block in branch:
                x, _ = block(x)
            outputs.append(x)
        if self.fusion_kind == NO_FUSION:
            return outputs, []
        if self.fusion_kind != "cross_attention":
            return self.fusion(outputs, return_attention)
        fused, attention = [], []
        for i, direction in enumerate(self.fusion):
            cls_token, weights = direction(outputs[i][:, :1], outputs[1 - i][:, 1:], return_attention)
            fused.append(torch.cat([cls_token, outputs[i][:, 1:]], dim=1))
            attention.append(weights)
        return fused, attention


@dataclass
class CrossViTOutput(ModelOutput):
    """``branch_logits[i]`` ``(b, classes)``; ``fusion_attention[k]`` per multi-scale block: for
    cross-attention, per direction i a list (one per layer) of ``(b, h, 1, 1 + n_j)`` weights."""

    branch_logits: list[Tensor] = field(default_factory=list)
    fusion_attention: list | None = None


class CrossViT(nn.Module):
    """The dual-branch multi-scale ViT.  Branch 0 is the S-branch (``patch_sizes[0]``, the smaller
    patches), branch 1 the L-branch, as in timm.  ``img_scales`` lets a branch see the image
    resampled (timm's ``img_scale``; the official models feed 240 and 224 pixels).  ``depth``
    lists, per multi-scale block, the layers of branch 0, of branch 1 and of each cross-attention
    fusion (timm's layout; timm's 0 for the last means one layer).  The prediction averages the
    two branches' heads on their CLS tokens (Sec. 3.2)."""

    def __init__(self, img_size: int = 32, patch_sizes: Sequence[int] = (4, 8), in_chans: int = 3,
                 num_classes: int = 10, embed_dims: Sequence[int] = (48, 96),
                 depth: Sequence[Sequence[int]] = ((1, 2, 1),) * 3, num_heads: Sequence[int] = (3, 3),
                 mlp_ratios: Sequence[float] = (2.0, 2.0), fusion: Fusion = "cross_attention",
                 reattach_patches: bool = True, img_scales: Sequence[float] = (1.0, 1.0),
                 modality: str = "image") -> None:
        super().__init__()
        if len(patch_sizes) != 2 or len(embed_dims) != 2 or len(num_heads) != 2:
            raise ValueError(f"CrossViT has two branches: expected two patch sizes, widths and head "
                             f"counts, got {list(patch_sizes)}, {list(embed_dims)}, {list(num_heads)}")
        for width, heads in zip(embed_dims, num_heads, strict=True):
            if width % heads != 0:
                raise ValueError(f"each branch's width must be divisible by its head count, got "
                                 f"width {width} with {heads} heads")
        self.modality = modality
        self.img_size = img_size
        self.branch_sizes = [int(scale * img_size) for scale in img_scales]  # each branch's input size
        self.patch_embeds = nn.ModuleList(
            PatchEmbed(size, p, in_chans, d)
            for size, p, d in zip(self.branch_sizes, patch_sizes, embed_dims, strict=True))
        self.cls_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, 1, d)) for d in embed_dims)
        self.pos_embeds = nn.ParameterList(
            nn.Parameter(torch.randn(1, 1 + e.num_patches, d) * POS_STD)
            for e, d in zip(self.patch_embeds, embed_dims, strict=True))
        self.blocks = nn.ModuleList(
            MultiScaleBlock(embed_dims, stage[:2], num_heads, mlp_ratios, fusion, max(stage[2], 1),
                            reattach_patches)
            for stage in depth)
        self.norms = nn.ModuleList(nn.LayerNorm(d, eps=LAYER_NORM_EPS) for d in embed_dims)
        self.heads = nn.ModuleList(nn.Linear(d, num_classes) for d in embed_dims)
        for token in self.cls_tokens:
            nn.init.trunc_normal_(token, std=POS_STD)
        self.apply(init_vit_weights)

    def embed(self, images: Tensor) -> list[Tensor]:
        """Each branch's ``[CLS; patch tokens] + positions``, ``(b, 1 + n_i, d_i)``."""
        tokens = []
        for size, patch_embed, cls_token, pos in zip(self.branch_sizes, self.patch_embeds, self.cls_tokens,
                                                     self.pos_embeds, strict=True):
            patches = patch_embed(branch_view(images, self.img_size, size))
            tokens.append(torch.cat([cls_token.expand(len(patches), -1, -1), patches], dim=1) + pos)
        return tokens

    def forward(self, inputs: Tensor | Mapping[str, Tensor], return_attention: bool = False
                ) -> CrossViTOutput:
        tokens = self.embed(select_modality(inputs, self.modality))
        attention = []
        for block in self.blocks:
            tokens, block_attention = block(tokens, return_attention)
            attention.append(block_attention)
        branch_logits = [head(norm(t[:, 0])) for head, norm, t in
                         zip(self.heads, self.norms, tokens, strict=True)]
        return CrossViTOutput(logits=torch.stack(branch_logits).mean(0), branch_logits=branch_logits,
                              fusion_attention=attention if return_attention else None)


def branch_view(images: Tensor, img_size: int, size: int) -> Tensor:
    """A branch's view of ``(b, c, img_size, img_size)`` images: bicubic resampling to ``size``
    (as timm and the official code), or the images themselves.  (The multi-scale dataset's texture is
    built so that halving this way sends it to zero: ``datasets.multiscale``.)"""
    if images.ndim != 4 or tuple(images.shape[-2:]) != (img_size, img_size):
        raise ValueError(f"expected images of shape (batch, channels, {img_size}, {img_size}), "
                         f"got {tuple(images.shape)}")
    if size == img_size:
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)


def fusion_flops(fusion: Fusion, num_patches: Sequence[int], embed_dims: Sequence[int] = (48, 96),
                 num_heads: Sequence[int] = (3, 3)) -> int:
    """Forward FLOPs of one fusion alone (no transformer layers), for one image whose branches
    hold ``num_patches`` patch tokens (plus a CLS token each).  Cross-attention grows linearly in
    the token count (one query per direction), all-attention quadratically."""
    block = MultiScaleBlock(embed_dims, (0, 0), num_heads, (1.0, 1.0), fusion)
    tokens = [torch.zeros(1, 1 + n, d) for n, d in zip(num_patches, embed_dims, strict=True)]
    return count_flops(block, tokens)


class SingleBranchViT(VisionTransformer):
    """One CrossViT branch on its own: a ViT (the paper's single-branch DeiT baseline) with the
    branch's patch size, width, heads and total depth, seeing the image at the branch's scale."""

    def __init__(self, img_size: int = 32, img_scale: float = 1.0, **vit_options: object) -> None:
        super().__init__(img_size=int(img_scale * img_size), **vit_options)
        self.full_size = img_size

    def patch_tokens(self, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
        images = select_modality(inputs, self.modality)
        return self.patch_embed(branch_view(images, self.full_size, self.patch_embed.img_size))


def single_branch(branch: int, img_size: int = 32, patch_sizes: Sequence[int] = (4, 8),
                  in_chans: int = 3, num_classes: int = 10, embed_dims: Sequence[int] = (48, 96),
                  depth: Sequence[Sequence[int]] = ((1, 2, 1),) * 3, num_heads: Sequence[int] = (3, 3),
                  mlp_ratios: Sequence[float] = (2.0, 2.0), img_scales: Sequence[float] = (1.0, 1.0),
                  modality: str = "image", **fusion_options: object) -> SingleBranchViT:
    """Branch ``branch`` (0: S, 1: L) of the CrossViT these arguments build, alone: the same
    arguments as ``CrossViT`` (its fusion options are ignored), no fusion, one head."""
    if branch not in (0, 1):
        raise ValueError(f"CrossViT has branches 0 (S) and 1 (L), got {branch}")
    return SingleBranchViT(img_size, img_scales[branch], patch_size=patch_sizes[branch],
                           in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dims[branch],
                           depth=sum(stage[branch] for stage in depth), num_heads=num_heads[branch],
                           mlp_ratio=mlp_ratios[branch], modality=modality)


_TIMM_RENAMES = (  # timm CrossVit state_dict name -> ours (cross-attention fusion)
    (r"^cls_token_(\d)$", r"cls_tokens.\1"),
    (r"^pos_embed_(\d)$", r"pos_embeds.\1"),
    (r"^patch_embed\.(\d)\.", r"patch_embeds.\1."),
    (r"^norm\.(\d)\.", r"norms.\1."),
    (r"^head\.(\d)\.", r"heads.\1."),
    (r"^blocks\.(\d+)\.blocks\.", r"blocks.\1.branches."),
    (r"^blocks\.(\d+)\.projs\.(\d)\.", r"blocks.\1.fusion.\2.f."),
    (r"^blocks\.(\d+)\.revert_projs\.(\d)\.", r"blocks.\1.fusion.\2.g."),
    (r"^blocks\.(\d+)\.fusion\.(\d)\.(\d+)\.", r"blocks.\1.fusion.\2.layers.\3."),  # several layers
    (r"^blocks\.(\d+)\.fusion\.(\d)\.(norm1|attn)\.", r"blocks.\1.fusion.\2.layers.0.\3."),  # one layer
)


def load_timm_crossvit(model: CrossViT, timm_model: nn.Module) -> None:
    """Copy a timm ``CrossVit`` (same configuration, cross-attention fusion) into ``model``.
    Raises if a tensor has no counterpart or a different shape."""
    state = {}
    for name, tensor in timm_model.state_dict().items():
        for pattern, replacement in _TIMM_RENAMES:
            name = re.sub(pattern, replacement, name)
        state[name] = tensor
    ours = model.state_dict()
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    if missing or unexpected:
        raise KeyError(f"timm's CrossVit does not map onto this model: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    mismatched = [(n, tuple(t.shape), tuple(ours[n].shape)) for n, t in state.items()
                  if t.shape != ours[n].shape]
    if mismatched:
        raise ValueError(f"shapes differ (name, timm, ours): {mismatched[:5]}")
    model.load_state_dict(state)
