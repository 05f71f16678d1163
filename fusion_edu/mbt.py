"""MBT: Nagrani et al., "Attention Bottlenecks for Multimodal Fusion", NeurIPS 2021.

Video frames and an audio spectrogram, each tokenized ViT-style with its own positional embedding
(and, for the token classifier, its own CLS token), run through modality-specific transformer layers.
Layers before the **fusion layer** L_f are unimodal; from L_f on the modalities exchange information in one of
four ways (Sec. 3.2–3.3; ``FUSIONS``):

- ``"late"``: no cross-modal attention at all (the two streams meet only in the classifier);
- ``"vanilla"``: one self-attention over the concatenated tokens of both modalities (Sec. 3.2).
  The official code runs it with shared encoder weights, so this mode needs ``share_encoder``;
- ``"cross"``: each modality's own layer reads [the other modalities' tokens; its own tokens] as
  keys and values, with its own tokens as the queries (the official code's "modality-specific" full
  attention: scenic runs the layer on the whole sequence and drops the other modalities' outputs; the
  outputs kept are the same, and the FLOPs here are the ones the method needs);
- ``"bottleneck"`` (Sec. 3.3, Eqs. 8–9): B **bottleneck tokens** z_fsn are shared: each
  modality's layer runs on [its tokens; z_fsn], and the modalities' updated bottleneck tokens are
  **averaged**, z_fsn^{l+1} = mean_i ẑ_fsn,i^{l+1}.  All modalities update in parallel from the same
  z_fsn^l, as the official code does — not one after another as Eq. 8–9 may read.

Classification (Sec. 3.4): each modality's CLS token goes through one shared linear head; training
averages the modalities' losses, evaluation averages their logits.  ``classifier="gap"`` is the
official code's other option: no CLS tokens at all (scenic adds them only for "token"), and one head
on the mean of both modalities' tokens.  ``test_with_bottlenecks=False``
evaluates a bottleneck model with every layer unimodal (the official switch).  The official code
adds one bottleneck token when classifying from CLS tokens; we keep exactly B.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from .blocks import LAYER_NORM_EPS, Block, ModelOutput, PatchEmbed, init_vit_weights
from .datasets import MISSING
from .flops import count_flops
from .train import model_outputs
from .vit import POS_STD

__all__ = [
    "FUSIONS",
    "MBT",
    "MBTOutput",
    "TubeletEmbed",
    "bottleneck_attention_maps",
    "bottleneck_fusion_layer",
    "fusion_attention_mask",
    "fusion_layer_flops",
    "fusion_layer_step",
    "modality_accuracies",
]

FUSIONS = ("late", "vanilla", "cross", "bottleneck")
Fusion = Literal["late", "vanilla", "cross", "bottleneck"]
MODALITIES = ("frames", "spectrogram")  # the data keys the model reads
BOTTLENECK_STD = 0.02  # the official initialisation of the bottleneck tokens


class TubeletEmbed(nn.Module):
    """ViViT's tubelet embedding: non-overlapping t x p x p blocks of the clip, each projected to a
    token (a Conv3d with kernel = stride).  ``(b, T, c, H, W) -> (b, (T/t)(H/p)(W/p), d)``."""

    def __init__(self, num_frames: int, frame_size: int, tubelet: tuple[int, int], in_chans: int,
                 embed_dim: int) -> None:
        super().__init__()
        frames_per_token, patch = tubelet
        if num_frames % frames_per_token or frame_size % patch:
            raise ValueError(f"tubelets of {frames_per_token} frames x {patch}x{patch} pixels must tile "
                             f"the clip: got {num_frames} frames of {frame_size}x{frame_size}")
        self.expected = (num_frames, in_chans, frame_size, frame_size)
        self.grid_size = (num_frames // frames_per_token, frame_size // patch, frame_size // patch)  # t h w
        self.num_patches = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(frames_per_token, patch, patch),
                              stride=(frames_per_token, patch, patch))

    def forward(self, frames: Tensor) -> Tensor:
        if frames.ndim != 5 or tuple(frames.shape[1:]) != self.expected:
            raise ValueError(f"expected frames of shape (batch, {', '.join(map(str, self.expected))}) "
                             f"(time, channels, height, width), got {tuple(frames.shape)}")
        tokens = self.proj(rearrange(frames, "b t c h w -> b c t h w"))  # b d t' h' w'
        return rearrange(tokens, "b d t h w -> b (t h w) d")


def bottleneck_fusion_layer(layers: Mapping[str, Block], tokens: Mapping[str, Tensor],
                            bottleneck_tokens: Tensor, return_attention: bool = False
                            ) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor | None]]:
    """One bottleneck fusion layer (Eqs. 8–9, the official update):

        [x_i^{l+1}; ẑ_i] = Transformer_i([x_i^l; z_fsn^l])   for every modality i, in parallel
        z_fsn^{l+1} = mean_i ẑ_i

    ``tokens[m]`` ``(b, n_m, d)``, ``bottleneck_tokens`` ``(b, B, d)``.  Returns the new tokens, the
    new bottleneck tokens and, if asked, each modality's attention ``(b, h, n_m + B, n_m + B)``."""
    new_tokens, updated, attention = {}, [], {}
    for modality, x in tokens.items():
        out, attention[modality] = layers[modality](torch.cat([x, bottleneck_tokens], dim=1),
                                                    return_attention=return_attention)
        new_tokens[modality], bottleneck_update = out.split([x.shape[1], bottleneck_tokens.shape[1]], dim=1)
        updated.append(bottleneck_update)
    return new_tokens, torch.stack(updated).mean(0), attention


def fusion_layer_step(fusion: Fusion, layers: Mapping[str, Block], tokens: Mapping[str, Tensor],
                      bottleneck_tokens: Tensor | None = None, return_attention: bool = False
                      ) -> tuple[dict[str, Tensor], Tensor | None, dict[str, Tensor | None]]:
    """One layer of ``fusion`` (``"late"``: each modality alone; ``"vanilla"``: the first
    modality's layer, shared, over all tokens): the new tokens, the bottleneck tokens (updated by
    bottleneck fusion, passed through otherwise) and the attention weights."""
    if fusion == "bottleneck":
        return bottleneck_fusion_layer(layers, tokens, bottleneck_tokens, return_attention)
    if fusion == "vanilla":
        new_tokens, weights = _vanilla(next(iter(layers.values())), tokens, return_attention)
    elif fusion == "cross":
        new_tokens, weights = _cross(layers, tokens, return_attention)
    else:
        new_tokens, weights = _unimodal(layers, tokens, return_attention)
    return new_tokens, bottleneck_tokens, weights


def _unimodal(layers: Mapping[str, Block], tokens: Mapping[str, Tensor], return_attention: bool
              ) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
    """Each modality through its own layer, alone."""
    outputs = {m: layers[m](x, return_attention=return_attention) for m, x in tokens.items()}
    return {m: out for m, (out, _) in outputs.items()}, {m: w for m, (_, w) in outputs.items()}


def _vanilla(layer: Block, tokens: Mapping[str, Tensor], return_attention: bool
             ) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
    """One (shared) layer over the concatenation [x_frames; x_spectrogram] (Sec. 3.2)."""
    joint, weights = layer(torch.cat(list(tokens.values()), dim=1), return_attention=return_attention)
    pieces = joint.split([x.shape[1] for x in tokens.values()], dim=1)
    return dict(zip(tokens, pieces, strict=True)), {"joint": weights}


def _cross(layers: Mapping[str, Block], tokens: Mapping[str, Tensor], return_attention: bool
           ) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
    """Each modality's own layer reading [the other modalities' tokens; its own] as keys and values,
    with only its own tokens as queries: the outputs scenic keeps, without computing the ones it drops."""
    new_tokens, weights = {}, {}
    for modality, x in tokens.items():
        context = torch.cat([tokens[other] for other in tokens if other != modality], dim=1)  # b n_c d
        new_tokens[modality], weights[modality] = layers[modality](x, context=context,
                                                                   return_attention=return_attention)
    return new_tokens, weights


def fusion_attention_mask(fusion: Fusion, num_tokens: Mapping[str, int], num_bottlenecks: int = 0
                          ) -> Tensor:
    """Which token can read which in one fusion layer, ``(n, n)`` bool over the sequence
    [each modality's tokens in order; the bottleneck tokens]: row i, column j is True when token
    i's update depends on token j.  Late fusion is block-diagonal; vanilla and cross fusion let
    every modality token read every other; with bottlenecks a modality token reads its own
    modality and the bottlenecks, and the bottlenecks (updated in every modality's layer and
    averaged) read everything."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    bottlenecks = num_bottlenecks if fusion == "bottleneck" else 0
    sizes = [*num_tokens.values(), bottlenecks]
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))  # n: block index
    same_block = owner[:, None] == owner[None, :]
    if fusion in ("vanilla", "cross"):
        return torch.ones_like(same_block)
    if fusion == "late":
        return same_block
    is_bottleneck = owner == len(num_tokens)
    return same_block | is_bottleneck[None, :] | is_bottleneck[:, None]


class _FusionLayer(nn.Module):
    """One layer of ``fusion`` over given token counts, as a module whose FLOPs can be counted."""

    def __init__(self, fusion: Fusion, modalities: Sequence[str], num_bottlenecks: int, embed_dim: int,
                 num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.fusion = fusion
        self.layers = nn.ModuleDict({m: Block(embed_dim, num_heads, mlp_ratio) for m in modalities})
        self.bottleneck_tokens = torch.zeros(1, num_bottlenecks, embed_dim)

    def forward(self, tokens: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return fusion_layer_step(self.fusion, self.layers, tokens, self.bottleneck_tokens)[0]


def fusion_layer_flops(fusion: Fusion, num_tokens: Mapping[str, int], num_bottlenecks: int = 4,
                       embed_dim: int = 64, num_heads: int = 4, mlp_ratio: float = 2.0) -> int:
    """Forward FLOPs of one layer of ``fusion`` for one clip whose modalities hold ``num_tokens``
    tokens (CLS included), measured.  With n tokens a layer costs about 2 n d^2 (4 + 2 r) for its
    linear maps and 4 n^2 d for attention: vanilla fusion pays the attention on n_1 + n_2 tokens,
    bottleneck fusion on n_1 + B and n_2 + B, but runs the B bottleneck tokens through both
    modalities' linear maps, so it is cheaper only when the cross term n_1 n_2 outweighs that."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    layer = _FusionLayer(fusion, list(num_tokens), num_bottlenecks, embed_dim, num_heads, mlp_ratio)
    return count_flops(layer, {m: torch.zeros(1, n, embed_dim) for m, n in num_tokens.items()})


def bottleneck_attention_maps(attention: Mapping[str, Tensor], bottleneck_index: int,
                              token_grids: Mapping[str, tuple[int, ...]]) -> dict[str, dict[str, Tensor]]:
    """Where bottleneck token ``bottleneck_index`` looks, and who looks at it, in one bottleneck
    fusion layer of one clip (the notebook's widget).

    ``attention[m]`` is modality m's attention ``(heads, 1 + n_m + B, 1 + n_m + B)`` over
    [CLS; its n_m patch tokens; the B bottleneck tokens] (a model with the token classifier: under
    "gap" there is no CLS token, and ``bottleneck_explorer`` refuses such a model), ``token_grids[m]``
    the shape its patch tokens tile (frames ``(t, h, w)``, spectrogram ``(mel, time)``).  Per modality,
    averaged over heads: ``reads`` (the bottleneck's attention on each patch token, on the grid), ``read_by``
    (each patch token's attention on the bottleneck, on the grid), and the bottleneck's shares on
    the CLS token and on the bottleneck tokens, ``reads_cls`` and ``reads_bottlenecks``."""
    maps = {}
    for modality, grid in token_grids.items():
        weights = attention[modality]
        patches = math.prod(grid)
        num_bottlenecks = weights.shape[-1] - 1 - patches
        if weights.ndim != 3 or weights.shape[1] != weights.shape[2] or num_bottlenecks < 1:
            raise ValueError(f"expected {modality} attention (heads, n, n) over 1 + {patches} tokens and "
                             f"at least one bottleneck token, got {tuple(weights.shape)}")
        if not 0 <= bottleneck_index < num_bottlenecks:
            raise IndexError(f"bottleneck_index must lie in [0, {num_bottlenecks}), got {bottleneck_index}")
        mean = weights.detach().float().mean(0)  # n n
        row = 1 + patches + bottleneck_index  # the bottleneck token in the sequence
        maps[modality] = {"reads": mean[row, 1:1 + patches].reshape(grid),
                          "read_by": mean[1:1 + patches, row].reshape(grid),
                          "reads_cls": mean[row, 0], "reads_bottlenecks": mean[row, 1 + patches:].sum()}
    return maps


@dataclass
class MBTOutput(ModelOutput):
    """``attention[l]``: per layer, ``{modality: (b, h, n_q, n_k)}`` for the sequence that modality's
    layer attended over (``"joint"`` in vanilla fusion; in cross fusion the queries are the modality's
    own tokens, the keys all tokens); ``bottleneck_tokens``: ``(b, B, d)`` at the end."""

    bottleneck_tokens: Tensor | None = None


class MBT(nn.Module):
    """The audio-visual transformer of Sec. 3, small: frames as tubelets, the spectrogram as
    AST-style square patches (not overlapping; AST's are 16x16 at stride 10), ``depth`` layers per
    modality, fusion from ``fusion_layer`` on."""

    def __init__(self, num_frames: int = 4, frame_size: int = 32, frame_chans: int = 1,
                 tubelet: tuple[int, int] = (2, 8), spectrogram_size: int = 32, spectrogram_patch: int = 8,
                 num_classes: int = 4, embed_dim: int = 64, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 2.0, fusion: Fusion = "bottleneck", fusion_layer: int = 2,
                 num_bottlenecks: int = 4, share_encoder: bool = False,
                 classifier: Literal["token", "gap"] = "token", test_with_bottlenecks: bool = True) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if not 0 <= fusion_layer <= depth:
            raise ValueError(f"fusion_layer L_f must lie in [0, depth] = [0, {depth}], got {fusion_layer}")
        if fusion == "bottleneck" and num_bottlenecks < 1:
            raise ValueError(f"bottleneck fusion needs B >= 1 bottleneck tokens, got {num_bottlenecks}")
        if fusion == "vanilla" and not share_encoder:
            raise ValueError("vanilla fusion runs one layer over both modalities' tokens: it needs "
                             "share_encoder=True (as the official code); with separate weights use 'cross'")
        if classifier not in ("token", "gap"):
            raise ValueError(f"classifier must be 'token' or 'gap', got {classifier!r}")
        self.fusion, self.fusion_layer, self.classifier = fusion, fusion_layer, classifier
        self.test_with_bottlenecks = test_with_bottlenecks
        self.embeds = nn.ModuleDict({
            "frames": TubeletEmbed(num_frames, frame_size, tubelet, frame_chans, embed_dim),
            "spectrogram": PatchEmbed(spectrogram_size, spectrogram_patch, 1, embed_dim),
        })
        prefix = 1 if classifier == "token" else 0  # a CLS token per modality, for the token classifier only
        self.cls_tokens = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, embed_dim))
                                            for m in MODALITIES}) if prefix else None
        self.pos_embeds = nn.ParameterDict({
            m: nn.Parameter(torch.randn(1, prefix + embed.num_patches, embed_dim) * POS_STD)
            for m, embed in self.embeds.items()})
        def encoder() -> nn.ModuleList:
            return nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))

        shared = encoder()
        self.layers = nn.ModuleDict({m: shared if share_encoder else encoder() for m in MODALITIES})
        self.bottleneck_tokens = None  # z_fsn, learned: (1, B, d)
        if fusion == "bottleneck":
            self.bottleneck_tokens = nn.Parameter(torch.randn(1, num_bottlenecks, embed_dim) * BOTTLENECK_STD)
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)  # one final norm, as the official code
        self.head = nn.Linear(embed_dim, num_classes)  # shared by the modalities
        self.apply(init_vit_weights)

    def extra_repr(self) -> str:
        return (f"fusion={self.fusion!r}, fusion_layer={self.fusion_layer}, classifier={self.classifier!r}, "
                f"test_with_bottlenecks={self.test_with_bottlenecks}")

    @property
    def token_grids(self) -> dict[str, tuple[int, ...]]:
        """The shape each modality's patch tokens tile: frames ``(t, h, w)``, spectrogram ``(mel, time)``."""
        return {m: tuple(embed.grid_size) for m, embed in self.embeds.items()}

    def embed(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each modality's ``[CLS; tokens] + positions``, ``(b, 1 + n_m, d)`` (no CLS under "gap")."""
        missing = [m for m in MODALITIES if m not in inputs]
        if missing:
            raise KeyError(f"MBT reads {list(MODALITIES)}; missing {missing}, got keys {sorted(inputs)}")
        tokens = {}
        for m in MODALITIES:
            patches = self.embeds[m](inputs[m])  # b n_m d
            if self.cls_tokens is not None:
                patches = torch.cat([self.cls_tokens[m].expand(len(patches), -1, -1), patches], dim=1)
            tokens[m] = patches + self.pos_embeds[m]
        return tokens

    def fuses_at(self, layer: int) -> bool:
        """Whether ``layer`` exchanges information across modalities in this forward."""
        if self.fusion == "late" or layer < self.fusion_layer:
            return False
        return self.fusion != "bottleneck" or self.training or self.test_with_bottlenecks

    def forward(self, inputs: Mapping[str, Tensor], return_attention: bool = False) -> MBTOutput:
        tokens = self.embed(inputs)
        bottleneck = None
        if self.bottleneck_tokens is not None:
            bottleneck = self.bottleneck_tokens.expand(len(tokens["frames"]), -1, -1)  # b B d
        attention = []
        for index in range(len(self.layers["frames"])):
            layers = {m: self.layers[m][index] for m in MODALITIES}
            fusion = self.fusion if self.fuses_at(index) else "late"
            tokens, bottleneck, weights = fusion_layer_step(fusion, layers, tokens, bottleneck,
                                                            return_attention)
            attention.append(weights)
        tokens = {m: self.norm(x) for m, x in tokens.items()}
        return self._classify(tokens, attention if return_attention else None, bottleneck)

    def _classify(self, tokens: dict[str, Tensor], attention: list | None, bottleneck: Tensor | None
                  ) -> MBTOutput:
        if self.classifier == "gap":
            logits = self.head(torch.cat(list(tokens.values()), dim=1).mean(1))
            return MBTOutput(logits=logits, attention=attention, bottleneck_tokens=bottleneck)
        modality_logits = {m: self.head(x[:, 0]) for m, x in tokens.items()}
        return MBTOutput(logits=torch.stack(list(modality_logits.values())).mean(0), attention=attention,
                         modality_logits=modality_logits, mean_modality_loss=True,
                         bottleneck_tokens=bottleneck)



def modality_accuracies(model: MBT, clips: Mapping[str, Tensor], device: torch.device | None = None
                        ) -> dict[str, float]:
    """Accuracy on ``clips`` of the averaged logits (``"fused"``), of each modality's own logits, and
    of the averaged logits on the clips that lost each modality (keys of ``MISSING``: ``"none"``,
    ``"dark"``, ``"silent"``; ``clips["missing"]`` indexes them).  Needs CLS-token classification."""
    if model.classifier != "token":
        raise ValueError(f"per-modality accuracies need classifier='token', got {model.classifier!r}")
    hits: dict[str, list[Tensor]] = {}
    for batch, output in model_outputs(model, clips, device):
        correct = {key: (logits.argmax(1) == batch["label"]).float().cpu()
                   for key, logits in {"fused": output.logits, **output.modality_logits}.items()}
        for key, values in correct.items():
            hits.setdefault(key, []).append(values)
        for index, missing in enumerate(MISSING):
            hits.setdefault(missing, []).append(correct["fused"][batch["missing"].cpu() == index])
    return {key: torch.cat(values).mean().item() for key, values in hits.items()}
