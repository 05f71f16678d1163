"""Referring scenes for LAVT (notebook 07): an image, an expression that names one object, its mask.

Each scene holds 2–4 flat shapes (``SHAPES``) in one of ``COLOURS``, small or large, on a noisy grey
background, never overlapping.  One object is the **target**, and an expression from a small grammar
picks it out, of one of three types (``EXPRESSION_TYPES``):

- **attribute**: the fewest of size, colour and shape that single it out — "the red circle", "the large
  object", "the small green square";
- **relation**: for a target that no attributes single out (another object has its size, colour and
  shape), a noun phrase for it (its shape alone, or its colour alone) placed by another object that its
  own phrase does — "the circle left of the blue square" (left of, right of, above, below: the centres
  differ by more than ``relation_margin`` pixels on that axis, and every other object the phrase names is
  not on that side of the anchor's centre at all: one that is, by no more than the margin, is too close to
  call, so the target leads every other candidate by the margin, as a superlative's winner does).  Without
  the relation, the target cannot be named at all;
- **superlative**: the extreme one among those sharing a noun phrase — "the leftmost circle", "the
  largest object", "the lowest red shape" (ahead of the runner-up by ``relation_margin`` pixels, or for
  size by one size class).

Each scene draws its expression type first, uniformly, then scenes until one has an expression of that
type, so the three types are equally common.  Every expression is checked at generation by ``resolve``, a
small interpreter of the same grammar: exactly one object of the scene satisfies it, the target.
Samples: ``image (n 3 H W)`` uint8, ``mask (n H W)`` bool (the target's pixels), ``expression`` (a list
of n strings), ``expression_type (n)`` (an index into ``EXPRESSION_TYPES``), and per object (padded with
-1 to ``MAX_OBJECTS``) ``object_shape``, ``object_colour``, ``object_size``, ``object_centre (n O 2)``
(x, y in pixels), ``object_radius`` and ``target (n)``, the target's slot; ``scene_objects`` rebuilds a
scene's objects from them, for ``resolve``.

**Unseen combinations.**  Three colour-shape combinations (``HELD_OUT``: a red triangle, a green circle, a
blue square; every colour and shape still occurs, only not together) never appear in the train, val or
test splits.  The ``"unseen"`` split is drawn as the others, with any combination, and its target is always
one of the held-out ones: a model must segment an object whose look (this colour on this shape) it never
saw, from words it saw only on other objects.  The expression strings are mostly not new (the fewest
attributes rarely name both colour and shape: on seed 0, the expressions of 93.0 % of the unseen split's
scenes, and of 96.0 % of test's, also occur in train); ``new_expressions`` marks the others, to be
scored apart.

``counterfactual_scenes`` edits one word of each expression (a colour, a shape, a size, a direction) so
that it names exactly one *other* object of the same scene, with that object's mask: what a model that
reads the expression must follow.

``tokenize`` turns expressions into word ids of ``VOCABULARY`` (every word the grammar can produce, plus
``<pad>`` and ``<unk>``), padded to a fixed length, with the attention mask that marks the real words.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from .cache import cached_split

__all__ = [
    "COLOURS",
    "EXPRESSION_TYPES",
    "HELD_OUT",
    "REFERRING_SPLIT_SIZES",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "VOCABULARY",
    "WORD_SWAPS",
    "ReferringConfig",
    "counterfactual_scenes",
    "generate_referring_scenes",
    "load_referring_scenes",
    "new_expressions",
    "object_masks",
    "resolve",
    "scene_objects",
    "tokenize",
    "validate_referring",
]

GENERATOR_VERSION = 2  # bump when the generator changes: cached sets become stale
SHAPES = ("square", "circle", "triangle")
COLOURS = {"red": (0.85, 0.2, 0.2), "green": (0.2, 0.7, 0.25), "blue": (0.2, 0.35, 0.9),
           "yellow": (0.9, 0.8, 0.2)}
SIZES = ("small", "large")
RELATIONS = ("left of", "right of", "above", "below")
SUPERLATIVES = ("leftmost", "rightmost", "highest", "lowest", "largest", "smallest")
EXPRESSION_TYPES = ("attribute", "relation", "superlative")
MAX_OBJECTS = 4
REFERRING_SPLIT_SIZES = {"train": 3000, "val": 500, "test": 1000, "unseen": 1000}
# colour-shape combinations no object of train, val or test has; the targets of the "unseen" split
HELD_OUT = (("red", "triangle"), ("green", "circle"), ("blue", "square"))
NOUNS = ("object", "shape")  # a noun phrase without a shape word ends in one of these
PAD, UNK = "<pad>", "<unk>"
VOCABULARY = (PAD, UNK, "the", *SIZES, *COLOURS, *SHAPES, *NOUNS, "left", "right", "of", "above", "below",
              *SUPERLATIVES)
MAX_WORDS = 12  # the longest expression the grammar makes has 9 words
# words a counterfactual edit may swap for another of the same group
WORD_SWAPS = (SIZES, tuple(COLOURS), SHAPES, ("left", "right"), ("above", "below"), ("leftmost", "rightmost"),
              ("highest", "lowest"), ("largest", "smallest"))


@dataclass(frozen=True)
class ReferringConfig:
    image_size: int = 64
    min_objects: int = 2
    max_objects: int = MAX_OBJECTS
    small_radius: tuple[float, float] = (5.0, 7.0)  # pixels: half the side of a square, a circle's radius
    large_radius: tuple[float, float] = (10.0, 13.0)
    gap: float = 2.0  # pixels between the circles that hold two objects (of radius _reach)
    relation_margin: float = 6.0  # pixels by which "left of", "leftmost" ... must hold
    colour_jitter: float = 0.06
    background_noise: float = 0.05
    unseen_targets: bool = False  # the "unseen" split: any combination, the target a HELD_OUT one


@dataclass(frozen=True)
class _Object:
    shape: str
    colour: str
    size: str
    x: float
    y: float
    radius: float


def load_referring_scenes(split: str, seed: int = 0, num_scenes: int | None = None,
                          config: ReferringConfig = ReferringConfig()) -> dict:
    """The ``split`` ("train", "val", "test" or "unseen") of the referring scenes, from the cache; the split
    sets ``config.unseen_targets`` (True for "unseen" only)."""
    config = replace(config, unseen_targets=split == "unseen")
    scenes = cached_split("referring", GENERATOR_VERSION, split, REFERRING_SPLIT_SIZES, seed, num_scenes,
                          config, generate_referring_scenes, "num_scenes")
    validate_referring(scenes)
    return scenes


def generate_referring_scenes(num_scenes: int, seed: int | Sequence[int],
                              config: ReferringConfig = ReferringConfig()) -> dict:
    """``num_scenes`` scenes from ``seed`` (no cache); keys as in the module docstring."""
    if not 2 <= config.min_objects <= config.max_objects <= MAX_OBJECTS:
        raise ValueError(f"need 2 <= min_objects <= max_objects <= {MAX_OBJECTS}, got "
                         f"{config.min_objects} and {config.max_objects}")
    rng = np.random.default_rng(seed)
    scenes = [_scene(rng, config) for _ in range(num_scenes)]
    stacked = {key: torch.stack([scene[key] for scene in scenes]) for key in scenes[0] if key != "expression"}
    return {**stacked, "expression": [scene["expression"] for scene in scenes]}


# --- the grammar: noun phrases, and what an expression refers to --------------------------------------

def _phrases(size: str | None, colour: str | None, shape: str | None) -> str:
    """"small red circle", "red object", "large shape"...: the words of a noun phrase, in English order."""
    return " ".join(word for word in (size, colour, shape or "object") if word)


def _matches(obj: _Object, size: str | None, colour: str | None, shape: str | None) -> bool:
    return (size in (None, obj.size)) and (colour in (None, obj.colour)) and (shape in (None, obj.shape))


def _parse_phrase(words: list[str]) -> tuple[str | None, str | None, str | None]:
    """Words of a noun phrase -> (size, colour, shape), each None when not said."""
    size = colour = shape = None
    for word in words:
        if word in SIZES:
            size = word
        elif word in COLOURS:
            colour = word
        elif word in SHAPES:
            shape = word
        elif word not in NOUNS:
            raise ValueError(f"not a word of a noun phrase: {word!r}")
    return size, colour, shape


def _key(obj: _Object, superlative: str) -> float:
    """The quantity a superlative maximises: larger x is "rightmost", larger y (down) is "lowest"."""
    return {"leftmost": -obj.x, "rightmost": obj.x, "highest": -obj.y, "lowest": obj.y,
            "largest": obj.radius, "smallest": -obj.radius}[superlative]


def _stands(a: _Object, relation: str, b: _Object, margin: float) -> bool:
    """Whether a is ``relation`` b (image coordinates: y grows downwards)."""
    return {"left of": a.x < b.x - margin, "right of": a.x > b.x + margin,
            "above": a.y < b.y - margin, "below": a.y > b.y + margin}[relation]


def _superlative_winner(objects: Sequence[_Object], members: list[int], superlative: str,
                        margin: float) -> int | None:
    """The member that is clearly the most ``superlative`` (ahead of the next by the margin), or None."""
    if len(members) < 2:
        return None
    ranked = sorted(members, key=lambda i: _key(objects[i], superlative), reverse=True)
    first, second = objects[ranked[0]], objects[ranked[1]]
    if superlative in ("largest", "smallest"):
        return ranked[0] if first.size != second.size else None
    return ranked[0] if _key(first, superlative) - _key(second, superlative) > margin else None


def resolve(expression: str, objects: Sequence[_Object], margin: float) -> list[int]:
    """The indices of the objects ``expression`` (a sentence of the grammar) can refer to."""
    words = expression.split()
    if words[:1] != ["the"]:
        raise ValueError(f"an expression starts with 'the', got {expression!r}")
    words = words[1:]
    if words and words[0] in SUPERLATIVES:
        members = [i for i, o in enumerate(objects) if _matches(o, *_parse_phrase(words[1:]))]
        winner = _superlative_winner(objects, members, words[0], margin)
        return [] if winner is None else [winner]
    text = " ".join(words)
    for relation in RELATIONS:
        if f" {relation} the " in text:
            left, right = text.split(f" {relation} the ")
            anchors = resolve(f"the {right}", objects, margin)
            if len(anchors) != 1:
                return []
            anchor = objects[anchors[0]]
            candidates = [i for i, o in enumerate(objects)
                          if i != anchors[0] and _matches(o, *_parse_phrase(left.split()))]
            if any(_stands(objects[i], relation, anchor, 0.0)
                   and not _stands(objects[i], relation, anchor, margin)
                   for i in candidates):
                return []  # one of them stands so by less than the margin: too close to call
            return [i for i in candidates if _stands(objects[i], relation, anchor, margin)]
    return [i for i, o in enumerate(objects) if _matches(o, *_parse_phrase(words))]


def _attribute_expressions(objects: Sequence[_Object], target: int) -> list[str]:
    """Noun phrases naming only the target, using the fewest attributes that do."""
    obj, found = objects[target], []
    for count in range(1, 4):
        for chosen in itertools.combinations(("size", "colour", "shape"), count):
            said = (getattr(obj, a) if a in chosen else None for a in ("size", "colour", "shape"))
            phrase = _phrases(*said)
            if [i for i, o in enumerate(objects) if _matches(o, *_parse_phrase(phrase.split()))] == [target]:
                found.append(f"the {phrase}")
        if found:
            return found
    return found


def _relation_expressions(objects: Sequence[_Object], target: int, margin: float) -> list[str]:
    """"the <phrase> <relation> the <anchor>", for a target no attribute expression singles out."""
    obj, found = objects[target], []
    if _attribute_expressions(objects, target):
        return found  # its attributes would do: not a relation expression
    for anchor in range(len(objects)):
        if anchor == target:
            continue
        anchor_phrases = _attribute_expressions(objects, anchor)
        for relation in RELATIONS:
            if not _stands(obj, relation, objects[anchor], margin):
                continue
            for phrase in (_phrases(None, None, obj.shape), _phrases(None, obj.colour, None)):
                for anchor_phrase in anchor_phrases:
                    expression = f"the {phrase} {relation} {anchor_phrase}"
                    if resolve(expression, objects, margin) == [target]:
                        found.append(expression)
    return found


def _superlative_expressions(objects: Sequence[_Object], target: int, margin: float) -> list[str]:
    obj, found = objects[target], []
    for superlative in SUPERLATIVES:
        for phrase in ("object", _phrases(None, None, obj.shape), _phrases(None, obj.colour, "shape")):
            expression = f"the {superlative} {phrase}"
            if resolve(expression, objects, margin) == [target]:
                found.append(expression)
    return found


def _expressions(kind: int, objects: Sequence[_Object], target: int, config: ReferringConfig) -> list[str]:
    """Every expression of type ``EXPRESSION_TYPES[kind]`` that names the target."""
    if EXPRESSION_TYPES[kind] == "attribute":
        return _attribute_expressions(objects, target)
    if EXPRESSION_TYPES[kind] == "relation":
        return _relation_expressions(objects, target, config.relation_margin)
    return _superlative_expressions(objects, target, config.relation_margin)


# --- the picture ---------------------------------------------------------------------------------------

def _place_objects(rng: np.random.Generator, config: ReferringConfig) -> list[_Object]:
    """2-4 objects apart from each other; no HELD_OUT combination unless ``config.unseen_targets``."""
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    objects: list[_Object] = []
    while len(objects) < count:
        size = SIZES[rng.integers(len(SIZES))]
        radius = float(rng.uniform(*(config.small_radius if size == "small" else config.large_radius)))
        x, y = rng.uniform(radius, config.image_size - radius, size=2)
        shape, colour = SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))]
        candidate = _Object(shape, colour, size, float(x), float(y), radius)
        apart = all(np.hypot(x - o.x, y - o.y) > _reach(candidate) + _reach(o) + config.gap for o in objects)
        if apart and (config.unseen_targets or (colour, shape) not in HELD_OUT):
            objects.append(candidate)
    return objects


def _reach(obj: _Object) -> float:
    """How far the object's pixels reach from its centre: a square's corners and a triangle's base corners
    lie outside the circle of its ``radius``."""
    return obj.radius * _REACH[obj.shape]


def _targets(objects: Sequence[_Object], config: ReferringConfig) -> list[int]:
    """The objects a scene's expression may name: any, or in the "unseen" split the HELD_OUT ones."""
    return [i for i, o in enumerate(objects) if not config.unseen_targets or (o.colour, o.shape) in HELD_OUT]


# a triangle's base corners: (±1.5 · √3/2 · r, r/2) from the centre (see _pixels)
_REACH = {"square": np.sqrt(2), "circle": 1.0, "triangle": float(np.hypot(1.5 * np.sqrt(3) / 2, 0.5))}


def _pixels(obj: _Object, size: int) -> np.ndarray:
    """The object's pixels ``(H, W)`` bool, from the pixel centres."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = x - obj.x, y - obj.y
    if obj.shape == "square":
        return (np.abs(dx) <= obj.radius) & (np.abs(dy) <= obj.radius)
    if obj.shape == "circle":
        return dx**2 + dy**2 <= obj.radius**2
    # an upright triangle inside the bounding circle: apex on top, base below
    top, bottom = -obj.radius, obj.radius * 0.5
    half_width = (dy - top) / (bottom - top) * obj.radius * np.sqrt(3) / 2 * 1.5
    return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= half_width)


def _scene(rng: np.random.Generator, config: ReferringConfig) -> dict:
    kind = int(rng.integers(len(EXPRESSION_TYPES)))
    while True:
        objects = _place_objects(rng, config)
        targets = _targets(objects, config)
        if not targets:
            continue
        target = targets[rng.integers(len(targets))]
        found = _expressions(kind, objects, target, config)
        if found:
            break
    expression = found[rng.integers(len(found))]
    size = config.image_size
    image = 0.5 + config.background_noise * rng.standard_normal((size, size, 3))
    masks = [_pixels(obj, size) for obj in objects]
    for obj, mask in zip(objects, masks, strict=True):
        colour = np.array(COLOURS[obj.colour]) + rng.uniform(-config.colour_jitter, config.colour_jitter, 3)
        image[mask] = colour
    padding = MAX_OBJECTS - len(objects)

    def padded(values: list) -> Tensor:
        return torch.tensor(values + [-1] * padding)

    return {"image": torch.from_numpy((image.clip(0, 1) * 255).round().astype(np.uint8)).permute(2, 0, 1),
            "mask": torch.from_numpy(masks[target]), "expression": expression,
            "expression_type": torch.tensor(kind), "target": torch.tensor(target),
            "object_shape": padded([SHAPES.index(o.shape) for o in objects]),
            "object_colour": padded([list(COLOURS).index(o.colour) for o in objects]),
            "object_size": padded([SIZES.index(o.size) for o in objects]),
            "object_centre": torch.tensor([[o.x, o.y] for o in objects] + [[-1.0, -1.0]] * padding,
                                          dtype=torch.float64),
            "object_radius": torch.tensor([o.radius for o in objects] + [-1.0] * padding,
                                          dtype=torch.float64)}


def new_expressions(scenes: Mapping, train: Mapping) -> Tensor:
    """``(n)`` bool: which of ``scenes``' expressions never occur, as a string, among ``train``'s."""
    seen = set(train["expression"])
    return torch.tensor([expression not in seen for expression in scenes["expression"]])


def scene_objects(scenes: Mapping, index: int) -> list[_Object]:
    """The objects of scene ``index``, rebuilt from the stored attributes (what ``resolve`` reads)."""
    count = int((scenes["object_shape"][index] >= 0).sum())
    colours = list(COLOURS)
    return [_Object(SHAPES[scenes["object_shape"][index, i]], colours[scenes["object_colour"][index, i]],
                    SIZES[scenes["object_size"][index, i]], *scenes["object_centre"][index, i].tolist(),
                    scenes["object_radius"][index, i].item()) for i in range(count)]


def object_masks(scenes: Mapping, index: int) -> Tensor:
    """The pixels ``(O H W)`` bool of each object of scene ``index``, in slot order."""
    size = scenes["image"].shape[-1]
    return torch.from_numpy(np.stack([_pixels(obj, size) for obj in scene_objects(scenes, index)]))


def _one_word_edits(expression: str, objects: Sequence[_Object], target: int, margin: float
                    ) -> list[tuple[str, int]]:
    """``(edited expression, the object it names)`` for every one-word swap naming one other object."""
    words, edits = expression.split(), []
    for position, word in enumerate(words):
        group = next((group for group in WORD_SWAPS if word in group), ())
        for other in group:
            edited = " ".join([*words[:position], other, *words[position + 1:]])
            named = resolve(edited, objects, margin) if other != word else []
            if len(named) == 1 and named[0] != target:
                edits.append((edited, named[0]))
    return edits


def counterfactual_scenes(scenes: Mapping, config: ReferringConfig = ReferringConfig()) -> dict:
    """For each scene whose expression has a one-word edit (``WORD_SWAPS``) naming exactly one other object
    (checked by ``resolve``), the same scene with the first such edit: the edited ``expression``, the new
    ``target`` and ``mask``, and ``source``, the scene's index in ``scenes``."""
    validate_referring(scenes)
    rows, expressions, targets = [], [], []
    for index, expression in enumerate(scenes["expression"]):
        edits = _one_word_edits(expression, scene_objects(scenes, index), int(scenes["target"][index]),
                                config.relation_margin)
        if edits:
            rows.append(index)
            expressions.append(edits[0][0])
            targets.append(edits[0][1])
    if not rows:
        raise ValueError(f"none of the {len(scenes['expression'])} expressions has a one-word edit that "
                         "names exactly one other object")
    source = torch.tensor(rows, dtype=torch.long)
    edited = {key: value[source] for key, value in scenes.items() if key != "expression"}
    masks = [object_masks(scenes, row)[target] for row, target in zip(rows, targets, strict=True)]
    return {**edited, "expression": expressions, "target": torch.tensor(targets), "mask": torch.stack(masks),
            "source": source}


def validate_referring(scenes: Mapping) -> None:
    """Check shapes and ranges; raise naming what came."""
    images, masks = scenes["image"], scenes["mask"]
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images of shape (n, 3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    if masks.shape != (len(images), *images.shape[2:]) or masks.dtype != torch.bool:
        raise ValueError(f"expected one bool mask (n, H, W) = {(len(images), *images.shape[2:])} per image, "
                         f"got {masks.dtype} {tuple(masks.shape)}")
    if len(scenes["expression"]) != len(images):
        raise ValueError(f"expected one expression per image ({len(images)}), "
                         f"got {len(scenes['expression'])}")


def tokenize(expressions: Sequence[str], max_words: int = MAX_WORDS) -> tuple[Tensor, Tensor]:
    """Word ids ``(n max_words)`` (index into ``VOCABULARY``, ``<pad>`` = 0 after the last word) and the
    attention mask ``(n max_words)`` (True on real words).  Unknown words become ``<unk>``, with a
    warning naming them; an empty expression, or one longer than ``max_words``, raises."""
    index = {word: i for i, word in enumerate(VOCABULARY)}
    ids = torch.zeros(len(expressions), max_words, dtype=torch.long)
    unknown: set[str] = set()
    for row, expression in enumerate(expressions):
        words = expression.lower().split()
        if not words:
            raise ValueError(f"expression {row} is empty; expected at least one word")
        if len(words) > max_words:
            raise ValueError(f"expression {row} has {len(words)} words, more than max_words = {max_words}: "
                             f"{expression!r}")
        unknown.update(word for word in words if word not in index)
        ids[row, :len(words)] = torch.tensor([index.get(word, index[UNK]) for word in words])
    if unknown:
        warnings.warn(f"words not in the vocabulary, mapped to {UNK}: {sorted(unknown)}", stacklevel=2)
    return ids, ids != index[PAD]
