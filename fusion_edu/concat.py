"""The fusion baselines TokenFusion is measured against (Wang et al., CVPR 2022, Sec. 3.1).

- ``TokenConcatFusion``: *alignment-agnostic* early fusion, as ViLT (Kim et al., ICML 2021) fuses
  words and patches: every modality is tokenised on its own (its own patch embedding, its own
  positional embedding, a learned modality-type embedding), the token sequences are concatenated
  along the token axis, ``[CLS; e^1; e^2]`` (ViLT's concatenation: TokenFusion's Sec. 3.1 describes
  it in words, with no equation), and one shared transformer attends over all of them.  Nothing tells
  the model that token i of RGB and token i of depth show the same place: it must learn that from data.
- ``InputFusion``: *alignment-aware* fusion of the inputs (TokenFusion's Eq. 2-3 with the
  projection h = identity): aligned tokens are summed, e = e^1 + e^2, one token per position.
  With linear patch embeddings, summing the per-modality tokens x^1 E_1 + x^2 E_2 is exactly one
  patch embedding of the channel-stacked image, [x^1, x^2] [E_1; E_2], so that is how it is
  computed (and a test checks the two agree).  Concatenating the two tokens by channel and
  projecting back to D is the same function class again.
- ``LateFusion``: single-modal models run side by side, their predictions combined by a
  ``LearnedEnsemble``, as the paper's ensemble baselines.

Each forward takes a dict of named modalities and returns a ``ModelOutput`` whose ``logits`` is the
ensemble and whose ``modality_logits`` holds each modality's own prediction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .blocks import (
    LAYER_NORM_EPS,
    Block,
    ModelOutput,
    PatchEmbed,
    aligned_modalities,
    init_vit_weights,
    select_modality,
)
from .vit import NUM_PREFIX_TOKENS, POS_STD, DenseHead, VisionTransformer

__all__ = ["InputFusion", "LateFusion", "LearnedEnsemble", "TokenConcatFusion",
           "cross_modal_attention"]


class LearnedEnsemble(nn.Module):
    """Prediction = sum_m softmax(alpha)_m * logits_m, with learned alpha (one per modality).

    As in the official TokenFusion code, the per-modality logits are *detached* here: alpha learns
    only how to weigh the modalities, and each modality's head is trained by its own loss.
    """

    def __init__(self, modalities: Sequence[str]) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.alpha = nn.Parameter(torch.zeros(len(self.modalities)))

    def weights(self) -> dict[str, float]:
        """softmax(alpha) by modality, for reading off how much each modality counts."""
        return dict(zip(self.modalities, self.alpha.softmax(0).tolist(), strict=True))

    def forward(self, logits: Mapping[str, Tensor]) -> Tensor:
        if list(logits) != self.modalities:
            raise KeyError(f"expected logits for {self.modalities} in that order, got {list(logits)}")
        weights = self.alpha.softmax(0)
        return sum(w * logits[m].detach() for w, m in zip(weights, self.modalities, strict=True))


class TokenConcatFusion(nn.Module):
    """Alignment-agnostic token concatenation into one shared transformer (ViLT-style).

    ``modalities`` maps each modality's name to its channel count, e.g. ``{"rgb": 3, "depth": 1}``.
    Tokens: ``[CLS; E_1 x^1 + P_1 + t_1; E_2 x^2 + P_2 + t_2]`` with per-modality positional
    embeddings P_m and modality-type embeddings t_m; ``(b, 1 + M N, d)`` through the shared blocks,
    then split back into each modality's N tokens for that modality's dense head.
    """

    def __init__(self, modalities: Mapping[str, int], img_size: int = 32, patch_size: int = 4,
                 num_classes: int = 5, embed_dim: int = 64, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if len(modalities) < 2:
            raise ValueError(f"fusion needs at least two modalities, got {list(modalities)}")
        self.modalities = list(modalities)
        self.patch_embeds = nn.ModuleDict(
            {m: PatchEmbed(img_size, patch_size, c, embed_dim) for m, c in modalities.items()})
        self.num_patches = self.patch_embeds[self.modalities[0]].num_patches  # N per modality
        num_patches, grid = self.num_patches, self.patch_embeds[self.modalities[0]].grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embeds = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(1, num_patches, embed_dim) * POS_STD) for m in modalities})
        self.modality_embed = nn.Parameter(torch.randn(len(modalities), embed_dim) * POS_STD)
        drop_paths = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, drop_path=rate)
                                    for rate in drop_paths)
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.heads = nn.ModuleDict(
            {m: DenseHead(embed_dim, num_classes, patch_size, grid) for m in modalities})
        self.ensemble = LearnedEnsemble(self.modalities)
        self.apply(init_vit_weights)
        nn.init.normal_(self.cls_token, std=1e-6)

    def embed(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """``[CLS; E_1 x^1 + P_1 + t_1; ...; E_M x^M + P_M + t_M]``, ``(b, 1 + M N, d)``."""
        sequences = [self.patch_embeds[m](select_modality(inputs, m)) + self.pos_embeds[m]
                     + self.modality_embed[i] for i, m in enumerate(self.modalities)]  # M x (b n d)
        cls = self.cls_token.expand(sequences[0].shape[0], -1, -1)
        return torch.cat([cls, *sequences], dim=1)

    def forward(self, inputs: Mapping[str, Tensor], return_attention: bool = False) -> ModelOutput:
        tokens = self.embed(inputs)  # b (1 + M n) d
        attention = []
        for block in self.blocks:
            tokens, weights = block(tokens, return_attention=return_attention)
            attention.append(weights)
        tokens = self.norm(tokens)[:, NUM_PREFIX_TOKENS:]
        per_modality = tokens.split(self.num_patches, dim=1)  # M x (b n d)
        logits = {m: self.heads[m](t) for m, t in zip(self.modalities, per_modality, strict=True)}
        return ModelOutput(logits=self.ensemble(logits), modality_logits=logits,
                           attention=attention if return_attention else None)


class InputFusion(VisionTransformer):
    """Alignment-aware input fusion (Eq. 2-3, h = identity): one token per aligned position,
    e = x^1 E_1 + x^2 E_2, computed as one patch embedding of the channel-stacked modalities.

    A ``VisionTransformer`` in every other respect; ``modalities`` maps names to channel counts.
    """

    def __init__(self, modalities: Mapping[str, int], **vit_kwargs) -> None:
        if len(modalities) < 2:
            raise ValueError(f"fusion needs at least two modalities, got {list(modalities)}")
        super().__init__(in_chans=sum(modalities.values()), modality="+".join(modalities),
                         **vit_kwargs)
        self.modalities = list(modalities)

    def patch_tokens(self, inputs: Mapping[str, Tensor]) -> Tensor:
        stacked = torch.cat(aligned_modalities(inputs, self.modalities), dim=1)  # b (c1 + c2) H W
        return self.patch_embed(stacked)


class LateFusion(nn.Module):
    """Single-modal models side by side, combined by a ``LearnedEnsemble`` of their predictions."""

    def __init__(self, models: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if len(models) < 2:
            raise ValueError(f"fusion needs at least two modalities, got {list(models)}")
        self.models = nn.ModuleDict(models)
        self.ensemble = LearnedEnsemble(list(models))

    def forward(self, inputs: Mapping[str, Tensor], return_attention: bool = False) -> ModelOutput:
        if return_attention:
            raise ValueError("late fusion has no attention across modalities; ask each model in "
                             "LateFusion.models for its own attention")
        logits = {m: model(inputs).logits for m, model in self.models.items()}
        return ModelOutput(logits=self.ensemble(logits), modality_logits=logits)


def cross_modal_attention(attention: Sequence[Tensor], num_patches: int, source: int = 0,
                          target: int = 1) -> tuple[list[float], list[float]]:
    """Does token concat learn the alignment?  Per layer, from ``TokenConcatFusion``'s attention:

    - the attention mass a token of modality ``source`` puts on all tokens of modality ``target``;
    - the share of that mass on its *aligned partner* (the target token at the same position);
      uniform reading would give 1 / N.

    ``attention`` is one ``(b, heads, 1 + M N, 1 + M N)`` tensor per layer (class token first).
    """
    rows = slice(NUM_PREFIX_TOKENS + source * num_patches, NUM_PREFIX_TOKENS + (source + 1) * num_patches)
    columns = slice(NUM_PREFIX_TOKENS + target * num_patches,
                    NUM_PREFIX_TOKENS + (target + 1) * num_patches)
    mass, partner_share = [], []
    for weights in attention:
        to_target = weights[:, :, rows, columns].float()  # b h N N
        mass.append(to_target.sum(-1).mean().item())
        partner = to_target.diagonal(dim1=-2, dim2=-1) / to_target.sum(-1)  # b h N
        partner_share.append(partner.mean().item())
    return mass, partner_share
