"""The claims notebook 04 (heterogeneous TokenFusion) makes, re-checked over three seeds with the
notebook's recipe.

Data, initialisation and shuffling all change with the seed.  Each seed trains notebook 04's five models
on 3,000 scenes (``train_point_image_models``): the point-only model, TokenFusion (image tokens substitute
low-scoring point tokens through the camera), and three controls that read the image through the same
camera without scores: the image added to every projected token, every projected token substituted, and
a random share substituted (TokenFusion's measured share per layer).  Each detects the objects of 1,000
test scenes (right class, centre within 0.2).

- TokenFusion detects more objects than the point-only model, overall and in every bucket of objects
  that have cloud points (1-8, 9-32, 33+).
- With the camera, the sparsest objects (1-8 cloud points) are detected more often than the point cloud
  alone detects objects with 9-32 points: the paper's Fig. 5 observation (sparse objects found with the
  image's help).  Relative to the cloud alone, the gain on the sparsest objects against the densest
  (33+) is printed, not asserted: 2.2-2.6x against 2.2-2.3x, equal on one seed of a clean clone's run.
- Every control that reads the image beats the point cloud alone by the same kind of margin: the gain
  comes from the camera's alignment, whichever rule reads the image.
- **TokenFusion's scores add nothing detectable here.**  TokenFusion keeps some tokens it could
  substitute (in some layer, fewer than ``SELECTIVE`` of them go), and the random control substitutes as
  often.  Against each control, TokenFusion does not lead on every seed, and a paired t-test over the
  three seeds (``paired_difference``) finds no lead at 5 %.  (In a recorded run it trailed the added
  image on every seed, by 0.016 to 0.024, which the paired test called real; the other two gaps it did
  not.  A 0.02 gap is about what another machine moves a trained model by, so only "no lead" is
  asserted.)  The test fails the day a change gives TokenFusion a lead the seeds agree on.

Objects without any cloud point are undetected by every model by construction (no seed lies on them), so
that bucket is not compared.
"""

import pytest
import torch

from fusion_edu.datasets import load_pointcloud_scenes
from fusion_edu.metrics import paired_difference
from fusion_edu.recipes import POINT_IMAGE, point_image_training, train_point_image_models
from fusion_edu.sweeps import record_sweep
from fusion_edu.tokenfusion_heterogeneous import (
    PointImageTokenFusion,
    detection_accuracy_by_sparsity,
    detection_targets,
    object_detections,
    substitution_share,
)

pytestmark = pytest.mark.claims  # seed sweeps: minutes each; `pytest -m claims` runs them

SEEDS = (0, 1, 2)
MARGIN = 0.05  # detection share by which a model must lead (about 3,000 test objects)
WITH_POINTS = ("1-8", "9-32", "33+")
CONTROLS = ("additive", "substitute all", "random")
SELECTIVE = 0.98  # TokenFusion substitutes fewer than this share of the tokens with a patch, in some layer
SHARE_TOLERANCE = 0.05  # the random control's share (measured on training scenes) vs TokenFusion's on test
SEEDS_PER_CLOUD, PATCH = POINT_IMAGE["num_seeds"], PointImageTokenFusion().patch_size
GROUP = POINT_IMAGE["group_size"]


@pytest.fixture(scope="module")
def detection_tables(claims_cache) -> dict[int, dict[str, dict[str, tuple[float, int]]]]:
    """Per seed and model (seed 0 shared with notebook 04, the others in a private cache): ``{"all" and
    each sparsity bucket: (share detected, objects)}``."""
    tables = {}
    for seed in SEEDS:
        with claims_cache("pointimage", seed):
            train, test = (detection_targets(load_pointcloud_scenes(split, seed=seed), SEEDS_PER_CLOUD, PATCH,
                                             GROUP) for split in ("train", "test"))
            models, _ = train_point_image_models(train, point_image_training(seed), progress=False)
            tables[seed] = {"share": {"TokenFusion": substitution_share(models["TokenFusion"], test),
                                      "random": list(models["random"].random_share)}}
            for name, model in models.items():
                found = object_detections(model, test, torch.device("cpu"))
                overall = (found["correct"].float().mean().item(), len(found["correct"]))
                tables[seed][name] = {"all": overall, **detection_accuracy_by_sparsity(found)}
        scores = {name: {b: round(a, 3) for b, (a, _) in t.items()} for name, t in tables[seed].items()
                  if name != "share"}
        print(f"seed {seed}:", scores, tables[seed]["share"])  # pytest -s
        detected = {name: {"detected": table["all"][0]} for name, table in tables[seed].items()
                    if name != "share"}
        record_sweep("point_image", seed, detected, "04", "detected", "notebook 04's recipe")
    return tables


def test_04_tokenfusion_detects_more_objects_overall_and_in_every_bucket_with_points(detection_tables):
    for seed, table in detection_tables.items():
        for bucket in ("all", *WITH_POINTS):
            fused, alone = table["TokenFusion"][bucket][0], table["point-only"][bucket][0]
            assert fused > alone + MARGIN, (seed, bucket, table)


def test_04_with_the_image_sparse_objects_are_found_more_often_than_denser_ones_without(detection_tables):
    for seed, table in detection_tables.items():
        fused, alone = table["TokenFusion"], table["point-only"]
        ratio = {b: round(fused[b][0] / alone[b][0], 2) for b in WITH_POINTS}
        print(f"seed {seed}: TokenFusion / point-only by bucket", ratio)  # pytest -s
        assert fused["1-8"][0] > alone["9-32"][0] + MARGIN, (seed, table)


def test_04_every_control_that_reads_the_image_beats_the_cloud_alone(detection_tables):
    for seed, table in detection_tables.items():
        for control in CONTROLS:
            for bucket in ("all", *WITH_POINTS):
                alone = table["point-only"][bucket][0]
                assert table[control][bucket][0] > alone + MARGIN, (seed, control, bucket, table)


def test_04_tokenfusion_selects_and_the_random_control_substitutes_as_often(detection_tables):
    """The comparison with the controls means something only if TokenFusion keeps some of the tokens it could
    substitute (else it is "substitute all" by construction), and the random control is given its share."""
    for seed, table in detection_tables.items():
        tokenfusion, random = table["share"]["TokenFusion"], table["share"]["random"]
        assert min(tokenfusion) < SELECTIVE, (seed, tokenfusion)
        gap = max(abs(a - b) for a, b in zip(tokenfusion, random, strict=True))
        assert gap < SHARE_TOLERANCE, (seed, tokenfusion, random)


def test_04_tokenfusion_leads_none_of_its_controls(detection_tables):
    def overall(name: str) -> list[float]:
        return [table[name]["all"][0] for table in detection_tables.values()]

    for control in CONTROLS:
        difference = paired_difference(overall("TokenFusion"), overall(control))
        print(f"TokenFusion - {control}: {[round(d, 3) for d in difference.differences]}, mean "  # pytest -s
              f"{difference.mean:+.3f}, t = {difference.t:.2f}, detectable {difference.detectable:.3f}")
        assert not all(d > 0 for d in difference.differences), (control, difference)
        assert not (difference.significant and difference.mean > 0), (control, difference)
