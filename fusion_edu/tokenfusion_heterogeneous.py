"""TokenFusion for heterogeneous modalities: Wang et al., CVPR 2022, Sec. 3.5 (notebook 04).

A point cloud and an image have different formats and different transformers: point tokens (seeds
with their neighbourhoods, ``fusion_edu.points``) with 3-D positions, image tokens (ViT patches) on a
2-D grid.  No token of one sits "at the same place" as a token of the other, so TokenFusion aligns
them through the camera: a point token's seed p = [x, y, z] is projected (the paper's Eqs. 8-9),

    z_c [u, v, 1]^T = K [R | t] [x, y, z, 1]^T,     proj(p) = ⌊v / P⌋ · (W / P) + ⌊u / P⌋,

the index of the image patch (size P, image width W) the point falls in.  Before each layer l a
score predictor rates every point token the layer reads, s^l(e) ∈ [0, 1]; what the layer reads in
place of a token scoring below θ is h(image token at proj(p)), h a shallow MLP from the image width to
the point width (Eq. 6), and a token scoring above θ is read as it is, its attention update multiplied
by its score, s · MSA(LN(e)), so the score receives gradient (Eq. 4 in the form of the official
homogeneous code).  The layer's update then lands on each token's own residual stream: neither the
substitution nor the score is carried to the next layer, which scores and substitutes afresh (as the
official detector does: it scores and substitutes its point features anew in every decoder layer,
nothing compounding).  Residual positional alignment (RPA, Sec. 3.3) re-adds the 3-D positional
embedding p to what every layer reads, after substitution, so a substituted token keeps its place in
3-D: e^{l+1} = (e^l + p) + [Layer(ẽ^l + p) − (ẽ^l + p)], so that, as in any residual network that adds
positions before each layer, a kept token's stream carries l + 1 copies of p at layer l; only the first
copy is trained, the later ones are detached (Sec. 3.3).  Points without a patch (outside the image,
behind the camera) are read as they are, unscaled, and their scores stay out of the l1 term: there is
nothing for them to decide.  An l1 penalty on the scores (Eq. 5) makes substitution happen.  Exchange
is one way, image → points, as in the paper's 3-D detection experiment.

Where the paper is vague this module follows the official detector (yikaiw/TokenFusion,
object-detection-3d, ``models/detector.py`` and ``train_dist.py``), and says so: the score predictor is
the homogeneous one; the image features are **detached** before h (the image branch learns from its own
2-D loss, here each patch's class from the projected 3-D boxes), and that 2-D loss weighs 0.1 of the 3-D
one (the official 1 : 10; on an earlier form of this model, at 1 : 1 its gradient dominated the training
loop's global gradient-norm clip and slowed the point branch: 0.52 of the objects detected against
0.82); and an l1 term on the point scores of every layer (the official ``train_dist.py`` adds
1e-3 · Σ|s| over the point scores of every decoder layer and every scene of the batch).  Measured here
(seed 0, notebook 04's recipe, before points without a patch were exempted from the score; share of the
point tokens with a patch that are substituted, per layer): without an l1 term nothing is substituted
(0.384 of the objects detected, against 0.334 for the point-only model); at λ = 1e-5 0.52 / 0.96 / 0.84 /
0.84 (0.752 detected); at 3e-5, our default, 1.0 / 1.0 / 0.91 / 0.90 (0.797, at 2 threads); at the
official 1e-3 on our sum, every token in every layer (0.795), which makes TokenFusion the "substitute
all" control by construction.

What remains different from the official detector, and why:

- its point features are a fixed set read through cross-attention by object proposals (a DETR-style
  decoder); ours are an encoder whose tokens are also the predictions, so the substituted token's own
  stream keeps its point features and receives the update computed from the image token;
- its scored tokens are s · e, read as keys and values without a LayerNorm, so the score scales what a
  token *sends*; ours pass a pre-norm layer, where s · e would be normalised away, so the score scales
  the attention update a token *receives* (the homogeneous official form);
- it has no RPA: each decoder layer adds its own learned embedding of the points' xyz to the keys
  (``decoder_cross_posembeds``); ours follows the paper's Sec. 3.3;
- its h is a 3-layer MLP with ReLUs (``FFN(hidden, hidden, 288, 3)``); ours has 2 layers and a GELU;
- the l1 weight is our own (``lambda_l1`` 3e-5 on the sum), not the official 1e-3 (see above);
- one image layer per point layer (the official code runs two image blocks per decoder layer);
- the official code has no mask for points outside the image (SUN RGB-D's depth and colour cameras
  see the same field), while ours has a wider depth sensor: points without a patch are read as they
  are, unscaled and outside the l1 term.

Controls (notebook 04), each the same model with another rule for what a layer reads, no scores and no
l1 term: ``"additive"`` adds h(image token) to every projected point token; ``"substitute_all"``
substitutes every projected token; ``"random"`` substitutes a random share of the projected tokens per
layer (``random_share``, set to TokenFusion's measured share: the paper's Table 5 random baseline).
``"none"`` is the point-only model, with no image branch.

The task is a small detection: each seed token predicts the class of the object it lies on (or
background) and the offset from the seed to that object's 3-D centre (VoteNet-style votes);
``object_detections`` turns the per-seed predictions into one detection per object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import LAYER_NORM_EPS, Block, ModelOutput, init_vit_weights
from .camera import project_points
from .datasets.pointcloud import SHAPES
from .points import PointTokenizer, farthest_point_sample, group_points
from .tokenfusion import DEFAULT_THRESHOLD, ScorePredictor, l1_sparsity
from .train import model_outputs
from .vit import NUM_PREFIX_TOKENS, VisionTransformer

__all__ = [
    "BACKGROUND",
    "CENTRE_TOLERANCE",
    "FUSIONS",
    "POINT_ONLY",
    "SPARSITY_BUCKETS",
    "TOKENFUSION",
    "PointImageOutput",
    "PointImageTokenFusion",
    "detection_accuracy_by_sparsity",
    "detection_targets",
    "in_sparsity_bucket",
    "object_detections",
    "project_to_patches",
    "substitute_point_tokens",
    "substitution_share",
]

BACKGROUND = 0  # seed class 0; the object classes follow, SHAPES[k] -> k + 1
NUM_SEED_CLASSES = len(SHAPES) + 1
CENTRE_TOLERANCE = 0.2  # a detection's centre must be this close (world units; objects are 0.5-0.9 wide)
SPARSITY_BUCKETS = {"none": (0, 0), "1-8": (1, 8), "9-32": (9, 32), "33+": (33, None)}  # cloud points
POINT_ONLY, TOKENFUSION = "none", "tokenfusion"
ADDITIVE, SUBSTITUTE_ALL, RANDOM = "additive", "substitute_all", "random"  # the controls
FUSIONS = (POINT_ONLY, TOKENFUSION, ADDITIVE, SUBSTITUTE_ALL, RANDOM)
TARGETS_CHUNK = 32  # scenes sampled and grouped at once: FPS 2.1x faster than all 3,000 at once
RANDOM_EVAL_SEED = 0  # the random control's substitutions at evaluation, the same on every run


def project_to_patches(points: Tensor, intrinsic: Tensor, extrinsic: Tensor, image_size: int,
                       patch_size: int) -> tuple[Tensor, Tensor]:
    """Eqs. 8-9: the image patch each point of ``points (b m 3)`` projects into, and whether it does.

    Returns ``patch_index (b m)`` in [0, (W / P)²) (0 where there is none) and ``valid (b m)``: the
    point lies in front of the camera and its pixel inside the image.
    """
    if image_size % patch_size:
        raise ValueError(f"the patch size must divide the image size, got {patch_size} and {image_size}")
    u, v, depth = project_points(points, intrinsic, extrinsic).unbind(-1)  # u, v already divided by z_c
    valid = (depth > 0) & (u >= 0) & (u < image_size) & (v >= 0) & (v < image_size)
    patches_per_row = image_size // patch_size
    index = (v / patch_size).floor() * patches_per_row + (u / patch_size).floor()  # ⌊v/P⌋ W/P + ⌊u/P⌋
    return torch.where(valid, index, torch.zeros_like(index)).long(), valid


def substitute_point_tokens(point_tokens: Tensor, scores: Tensor, image_tokens: Tensor, patch_index: Tensor,
                            valid: Tensor, projection: nn.Module, threshold: float) -> tuple[Tensor, Tensor]:
    """Heterogeneous Eq. 6, what a layer reads: e where s ≥ θ, h(image token at proj(e)) where s < θ.

    ``point_tokens (b m d_p)``, ``scores (b m)``, ``image_tokens (b N d_i)`` (patch tokens only),
    ``patch_index`` and ``valid (b m)`` from ``project_to_patches``, ``projection`` is h.  Points
    without a patch are never substituted.  Returns the tokens read and the substitution mask ``(b m)``.
    """
    return _read_image_where(scores < threshold, point_tokens, image_tokens, patch_index, valid, projection)


def _read_image_where(chosen: Tensor, point_tokens: Tensor, image_tokens: Tensor, patch_index: Tensor,
                      valid: Tensor, projection: nn.Module) -> tuple[Tensor, Tensor]:
    """h(image token at proj(e)) in place of the ``chosen (b m)`` point tokens that have a patch."""
    substituted = chosen & valid
    return torch.where(substituted[..., None], _projected_image(image_tokens, patch_index, projection),
                       point_tokens), substituted


def _projected_image(image_tokens: Tensor, patch_index: Tensor, projection: nn.Module) -> Tensor:
    """h(image token at proj(p)) for every point token ``(b m d_p)``."""
    index = patch_index[..., None].expand(-1, -1, image_tokens.shape[-1])
    return projection(image_tokens.gather(1, index))  # b m d_i -> b m d_p


def detection_targets(scenes: Mapping[str, Tensor], num_seeds: int, patch_size: int, group_size: int
                      ) -> dict[str, Tensor]:
    """The training view of point-cloud scenes: the image as floats in [0, 1], the seeds (farthest point
    sampling) and their ``groups (b m k 3)``, each seed's ``group_size`` nearest points relative to it
    (both done once here rather than in every forward: a fixed cloud has fixed seeds and neighbourhoods),
    and the targets.

    ``label (b m)``: each seed's class, ``BACKGROUND`` on the floor and ``SHAPES[k]`` → k + 1 on an
    object; ``seed_instance (b m)``; ``seed_centre (b m 3)``: the centre of the seed's object (zeros on
    the floor); ``patch_label (b N)``: the image branch's 2-D target, from the 3-D labels projected
    into the image: the class of the object whose projected 3-D box (``object_box_2d``) holds the
    patch centre — the nearest to the camera where boxes overlap — else background.
    """
    points = scenes["points"]
    chunks = torch.arange(len(points)).split(TARGETS_CHUNK)
    seeds = torch.cat([farthest_point_sample(points[chunk], num_seeds) for chunk in chunks])  # b m
    rows = torch.arange(len(points))[:, None]
    instance = scenes["point_instance"].long()[rows, seeds]  # b m
    on_object = instance >= 0
    object_index = instance.clamp(min=0)
    label = torch.where(on_object, scenes["object_class"][rows, object_index] + 1, BACKGROUND)
    centre = torch.where(on_object[..., None], scenes["object_centre"][rows, object_index], 0.0)
    groups = torch.cat([group_points(points[chunk], seeds[chunk], group_size) for chunk in chunks])  # b m k 3
    return {**scenes, "image": scenes["image"].float() / 255, "seeds": seeds, "groups": groups,
            "label": label, "seed_instance": instance, "seed_centre": centre,
            "patch_label": _patch_labels(scenes, patch_size)}


def _patch_labels(scenes: Mapping[str, Tensor], patch_size: int) -> Tensor:
    """Per patch ``(b N)``: the class + 1 of the nearest object whose projected box holds the patch centre."""
    size = scenes["image"].shape[-1]
    centres = torch.arange(patch_size / 2, size, patch_size)  # patch centres along one axis, in pixels
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    u, v = u.flatten()[None, None], v.flatten()[None, None]  # 1 1 N
    u0, v0, u1, v1 = scenes["object_box_2d"][..., None].unbind(2)  # b O 1 each
    depth = project_points(scenes["object_centre"], scenes["K"], scenes["Rt"])[..., 2]  # b O
    present = (scenes["object_class"] >= 0) & (depth > 0)
    covers = (u >= u0) & (u < u1) & (v >= v0) & (v < v1) & present[..., None]  # b O N
    nearest = torch.where(covers, depth[..., None], torch.inf).argmin(dim=1)  # b N
    label = scenes["object_class"].gather(1, nearest) + 1
    return torch.where(covers.any(dim=1), label, BACKGROUND)


@dataclass
class PointImageOutput(ModelOutput):
    """``logits (b C+1 m)``: per seed; plus the centre votes ``(b m 3)``, which seeds have a patch
    ``(b m)``, per layer the scores and substitution masks ``(b m)`` (for ``"additive"``: the tokens
    the image was added to), and the image branch's per-patch logits ``(b C+1 N)``."""

    centres: Tensor | None = None
    has_patch: Tensor | None = None
    scores: list[Tensor] | None = None
    substituted: list[Tensor] | None = None
    patch_logits: Tensor | None = None


class PointImageTokenFusion(nn.Module):
    """A point transformer and an image ViT, trained together.  ``fusion`` says what each point layer reads
    from the image through the camera (Eqs. 8-9): ``"tokenfusion"`` substitutes low-scoring point tokens
    (Eqs. 4 and 6), ``"none"`` is the point-only model, and the controls ``"additive"``,
    ``"substitute_all"`` and ``"random"`` (``random_share``: per layer, the share of projected tokens
    substituted) are the same model without scores.

    Unshared parameters, each branch its own width and depth (the image ViT's depth must match the
    point branch's: one image layer feeds each point layer).  ``lambda_l1`` weighs the l1 term (a sum,
    as in the homogeneous module), ``image_loss_weight`` the image branch's 2-D loss; ``rpa=False`` adds
    the 3-D positions before the first layer only.
    """

    def __init__(self, fusion: str = TOKENFUSION, num_seeds: int = 128, group_size: int = 16,
                 point_dim: int = 64, image_dim: int = 48, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 2.0, image_size: int = 64, patch_size: int = 8,
                 threshold: float = DEFAULT_THRESHOLD, lambda_l1: float = 3e-5,
                 image_loss_weight: float = 0.1, random_share: Sequence[float] | None = None,
                 rpa: bool = True) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        shares_fit = random_share is None or (
            len(random_share) == depth and all(0 <= share <= 1 for share in random_share))
        if (fusion == RANDOM) != (random_share is not None) or not shares_fit:
            raise ValueError(f"random substitution needs one share in [0, 1] per layer ({depth}), and only "
                             f"it takes shares; got fusion={fusion!r}, random_share={random_share}")
        self.fusion, self.threshold, self.lambda_l1, self.rpa = fusion, threshold, lambda_l1, rpa
        self.random_share = None if random_share is None else tuple(random_share)
        self.image_loss_weight, self.image_size, self.patch_size = image_loss_weight, image_size, patch_size
        self.tokenizer = PointTokenizer(num_seeds, group_size, point_dim)
        self.layers = nn.ModuleList(Block(point_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(point_dim, eps=LAYER_NORM_EPS)
        self.class_head = nn.Linear(point_dim, NUM_SEED_CLASSES)
        self.centre_head = nn.Linear(point_dim, 3)
        if fusion != POINT_ONLY:
            # the ViT's linear head classifies every patch token (the 2-D target), not the class token
            self.image = VisionTransformer(image_size, patch_size, 3, NUM_SEED_CLASSES, image_dim, depth,
                                           num_heads, mlp_ratio)
            self.projections = nn.ModuleList(  # h: a shallow MLP from the image width to the point width
                nn.Sequential(nn.Linear(image_dim, image_dim), nn.GELU(), nn.Linear(image_dim, point_dim))
                for _ in range(depth))
        if fusion == TOKENFUSION:
            self.score_predictors = nn.ModuleList(ScorePredictor(point_dim) for _ in range(depth))
        self.apply(init_vit_weights)

    def extra_repr(self) -> str:
        return (f"fusion={self.fusion!r}, random_share={self.random_share}, lambda_l1={self.lambda_l1}, "
                f"rpa={self.rpa}")

    def forward(self, inputs: Mapping[str, Tensor], return_attention: bool = False) -> PointImageOutput:
        points, seeds, groups = inputs["points"], inputs.get("seeds"), inputs.get("groups")
        tokens, positions, xyz = self.tokenizer(points, seeds, groups)  # b m d, b m d, b m 3
        scores, substituted, attention = [], [], []
        if self.fusion != POINT_ONLY:
            image = self.image.embed(inputs["image"])  # b 1+N d_i
            patch_index, valid = project_to_patches(xyz, inputs["K"], inputs["Rt"], self.image_size,
                                                    self.patch_size)
        draws = None  # the random control's generator: torch's in training, one per forward in evaluation
        if self.fusion == RANDOM and not self.training:
            draws = torch.Generator(xyz.device).manual_seed(RANDOM_EVAL_SEED)
        for index, layer in enumerate(self.layers):
            # RPA (Sec. 3.3): the positions re-added before every layer, only the first copy trained
            rpa = positions if index == 0 else (positions.detach() if self.rpa else 0.0)
            read, scale = tokens, None
            if self.fusion != POINT_ONLY:
                image, _ = self.image.blocks[index](image)
                patches = image[:, NUM_PREFIX_TOKENS:].detach()  # the official code detaches them
                read, mask, score = self._what_the_layer_reads(index, tokens, patches, patch_index, valid,
                                                               draws)
                if score is not None:  # Eq. 4 scales the kept tokens' updates (of the tokens with a patch)
                    scores.append(score)
                    scale = torch.where(mask | ~valid, torch.ones_like(score), score)
                substituted.append(mask)
            # the layer reads `read` (positions re-added after substitution); its update lands on each
            # token's own stream, so nothing this layer substituted or scaled is carried to the next
            updated, weights = layer(read + rpa, return_attention=return_attention, attention_scale=scale)
            tokens = updated + (tokens - read)
            attention.append(weights)
        fused = self.fusion != POINT_ONLY
        return self._outputs(inputs, tokens, xyz, image if fused else None, valid if fused else None,
                             attention if return_attention else None, scores, substituted)

    def _what_the_layer_reads(self, index: int, tokens: Tensor, patches: Tensor, patch_index: Tensor,
                              valid: Tensor, draws: torch.Generator | None = None
                              ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Layer ``index``'s input under this model's fusion: the tokens read ``(b m d_p)``, which point
        tokens read the image ``(b m)``, and TokenFusion's scores s^l(e) ``(b m)`` (None for the others)."""
        projection = self.projections[index]
        if self.fusion == ADDITIVE:
            added = _projected_image(patches, patch_index, projection) * valid[..., None]
            return tokens + added, valid, None
        if self.fusion == TOKENFUSION:
            scores = self.score_predictors[index](tokens)  # b m: s^l(e)
            read, mask = substitute_point_tokens(tokens, scores, patches, patch_index, valid, projection,
                                                 self.threshold)
            return read, mask, scores
        everyone = self.fusion == SUBSTITUTE_ALL
        chosen = torch.ones_like(valid) if everyone else self._random_choice(index, valid, draws)
        read, mask = _read_image_where(chosen, tokens, patches, patch_index, valid, projection)
        return read, mask, None

    def _random_choice(self, index: int, valid: Tensor, draws: torch.Generator | None) -> Tensor:
        """Each point token chosen with probability ``random_share[index]``, each layer drawing afresh from
        ``draws``: torch's generator in training (seeded by ``fit``), in evaluation one seeded anew in every
        forward, so a test score is reproducible."""
        return torch.rand(valid.shape, generator=draws, device=valid.device) < self.random_share[index]

    def _outputs(self, inputs: Mapping[str, Tensor], tokens: Tensor, xyz: Tensor, image: Tensor | None,
                 has_patch: Tensor | None, attention: list[Tensor] | None, scores: list[Tensor],
                 substituted: list[Tensor]) -> PointImageOutput:
        """The heads: per-seed class logits and centre votes, and the image branch's per-patch logits."""
        tokens = self.norm(tokens)
        centres = xyz + self.centre_head(tokens)  # votes: seed + offset
        output = PointImageOutput(logits=self.class_head(tokens).transpose(1, 2), centres=centres,
                                  attention=attention, has_patch=has_patch, scores=scores or None,
                                  substituted=substituted or None)
        if image is not None:
            patches = self.image.norm(image)[:, NUM_PREFIX_TOKENS:]  # b N d_i
            output.patch_logits = self.image.head(patches).transpose(1, 2)  # b C+1 N
        output.aux_loss = self._aux_loss(output, inputs)
        return output

    def _aux_loss(self, output: PointImageOutput, inputs: Mapping[str, Tensor]) -> Tensor | None:
        """Centre votes (smooth l1, seeds on objects), the image's 2-D loss, and λ · Eq. 5's l1."""
        if "seed_centre" not in inputs:
            return None
        on_object = inputs["label"] != BACKGROUND  # b m
        votes = F.smooth_l1_loss(output.centres, inputs["seed_centre"], reduction="none").sum(-1)  # b m
        loss = (votes * on_object).sum() / on_object.sum().clamp(min=1)
        if output.patch_logits is not None:
            loss = loss + self.image_loss_weight * F.cross_entropy(output.patch_logits, inputs["patch_label"])
        if output.scores is not None:
            with_patch = output.has_patch.to(output.scores[0].dtype)  # b m: the scores that decide anything
            loss = loss + self.lambda_l1 * l1_sparsity([{"points": s * with_patch} for s in output.scores])
        return loss


def object_detections(model: PointImageTokenFusion, data: Mapping[str, Tensor],
                      device: torch.device | None = None) -> dict[str, Tensor]:
    """One detection per object from the votes of the seeds that lie on it: the class is the argmax of
    their mean class probabilities, the centre the mean of their votes.  (A simplification of VoteNet:
    the votes are grouped by the true instance, not clustered.)  An object without seeds is missed.

    Returns, per object present in ``data`` (flattened over scenes): ``correct`` (right class and the
    centre within ``CENTRE_TOLERANCE``), ``class_correct``, ``centre_error``, ``seeds`` and ``points``
    (its number of cloud points, the sparsity).
    """
    results: dict[str, list[Tensor]] = {}
    for batch, output in model_outputs(model, data, device):
        classes = batch["object_class"]  # b O
        slots = torch.arange(classes.shape[1], device=classes.device)
        on_object = (batch["seed_instance"][:, None, :] == slots[None, :, None]).float()  # b O m
        seeds = on_object.sum(-1)  # b O
        weights = on_object / seeds.clamp(min=1)[..., None]
        probabilities = output.logits.float().softmax(dim=1)  # b C+1 m
        predicted = torch.einsum("bcm,bom->boc", probabilities, weights).argmax(-1)  # b O
        centres = torch.einsum("bmk,bom->bok", output.centres.float(), weights)  # b O 3
        error = (centres - batch["object_centre"]).norm(dim=-1)
        class_correct = (predicted == classes + 1) & (seeds > 0)
        values = {"correct": class_correct & (error < CENTRE_TOLERANCE), "class_correct": class_correct,
                  "centre_error": error, "seeds": seeds, "points": batch["object_points"]}
        for key, value in values.items():
            results.setdefault(key, []).append(value[classes >= 0].cpu())
    return {key: torch.cat(values) for key, values in results.items()}


def in_sparsity_bucket(points: Tensor, bucket: str) -> Tensor:
    """Which objects, given their numbers of cloud ``points``, fall in ``SPARSITY_BUCKETS[bucket]``."""
    if bucket not in SPARSITY_BUCKETS:
        raise ValueError(f"bucket must be one of {list(SPARSITY_BUCKETS)}, got {bucket!r}")
    low, high = SPARSITY_BUCKETS[bucket]
    members = points >= low
    return members if high is None else members & (points <= high)


def detection_accuracy_by_sparsity(detections: Mapping[str, Tensor], key: str = "correct"
                                   ) -> dict[str, tuple[float, int]]:
    """Per ``SPARSITY_BUCKETS`` bucket: the share of objects with ``detections[key]`` true ("correct":
    detected; "class_correct": the class alone), and how many objects."""
    table = {}
    for name in SPARSITY_BUCKETS:
        members = in_sparsity_bucket(detections["points"], name)
        count = int(members.sum())
        table[name] = (detections[key][members].float().mean().item() if count else float("nan"), count)
    return table


def substitution_share(model: PointImageTokenFusion, data: Mapping[str, Tensor],
                       device: torch.device | None = None) -> list[float]:
    """Per layer, the share of point tokens with a patch that read the image: what ``"random"`` is given."""
    if model.fusion == POINT_ONLY:
        raise ValueError("the point-only model reads no image: it has no substitution share")
    substituted, with_patch = [], []
    for _, output in model_outputs(model, data, device):
        substituted.append(torch.stack(output.substituted).sum((1, 2)).cpu())  # per layer
        with_patch.append(output.has_patch.sum().cpu())
    return (torch.stack(substituted).sum(0) / torch.stack(with_patch).sum()).tolist()
