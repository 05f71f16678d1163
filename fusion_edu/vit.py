"""A single-modal Vision Transformer, for classification or dense (segmentation) prediction.

Dosovitskiy et al. (ICLR 2021), Sec. 3.1, Eq. 1-4, built from ``fusion_edu.blocks``.  The
parameter names are timm's ``VisionTransformer``'s, so ``load_timm_weights`` brings timm's
pretrained weights in (TokenFusion's point: a fusion model inherits single-modal pretraining).

The dense head is the simplest one that predicts every pixel: each patch token is mapped by one
linear layer to the class logits of its P x P pixels (as SETR-naive / Segmenter's linear decoder),
so a pixel's prediction comes from the token that saw it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import timm
import torch
from einops import rearrange
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models import adapt_input_conv
from torch import Tensor, nn

from .blocks import (
    LAYER_NORM_EPS,
    Block,
    ModelOutput,
    PatchEmbed,
    init_vit_weights,
    select_modality,
    sincos_2d_position_embedding,
)

__all__ = ["DenseHead", "VisionTransformer", "load_timm_weights"]

NUM_PREFIX_TOKENS = 1  # the class token
POS_STD = 0.02  # timm's init std of the learned positional embedding and class token


class DenseHead(nn.Module):
    """Per-patch linear decoder: token ``(d,)`` -> logits of its P x P pixels.

    ``(b, N, d) -> (b, classes, H, W)``: Linear(d, P*P*classes), then the pixels are put back in
    place with ``b (h w) (p1 p2 c) -> b c (h p1) (w p2)``.
    """

    def __init__(self, embed_dim: int, num_classes: int, patch_size: int,
                 grid_size: tuple[int, int]) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid_size = grid_size
        self.proj = nn.Linear(embed_dim, patch_size * patch_size * num_classes)

    def forward(self, patch_tokens: Tensor) -> Tensor:
        pixels = self.proj(patch_tokens)  # b n (p1 p2 c)
        return rearrange(pixels, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)",
                         h=self.grid_size[0], p1=self.patch_size, p2=self.patch_size)


class VisionTransformer(nn.Module):
    """ViT: patch embedding, class token, positional embedding, pre-norm blocks, final norm, head.

    ``task="classification"`` reads the class token (Eq. 4); ``task="segmentation"`` decodes every
    patch token with a ``DenseHead``.  ``pos_embed`` is ``"learned"`` (timm's default, one vector
    per position including the class token's) or ``"sincos"`` (fixed 2-D sinusoids, zero for the
    class token).  The forward takes a tensor or a dict of named modalities (it reads
    ``inputs[modality]``) and returns a ``ModelOutput``.
    """

    def __init__(self, img_size: int = 32, patch_size: int = 4, in_chans: int = 3,
                 num_classes: int = 5, embed_dim: int = 64, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 pos_embed: Literal["learned", "sincos"] = "learned",
                 task: Literal["classification", "segmentation"] = "classification",
                 modality: str = "image") -> None:
        super().__init__()
        if task not in ("classification", "segmentation"):
            raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")
        if pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {pos_embed!r}")
        self.task = task
        self.modality = modality
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_positions = self.patch_embed.num_patches + NUM_PREFIX_TOKENS
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.randn(1, num_positions, embed_dim) * POS_STD)
        else:
            fixed = sincos_2d_position_embedding(*self.patch_embed.grid_size, embed_dim)
            cls_position = torch.zeros(NUM_PREFIX_TOKENS, embed_dim)
            self.register_buffer("pos_embed", torch.cat([cls_position, fixed])[None])
        self.pos_drop = nn.Dropout(drop_rate)
        drop_paths = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth rule
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rate)
            for rate in drop_paths
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        if task == "classification":
            self.head = nn.Linear(embed_dim, num_classes)
        else:
            self.head = DenseHead(embed_dim, num_classes, patch_size, self.patch_embed.grid_size)
        self.apply(init_vit_weights)
        nn.init.normal_(self.cls_token, std=1e-6)

    def patch_tokens(self, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
        """x_p E of Eq. 1 for this model's modality, ``(b, N, d)``."""
        return self.patch_embed(select_modality(inputs, self.modality))

    def embed(self, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
        """Eq. 1: z_0 = [x_class; x_p E] + E_pos, ``(b, 1 + N, d)``."""
        patches = self.patch_tokens(inputs)  # b n d
        cls = self.cls_token.expand(patches.shape[0], -1, -1)  # b 1 d
        return self.pos_drop(torch.cat([cls, patches], dim=1) + self.pos_embed)

    def forward_features(self, inputs: Tensor | Mapping[str, Tensor],
                         return_attention: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Eq. 1-4 up to the final LayerNorm: tokens ``(b, 1 + N, d)`` and, if asked, attention."""
        tokens = self.embed(inputs)
        attention = []
        for block in self.blocks:
            tokens, weights = block(tokens, return_attention=return_attention)
            if return_attention:
                attention.append(weights)
        return self.norm(tokens), attention

    def forward(self, inputs: Tensor | Mapping[str, Tensor],
                return_attention: bool = False) -> ModelOutput:
        tokens, attention = self.forward_features(inputs, return_attention)
        if self.task == "classification":
            logits = self.head(tokens[:, 0])  # class token, Eq. 4
        else:
            logits = self.head(tokens[:, NUM_PREFIX_TOKENS:])  # every patch token
        return ModelOutput(logits=logits, attention=attention if return_attention else None)


def load_timm_weights(model: VisionTransformer, source: str | nn.Module) -> list[str]:
    """Copy a timm ViT's weights into ``model``; return the names left as they were (the head).

    ``source`` is a timm model name (``"vit_tiny_patch16_224"``: downloads pretrained weights, so
    it needs internet) or a timm ``VisionTransformer`` instance.  Where the shapes differ only by
    image grid, patch size or input channels, the weights are adapted with timm's own tools:
    ``resample_abs_pos_embed`` (bicubic), ``resample_patch_embed`` (FlexiViT's pseudo-inverse
    resize) and ``adapt_input_conv`` (e.g. RGB -> 1-channel depth sums the colour filters).
    Any other mismatch (width, depth, heads) raises: it would not be the same network.
    """
    if isinstance(source, str):
        source = timm.create_model(source, pretrained=True)
    theirs = source.state_dict()
    ours = model.state_dict()
    adapted = {}
    for name, target in ours.items():
        if name.startswith("head."):
            continue
        if name not in theirs:
            raise KeyError(f"load_timm_weights: the source has no {name!r}; is its depth "
                           f"{len(model.blocks)} and does it use a class token?")
        adapted[name] = _adapt(name, theirs[name], target, model)
    extra = sorted(set(theirs) - set(ours) - {k for k in theirs if k.startswith("head.")})
    if extra:
        raise KeyError(f"load_timm_weights: the source has weights the model lacks: {extra[:5]}")
    model.load_state_dict(adapted, strict=False)
    return sorted(set(ours) - set(adapted))


def _adapt(name: str, weight: Tensor, target: Tensor, model: VisionTransformer) -> Tensor:
    """Resize one timm tensor to the shape ``model`` needs, or raise if it cannot be."""
    if name == "pos_embed" and weight.shape != target.shape:
        weight = resample_abs_pos_embed(weight, new_size=list(model.patch_embed.grid_size),
                                        num_prefix_tokens=NUM_PREFIX_TOKENS)
    if name == "patch_embed.proj.weight":
        patch = model.patch_embed.patch_size
        if weight.shape[-2:] != (patch, patch):
            weight = resample_patch_embed(weight, [patch, patch])
        if weight.shape[1] != target.shape[1]:
            weight = adapt_input_conv(target.shape[1], weight)
    if weight.shape != target.shape:
        raise ValueError(f"load_timm_weights: {name} has shape {tuple(weight.shape)} in the "
                         f"source and {tuple(target.shape)} in the model")
    return weight
