"""TokenFusion: Wang et al., "Multimodal Token Fusion for Vision Transformers", CVPR 2022.

Homogeneous (pixel-aligned) modalities, one shared transformer run once per modality.  Before each
layer l a small MLP scores every token of every modality, s^l(e) in [0, 1]; the scores multiply the
attention, so that they receive gradient (Eq. 4; the official code multiplies its output); an l1
penalty pushes them towards zero (Eq. 5); and a token whose score falls below theta is *substituted*
by the aligned token of another modality (Eq. 6), so that an uninformative token (glare, a depth
hole) is replaced by one that still sees the scene.  Residual Positional Alignment re-adds the
positional embedding before every layer (Sec. 3.3).

Where the paper is vague this module follows the official code (yikaiw/TokenFusion, semantic
segmentation), and says so where it does:

- the score predictor is LayerNorm, Linear(d, d), GELU, Linear(d, d/2), GELU, Linear(d/2, d/4),
  GELU, Linear(d/4, 2), log-softmax; the score is the softmax's first entry;
- one predictor per stage and modality (our ViT has a single stage, so one per modality, applied
  before every layer; ``predictor_per_layer=True`` gives the paper's s^l, one per layer);
- the l1 term is lambda * sum |s| over every token, image, layer and modality (a *sum*, so lambda's
  scale depends on the number of tokens and the batch size); theta = 0.02;
- the official code multiplies the scores into the attention *output*, s * MSA(LN(e))
  (``score_at="output"``); the paper's Eq. 4 as written multiplies them into its input, MSA(LN(e) * s)
  (``score_at="input"``; the official ``Block`` keeps this line commented out);
- the official code substitutes the *scored attention outputs* inside the attention block
  (``placement="attention"``); the paper's Eq. 6 substitutes the layer *inputs*
  (``placement="input"``): the scores still read the tokens with this layer's positional embedding,
  the substitute is the donor's token without it, and RPA then adds the *receiving* modality's
  embedding (from the second layer on, the donor's stream also carries the stop-gradient copies that
  earlier layers added); ``PAPER_FORM`` combines the two literal forms.  With ``score_at="input"`` a
  score near 0 does not silence a token: its query, key and value fall to the biases and it still
  receives a full attention output.  The paper does not say which score a substituted input carries
  into Eq. 4; here it is the receiving token's own (below theta), so under ``PAPER_FORM`` a substitute
  enters the attention scaled nearly to zero and reaches the layer through the residual stream;
- shared attention and MLP weights with modality-specific LayerNorms (``share_weights=False`` gives
  each modality its own layers), and the prediction is a learned ensemble of the per-modality heads.

Where the official code has no counterpart, this module follows the paper, and says so: RPA (the
official SegFormer backbone has no positional embedding) and the pre-allocation of Eq. 7 for more
than two modalities (the official exchange handles two).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from .blocks import (
    LAYER_NORM_EPS,
    Attention,
    Mlp,
    ModelOutput,
    PatchEmbed,
    aligned_modalities,
    init_vit_weights,
)
from .concat import LearnedEnsemble
from .train import model_outputs
from .vit import NUM_PREFIX_TOKENS, POS_STD, DenseHead, VisionTransformer

__all__ = [
    "DEFAULT_THRESHOLD",
    "PAPER_FORM",
    "ScorePredictor",
    "SharedLayerViTs",
    "TokenFusion",
    "TokenFusionLayer",
    "TokenFusionOutput",
    "l1_sparsity",
    "least_exchanging_layer",
    "pooled_on_corrupted",
    "preallocate",
    "share_below_threshold",
    "shuffle_tokens",
    "substitute_tokens",
    "substitution_rates",
    "substitution_statistics",
    "token_scores_and_masks",
]

DEFAULT_THRESHOLD = 0.02  # theta, as in the paper and the official code
SHARED = "shared"  # the key of the one LayerNorm all modalities use when norms are shared
# The paper's literal form: Eq. 4 as written (scores on the MSA input) and Eq. 6 on the layer inputs, with
# RPA after the substitution; the defaults are the official code's (scores on the MSA output, substitution
# of the scored MSA outputs).
PAPER_FORM = {"placement": "input", "score_at": "input"}


class ScorePredictor(nn.Module):
    """s(e) in [0, 1]^N for one modality's tokens ``(b, n, d) -> (b, n)`` (the official predictor).

    LayerNorm, then Linear(d, d), Linear(d, d/2), Linear(d/2, d/4) with GELUs, then Linear(d/4, 2)
    and a log-softmax over the two entries; the score is the softmax's first entry.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim // 2), nn.GELU(),
            nn.Linear(dim // 2, dim // 4), nn.GELU(), nn.Linear(dim // 4, 2), nn.LogSoftmax(dim=-1))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.net(tokens).exp()[..., 0]  # b n


def l1_sparsity(scores: Sequence[Mapping[str, Tensor]]) -> Tensor:
    """Eq. 5's l1 term, sum |s| over layers, modalities, images and tokens (the official sum).

    Multiply by lambda.  Being a sum, it grows with the batch size and the number of tokens: a
    lambda tuned at one size is too strong or too weak at another.
    """
    return sum(score.abs().sum() for layer in scores for score in layer.values())


def preallocate(num_tokens: int, modalities: Sequence[str], generator: torch.Generator | None = None
                ) -> dict[str, Tensor]:
    """Eq. 7: for each modality, assign every token position at random to one of the other M - 1
    modalities, once, in (as nearly as possible) equal groups.  Returns ``{m: (num_tokens,)}``
    indices into ``modalities`` of the modality a low-score token of m takes its substitute from.

    With two modalities there is one other, so every entry points to it.  (The paper's Eq. 7; the
    official code handles two modalities only.)
    """
    if len(modalities) < 2:
        raise ValueError(f"substitution needs at least two modalities, got {list(modalities)}")
    allocation = {}
    for index, modality in enumerate(modalities):
        others = torch.tensor([i for i in range(len(modalities)) if i != index])
        groups = others.repeat(-(-num_tokens // len(others)))[:num_tokens]  # near-equal groups
        allocation[modality] = groups[torch.randperm(num_tokens, generator=generator)]
    return allocation


def shuffle_tokens(scores: Tensor) -> Tensor:
    """``(b, n)`` scores permuted at random within each image: as many fall below theta as
    before, at random positions (the random-substitution ablation)."""
    return scores.gather(1, torch.rand_like(scores).argsort(dim=1))


def _check_allocation(allocation: Mapping[str, Tensor], modalities: Sequence[str],
                      num_tokens: int) -> None:
    for index, modality in enumerate(modalities):
        sources = allocation.get(modality)
        if sources is None or sources.shape != (num_tokens,):
            found = None if sources is None else tuple(sources.shape)
            raise ValueError(f"the allocation must give every one of the {num_tokens} tokens of "
                             f"{modality!r} a source modality, got shape {found}")
        if (sources == index).any() or (sources < 0).any() or (sources >= len(modalities)).any():
            raise ValueError(f"the allocation for {modality!r} must point to another of "
                             f"{list(modalities)}, got indices {sorted(set(sources.tolist()))}")


def substitute_tokens(tokens: Mapping[str, Tensor], scores: Mapping[str, Tensor], threshold: float,
                      allocation: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Eq. 6 (and 7): e_m <- e_m * 1[s_m >= theta] + e_src * 1[s_m < theta], per token.

    ``tokens`` and ``scores`` map each modality to ``(b, n, d)`` and ``(b, n)``; ``allocation``
    (from ``preallocate``) names, per modality and position, the modality a substitute comes from.
    Every substitute is the source's token *before* this exchange.  Returns the new tokens and the
    boolean substitution masks ``(b, n)``.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"the threshold theta must lie in (0, 1), got {threshold}")
    modalities = list(tokens)
    shapes = {m: tuple(t.shape) for m, t in tokens.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"homogeneous substitution needs the same (batch, tokens, dim) for every "
                         f"modality, got {shapes}")
    num_tokens = next(iter(shapes.values()))[1]
    _check_allocation(allocation, modalities, num_tokens)
    stacked = torch.stack([tokens[m] for m in modalities])  # M b n d
    new_tokens, masks = {}, {}
    for modality in modalities:
        source = allocation[modality].to(stacked.device)  # n
        substitutes = stacked[source, :, torch.arange(num_tokens, device=stacked.device)]  # n b d
        substitutes = substitutes.transpose(0, 1)  # b n d
        masks[modality] = scores[modality] < threshold  # b n
        new_tokens[modality] = torch.where(masks[modality][..., None], substitutes, tokens[modality])
    return new_tokens, masks


class TokenFusionLayer(nn.Module):
    """One transformer layer run on every modality with shared MSA and MLP weights and
    modality-specific LayerNorms (official ``LayerNormParallel``), scores applied as in Eq. 4, on
    the MSA output as the official code does (``score_at="output"``) or on its input as the paper
    writes it (``score_at="input"``):

        e'_m = e_m + s_m * MSA(LN1_m(e_m))   or   e'_m = e_m + MSA(LN1_m(e_m) * s_m),
        e''_m = e'_m + MLP(LN2_m(e'_m))

    With ``placement="attention"`` (official code) the low-score tokens of the scored MSA output
    (s_m * MSA(...), or MSA(... * s_m)) are substituted before the residual add; with
    ``placement="input"`` (paper, Eq. 6) the caller substitutes the layer inputs and this layer does
    not exchange.
    """

    def __init__(self, modalities: Sequence[str], dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 share_weights: bool = True, share_norms: bool = False,
                 score_at: Literal["output", "input"] = "output") -> None:
        super().__init__()
        if score_at not in ("output", "input"):
            raise ValueError(f"score_at must be 'output' (official) or 'input' (paper), got {score_at!r}")
        self.modalities, self.score_at = list(modalities), score_at
        copies = 1 if share_weights else len(self.modalities)
        self.attn = nn.ModuleList(Attention(dim, num_heads) for _ in range(copies))
        self.mlp = nn.ModuleList(Mlp(dim, int(dim * mlp_ratio)) for _ in range(copies))
        norm_names = [SHARED] if share_norms else self.modalities
        self.norm1 = nn.ModuleDict({n: nn.LayerNorm(dim, eps=LAYER_NORM_EPS) for n in norm_names})
        self.norm2 = nn.ModuleDict({n: nn.LayerNorm(dim, eps=LAYER_NORM_EPS) for n in norm_names})

    def extra_repr(self) -> str:
        """Where Eq. 4's scores multiply (part of a cached model's key)."""
        return f"score_at={self.score_at!r}"

    def _weights(self, index: int) -> tuple[Attention, Mlp, nn.LayerNorm, nn.LayerNorm]:
        """The attention, MLP and two LayerNorms modality ``index`` runs through."""
        name = self.modalities[index] if self.modalities[index] in self.norm1 else SHARED
        return (self.attn[index % len(self.attn)], self.mlp[index % len(self.mlp)],
                self.norm1[name], self.norm2[name])

    def forward(self, tokens: Mapping[str, Tensor], scores: Mapping[str, Tensor],
                substitute: dict | None = None, return_attention: bool = False,
                choose_by: Mapping[str, Tensor] | None = None
                ) -> tuple[dict[str, Tensor], dict[str, Tensor] | None, dict[str, Tensor]]:
        """``substitute`` is ``{"threshold": theta, "allocation": ...}`` to exchange scored MSA
        outputs (official placement), or None; ``choose_by`` (default: ``scores``) are the values
        compared with theta.  Returns tokens, masks (or None), attention."""
        attended, attention = {}, {}
        for index, modality in enumerate(self.modalities):
            attn, _, norm1, _ = self._weights(index)
            score = scores[modality][..., None]  # b n 1
            normed = norm1(tokens[modality])
            if self.score_at == "input":  # Eq. 4 as the paper writes it: MSA(LN(e) * s)
                out, attention[modality] = attn(normed * score, return_attention=return_attention)
                attended[modality] = out
            else:  # the official code: s * MSA(LN(e))
                out, attention[modality] = attn(normed, return_attention=return_attention)
                attended[modality] = out * score
        masks = None
        if substitute is not None:
            attended, masks = substitute_tokens(
                attended, scores if choose_by is None else choose_by, **substitute)
        new_tokens = {}
        for index, modality in enumerate(self.modalities):
            _, mlp, _, norm2 = self._weights(index)
            x = tokens[modality] + attended[modality]
            new_tokens[modality] = x + mlp(norm2(x))
        return new_tokens, masks, attention


class SharedLayerViTs(nn.Module):
    """The single-modal pretraining of shared layers: one segmentation ViT per modality, all running the
    same attention and MLP weights (Table 8's configuration: shared MSA and MLP, modality-specific
    LayerNorms), each with its own patch and positional embedding, LayerNorms, final norm and head.

    Every batch carries each modality's loss (averaged, ``mean_modality_loss``), so the shared layers are
    trained on every modality for as many epochs as a single-modal model is on its own: a start fair to
    separate weights (whose layers come from a single-modal model per modality) in training budget, with
    half their layer parameters.  ``TokenFusion(share_weights=True).load_single_modal(dict(pair.models))``
    starts from it.  ``logits``, for evaluation only, is the mean of the modalities' logits.

    The official code shares more: every convolution and linear layer of its backbone runs on each modality
    (``ModuleParallel``: the patch projections too, depth entering as a 3-channel image), and so does its
    decoder head; only the LayerNorms (``LayerNormParallel``) and the score predictors are per modality, and
    the shared weights start from one ImageNet-pretrained network.  Here the patch embeddings (3 and 1 input
    channels), positional embeddings and heads stay per modality, a choice, not measured against sharing them.
    """

    def __init__(self, modalities: Mapping[str, int], **vit: object) -> None:
        super().__init__()
        models = {m: VisionTransformer(**vit, in_chans=channels, modality=m)
                  for m, channels in modalities.items()}
        first, *others = models.values()
        for model in others:
            for shared, block in zip(first.blocks, model.blocks, strict=True):
                block.attn, block.mlp = shared.attn, shared.mlp  # one module, trained by every modality
        self.models = nn.ModuleDict(models)

    def forward(self, inputs: Mapping[str, Tensor]) -> ModelOutput:
        logits = {m: model(inputs).logits for m, model in self.models.items()}  # m -> b k h w
        mean = torch.stack(list(logits.values())).mean(0)  # b k h w
        return ModelOutput(logits=mean, modality_logits=logits, mean_modality_loss=True)


@dataclass
class TokenFusionOutput(ModelOutput):
    """``scores[l][m]`` ``(b, n)`` and ``substituted[l][m]`` ``(b, n)`` bool, per layer l."""

    scores: list[dict[str, Tensor]] = field(default_factory=list)
    substituted: list[dict[str, Tensor]] = field(default_factory=list)
    layer_attention: list[dict[str, Tensor]] | None = None


class TokenFusion(nn.Module):
    """TokenFusion for pixel-aligned modalities (segmentation), built from the pieces above.

    ``modalities`` maps names to channel counts.  Each modality has its own patch embedding,
    positional embedding, score predictor(s) and dense head; the layers are shared (see
    ``TokenFusionLayer``).  ``lambda_l1`` weighs Eq. 5's l1 term, returned as ``aux_loss``;
    ``threshold`` is theta; ``substitution=False`` keeps the whole architecture (scores, Eq. 4,
    l1) but never exchanges, the ablation that isolates what the exchange adds; ``rpa=False``
    adds the positional embedding only once, at the input; ``share_weights=False`` gives every
    modality its own layers; ``share_norms=True`` one LayerNorm for all modalities.  ``placement``
    and ``score_at`` choose the official code's form (the defaults) or the paper's literal one
    (``PAPER_FORM``: Eq. 6 on the layer inputs, each modality's positional embedding re-added after
    the substitution, and Eq. 4's scores on the MSA input).
    """

    def __init__(self, modalities: Mapping[str, int], img_size: int = 32, patch_size: int = 4,
                 num_classes: int = 5, embed_dim: int = 64, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0, lambda_l1: float = 1e-4,
                 threshold: float = DEFAULT_THRESHOLD,
                 placement: Literal["attention", "input"] = "attention",
                 substitution: bool = True, rpa: bool = True, share_weights: bool = True,
                 share_norms: bool = False, predictor_per_layer: bool = False,
                 allocation_seed: int = 0, random_substitution: bool = False,
                 score_at: Literal["output", "input"] = "output") -> None:
        super().__init__()
        if len(modalities) < 2:
            raise ValueError(f"fusion needs at least two modalities, got {list(modalities)}")
        if not 0 < threshold < 1:
            raise ValueError(f"the threshold theta must lie in (0, 1), got {threshold}")
        if placement not in ("attention", "input"):
            raise ValueError(f"placement must be 'attention' or 'input', got {placement!r}")
        self.modalities = list(modalities)
        self.lambda_l1, self.threshold, self.placement = lambda_l1, threshold, placement
        self.substitution, self.rpa = substitution, rpa
        self.random_substitution = random_substitution
        self.patch_embeds = nn.ModuleDict(
            {m: PatchEmbed(img_size, patch_size, c, embed_dim) for m, c in modalities.items()})
        first = self.patch_embeds[self.modalities[0]]
        self.pos_embeds = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(1, first.num_patches, embed_dim) * POS_STD)
             for m in modalities})
        predictors = depth if predictor_per_layer else 1
        self.score_predictors = nn.ModuleList(
            nn.ModuleDict({m: ScorePredictor(embed_dim) for m in modalities})
            for _ in range(predictors))
        self.layers = nn.ModuleList(
            TokenFusionLayer(self.modalities, embed_dim, num_heads, mlp_ratio, share_weights,
                             share_norms, score_at)
            for _ in range(depth))
        self.norms = nn.ModuleDict({m: nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
                                    for m in modalities})
        self.heads = nn.ModuleDict(
            {m: DenseHead(embed_dim, num_classes, patch_size, first.grid_size) for m in modalities})
        self.ensemble = LearnedEnsemble(self.modalities)
        generator = torch.Generator().manual_seed(allocation_seed)
        for modality, sources in preallocate(first.num_patches, self.modalities, generator).items():
            self.register_buffer(f"allocation_{modality}", sources)
        self.apply(init_vit_weights)

    def extra_repr(self) -> str:
        """The options that change training but not the modules (so a cached model's key
        tells an ablation from the full model)."""
        return (f"lambda_l1={self.lambda_l1}, threshold={self.threshold}, placement={self.placement!r}, "
                f"substitution={self.substitution}, random_substitution={self.random_substitution}, "
                f"rpa={self.rpa}")

    def load_single_modal(self, models: Mapping[str, VisionTransformer]) -> None:
        """Start from trained single-modal ViTs, one per modality (TokenFusion's premise: inherit
        single-modal (pre)training).  ``models`` holds a model for some or all modalities (in
        the model's order); a modality without one keeps its fresh initialisation.  Each
        modality takes its model's patch and positional
        embeddings (the class token's position dropped: TokenFusion has no class token), final
        norm and dense head; with separate weights, its layers too.  With shared weights the
        shared attention and MLP come from the first modality's model, and every modality keeps
        its own model's LayerNorms."""
        order = [m for m in self.modalities if m in models]
        if not models or list(models) != order:
            raise KeyError(f"expected single-modal models for some of {self.modalities}, in that "
                           f"order, got {list(models)}")
        for modality, vit in models.items():
            index = self.modalities.index(modality)
            self.patch_embeds[modality].load_state_dict(vit.patch_embed.state_dict())
            with torch.no_grad():
                self.pos_embeds[modality].copy_(vit.pos_embed[:, NUM_PREFIX_TOKENS:])
            for layer, block in zip(self.layers, vit.blocks, strict=True):
                if index < len(layer.attn):
                    layer.attn[index].load_state_dict(block.attn.state_dict())
                    layer.mlp[index].load_state_dict(block.mlp.state_dict())
                _, _, norm1, norm2 = layer._weights(index)
                norm1.load_state_dict(block.norm1.state_dict())
                norm2.load_state_dict(block.norm2.state_dict())
            self.norms[modality].load_state_dict(vit.norm.state_dict())
            self.heads[modality].load_state_dict(vit.head.state_dict())

    @property
    def allocation(self) -> dict[str, Tensor]:
        """Eq. 7's pre-allocation, drawn once at construction (a buffer: saved with the model)."""
        return {m: getattr(self, f"allocation_{m}") for m in self.modalities}

    def _positions(self, layer: int) -> dict[str, Tensor]:
        """RPA: the positional embedding with gradient at the first layer, stop-gradient after."""
        return {m: p if layer == 0 else p.detach() for m, p in self.pos_embeds.items()}

    def _add_positions(self, tokens: Mapping[str, Tensor], layer: int) -> dict[str, Tensor]:
        """Each modality's tokens ``b n d`` plus its own positional embedding (RPA, Sec. 3.3)."""
        positions = self._positions(layer)
        return {m: t + positions[m] for m, t in tokens.items()}

    def forward(self, inputs: Mapping[str, Tensor], return_attention: bool = False
                ) -> TokenFusionOutput:
        images = aligned_modalities(inputs, self.modalities)
        tokens = {m: self.patch_embeds[m](x) for m, x in zip(self.modalities, images, strict=True)}
        exchange = {"threshold": self.threshold, "allocation": self.allocation}
        all_scores, all_masks, all_attention = [], [], []
        for index, layer in enumerate(self.layers):
            add_positions = index == 0 or self.rpa
            positioned = self._add_positions(tokens, index) if add_positions else tokens
            predictor = self.score_predictors[index % len(self.score_predictors)]
            scores = {m: predictor[m](t) for m, t in positioned.items()}  # b n each
            chooser = ({m: shuffle_tokens(s) for m, s in scores.items()} if self.random_substitution
                       else scores)
            masks = None
            if self.substitution and self.placement == "input":
                tokens, masks = substitute_tokens(tokens, chooser, **exchange)  # Eq. 6, before RPA
                tokens = self._add_positions(tokens, index) if add_positions else tokens  # receiver's PE
            else:
                tokens = positioned
            inside = exchange if self.substitution and self.placement == "attention" else None
            tokens, inner_masks, attention = layer(tokens, scores, inside, return_attention, chooser)
            all_scores.append(scores)
            all_masks.append(masks or inner_masks or {m: torch.zeros_like(s, dtype=torch.bool)
                                                      for m, s in scores.items()})
            all_attention.append(attention)
        logits = {m: self.heads[m](self.norms[m](t)) for m, t in tokens.items()}
        return TokenFusionOutput(
            logits=self.ensemble(logits), modality_logits=logits,
            aux_loss=self.lambda_l1 * l1_sparsity(all_scores), scores=all_scores,
            substituted=all_masks, layer_attention=all_attention if return_attention else None)


def share_below_threshold(scores: Sequence[Mapping[str, Tensor]],
                          threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """The share of tokens with score < theta per modality, over all layers (as the official
    training logs it: the share of tokens that would be, or were, substituted)."""
    modalities = list(scores[0])
    return {m: torch.stack([(layer[m] < threshold).float().mean() for layer in scores]).mean().item()
            for m in modalities}


def substitution_statistics(substituted: Sequence[Mapping[str, Tensor]],
                            corrupted: Mapping[str, Tensor]) -> dict[str, dict[str, list[float]]]:
    """Where do substituted tokens land?  Per modality and layer, from the masks ``(b, n)`` of
    ``TokenFusionOutput.substituted`` and the ground-truth corrupted patches ``(b, n)``:

    - ``share``: the share of tokens substituted;
    - ``on_corrupted``: the share of substituted tokens that lie on corrupted patches (NaN when
      none were substituted);
    - ``random``: the same share for substitution at random positions, which is (in
      expectation) the share of patches that are corrupted.
    """
    statistics = {}
    for modality, damage in corrupted.items():
        masks = torch.stack([layer[modality] for layer in substituted])  # L b n
        if masks.shape[1:] != damage.shape:
            raise ValueError(f"expected corrupted patches of shape {tuple(masks.shape[1:])} for "
                             f"{modality!r}, got {tuple(damage.shape)}")
        damage = damage.to(masks.device).expand_as(masks)
        hits = (masks & damage).sum((1, 2)).float()
        statistics[modality] = {
            "share": masks.float().mean((1, 2)).tolist(),
            "on_corrupted": (hits / masks.sum((1, 2))).tolist(),  # 0/0 -> NaN: none substituted
            "random": [damage.float().mean().item()] * len(masks),
        }
    return statistics


def pooled_on_corrupted(statistics: Mapping[str, Sequence[float]], layers: Sequence[int]) -> float:
    """The share of substituted tokens on corrupted patches over several ``layers`` together,
    from one modality's ``substitution_statistics`` (each layer weighted by its substitutions)."""
    if not layers:
        raise ValueError("expected at least one layer to pool over, got none")
    shares = [statistics["share"][layer] for layer in layers]
    if sum(shares) == 0:
        raise ValueError(f"no token was substituted in layers {list(layers)}")
    hits = [share * statistics["on_corrupted"][layer] for share, layer in zip(shares, layers, strict=True)]
    return sum(hits) / sum(shares)


def least_exchanging_layer(statistics: Mapping[str, Sequence[float]]) -> int:
    """The layer that substitutes the smallest non-zero share of one modality's tokens, from its
    ``substitution_statistics``: the one where the scores can be most selective (substituting a share s,
    a layer can land on corrupted patches at most 1/s times the random rate)."""
    exchanging = [layer for layer, share in enumerate(statistics["share"]) if share > 0]
    if not exchanging:
        raise ValueError(f"no layer substituted any token: shares {list(statistics['share'])}")
    return min(exchanging, key=lambda layer: statistics["share"][layer])


def substitution_rates(statistics: Mapping[str, Sequence[float]], layer: int) -> tuple[float, float]:
    """P(substituted | corrupted) and P(substituted | clean) at ``layer``, from one modality's
    ``substitution_statistics``, by Bayes' rule:
    P(sub | corrupted) = P(corrupted | sub) P(sub) / P(corrupted), and likewise for clean."""
    share, on_corrupted, corrupted = (statistics[key][layer] for key in ("share", "on_corrupted", "random"))
    if not 0 < corrupted < 1:
        raise ValueError(f"expected some corrupted and some clean patches, got a corrupted share {corrupted}")
    if share == 0:
        return 0.0, 0.0  # nothing substituted (on_corrupted is NaN then)
    return on_corrupted * share / corrupted, (1 - on_corrupted) * share / (1 - corrupted)


def token_scores_and_masks(model: TokenFusion, data: Mapping[str, Tensor]
                           ) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
    """The scores and substitution masks of ``model`` over all of ``data``, on the CPU:
    ``scores[l][m]`` ``(num_samples, n)`` and ``substituted[l][m]`` likewise (bool)."""
    outputs = [(out.scores, out.substituted) for _, out in model_outputs(model, data)]

    def gather(which: int) -> list[dict[str, Tensor]]:
        return [{m: torch.cat([o[which][layer][m].float().cpu() for o in outputs])
                 for m in model.modalities} for layer in range(len(model.layers))]

    scores, substituted = gather(0), gather(1)
    return scores, [{m: mask.bool() for m, mask in layer.items()} for layer in substituted]
