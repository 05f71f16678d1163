import re

import pytest
import torch

from fusion_edu.datasets.referring import (
    COLOURS,
    EXPRESSION_TYPES,
    HELD_OUT,
    SHAPES,
    VOCABULARY,
    WORD_SWAPS,
    ReferringConfig,
    _Object,
    counterfactual_scenes,
    generate_referring_scenes,
    load_referring_scenes,
    new_expressions,
    object_masks,
    resolve,
    scene_objects,
    tokenize,
    validate_referring,
)

MARGIN = ReferringConfig().relation_margin


@pytest.fixture(scope="module")
def scenes():
    return generate_referring_scenes(300, [5, 0])


def test_generation_is_deterministic_and_seeded(scenes):
    again = generate_referring_scenes(300, [5, 0])
    assert again["expression"] == scenes["expression"]
    assert all(torch.equal(scenes[key], again[key]) for key in scenes if key != "expression")
    other = generate_referring_scenes(300, [6, 0])
    assert other["expression"] != scenes["expression"]


def test_every_expression_picks_out_exactly_its_target(scenes):
    for index, expression in enumerate(scenes["expression"]):
        objects = scene_objects(scenes, index)
        assert resolve(expression, objects, MARGIN) == [scenes["target"][index].item()], expression


def test_the_mask_is_the_targets_pixels_in_the_targets_colour(scenes):
    image = scenes["image"].float() / 255
    for index in range(0, 300, 7):
        target = scenes["target"][index]
        paint = torch.tensor(COLOURS[list(COLOURS)[scenes["object_colour"][index, target]]])
        inside = image[index][:, scenes["mask"][index]]  # 3 pixels
        assert inside.shape[1] > 0
        assert (inside - paint[:, None]).abs().max() <= ReferringConfig().colour_jitter + 1 / 255


def test_objects_never_overlap_so_each_mask_is_one_objects_own(scenes):
    for index in range(len(scenes["expression"])):
        masks = object_masks(scenes, index)
        assert masks.sum(0).max() == 1 and (masks.flatten(1).sum(1) > 0).all(), index


def test_the_types_are_equally_common_and_a_relations_target_has_no_other_name(scenes):
    counts = torch.bincount(scenes["expression_type"], minlength=len(EXPRESSION_TYPES))
    assert (counts > 0.25 * len(scenes["image"])).all(), counts  # a third each, drawn
    relations = 0
    for index, expression in enumerate(scenes["expression"]):
        if EXPRESSION_TYPES[scenes["expression_type"][index]] == "relation":
            relations += 1
            objects, target = scene_objects(scenes, index), scenes["target"][index]
            head = re.split(r" (?:left of|right of|above|below) ", expression)[0]
            assert len(resolve(head, objects, MARGIN)) >= 2, expression
            twin = objects[target]
            full_name = f"the {twin.size} {twin.colour} {twin.shape}"  # every attribute: still two or more
            assert len(resolve(full_name, objects, MARGIN)) >= 2, (expression, objects)
    assert relations == counts[EXPRESSION_TYPES.index("relation")] > 0


def test_resolve_reads_the_grammar_on_a_scene_built_by_hand():
    objects = [_Object("circle", "red", "small", 10, 30, 5), _Object("circle", "green", "large", 50, 30, 11),
               _Object("square", "blue", "large", 30, 50, 11)]
    assert resolve("the circle", objects, MARGIN) == [0, 1]
    assert resolve("the red circle", objects, MARGIN) == [0]
    assert resolve("the circle left of the blue square", objects, MARGIN) == [0]
    assert resolve("the circle right of the square", objects, MARGIN) == [1]
    assert resolve("the circle above the square", objects, MARGIN) == [0, 1]  # both: not a referring one
    near = [*objects, _Object("circle", "yellow", "small", 27, 10, 5)]  # left of the square by 3 px only
    assert resolve("the circle left of the blue square", near, MARGIN) == []  # too close to call
    assert resolve("the circle left of the blue square", near, 2.0) == [0, 3]
    across = [*objects, _Object("circle", "yellow", "small", 33, 10, 5)]  # right of the centre: not left
    assert resolve("the circle left of the blue square", across, MARGIN) == [0]
    assert resolve("the largest circle", objects, MARGIN) == [1]
    assert resolve("the largest object", objects, MARGIN) == []  # two large objects: no clear winner
    assert resolve("the lowest object", objects, MARGIN) == [2]
    with pytest.raises(ValueError, match="starts with 'the'"):
        resolve("a circle", objects, MARGIN)


def test_held_out_combinations_occur_only_in_the_unseen_split_and_are_its_targets(tmp_cache):
    held_out = {(list(COLOURS).index(colour), SHAPES.index(shape)) for colour, shape in HELD_OUT}
    for split in ("train", "test", "unseen"):
        data = load_referring_scenes(split, num_scenes=150)
        real = data["object_shape"] >= 0
        combinations = {(c, s) for c, s in zip(data["object_colour"][real].tolist(),
                                                data["object_shape"][real].tolist(), strict=True)}
        rows = torch.arange(150)
        targets = set(zip(data["object_colour"][rows, data["target"]].tolist(),
                          data["object_shape"][rows, data["target"]].tolist(), strict=True))
        if split == "unseen":
            assert targets == held_out, targets
        else:
            assert not combinations & held_out
            assert len(combinations) == len(COLOURS) * len(SHAPES) - len(held_out)
    train = load_referring_scenes("train", num_scenes=150)
    new = new_expressions(data, train)
    assert new.dtype == torch.bool and new.shape == (150,) and 0 < new.sum() < 150
    assert not new_expressions(train, train).any()
    seen = set(train["expression"])
    assert all((expression not in seen) == bool(flag) for expression, flag in zip(data["expression"], new,
                                                                                  strict=True))


def test_tokenize_pads_masks_and_maps_unknown_words():
    ids, mask = tokenize(["the red circle", "the Circle left of the blue square"], max_words=8)
    index = {word: i for i, word in enumerate(VOCABULARY)}
    assert ids[0].tolist() == [index["the"], index["red"], index["circle"]] + [index["<pad>"]] * 5
    assert mask.sum(1).tolist() == [3, 7] and not mask[0, 3:].any()
    assert ids[1, 1] == index["circle"]  # lower-cased
    with pytest.warns(UserWarning, match=r"mapped to <unk>: \['purple'\]"):
        unknown, _ = tokenize(["the purple circle"])
    assert unknown[0, 1] == index["<unk>"]
    with pytest.raises(ValueError, match="expression 1 is empty"):
        tokenize(["the circle", "  "])
    with pytest.raises(ValueError, match="4 words, more than max_words = 3"):
        tokenize(["the small red circle"], max_words=3)


def test_load_caches_and_validates(tmp_cache):
    first = load_referring_scenes("val", num_scenes=20)
    assert any(tmp_cache.glob("referring-val-*.pt"))
    again = load_referring_scenes("val", num_scenes=20)
    assert again["expression"] == first["expression"] and torch.equal(again["mask"], first["mask"])
    broken = {**first, "mask": first["mask"][:, :10]}
    with pytest.raises(ValueError, match=r"one bool mask \(n, H, W\) = \(20, 64, 64\) per image"):
        validate_referring(broken)
    with pytest.raises(ValueError, match="one expression per image"):
        validate_referring({**first, "expression": first["expression"][:3]})
    with pytest.raises(ValueError, match="min_objects <= max_objects"):
        generate_referring_scenes(2, 0, ReferringConfig(min_objects=3, max_objects=2))


def test_counterfactual_edits_swap_one_word_and_name_exactly_one_other_object(scenes):
    edited = counterfactual_scenes(scenes)
    assert 0.5 * len(scenes["expression"]) < len(edited["expression"]) <= len(scenes["expression"])
    for row, source in enumerate(edited["source"].tolist()):
        before, after = scenes["expression"][source].split(), edited["expression"][row].split()
        changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
        assert len(changed) == 1 and any(set(changed[0]) <= set(group) for group in WORD_SWAPS)
        target = int(edited["target"][row])
        assert resolve(edited["expression"][row], scene_objects(scenes, source), MARGIN) == [target]
        assert target != int(scenes["target"][source])
        assert torch.equal(edited["mask"][row], object_masks(scenes, source)[target])
        assert torch.equal(edited["image"][row], scenes["image"][source])
    assert torch.equal(object_masks(scenes, 0)[scenes["target"][0]], scenes["mask"][0])
    alone = {key: value[:1] for key, value in scenes.items() if key != "expression"}
    with pytest.raises(ValueError, match="none of the 1 expressions has a one-word edit"):
        counterfactual_scenes({**alone, "expression": ["the object left of the object"]})
