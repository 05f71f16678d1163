"""The claims notebook 04 (heterogeneous TokenFusion) makes, re-checked over three seeds with the
notebook's recipe.

Data, initialisation and shuffling all change with the seed.  Each seed trains the point-only model and
the fused model (image tokens substitute low-scoring point tokens through the camera) on 3,000 scenes
and detects the objects of 1,000 test scenes (right class, centre within 0.2).

- The fused model detects more objects than the point-only model, overall and in every bucket of
  objects that have cloud points (1-8, 9-32, 33+).
- With the camera, the sparsest objects (1-8 cloud points) are detected more often than the point cloud
  alone detects objects with 9-32 points: the paper's Fig. 5 observation (sparse objects found with the
  image's help).
- Relative to what the cloud alone achieves, fusion gains more on the sparsest objects than on the
  densest (33+): measured 2.5-2.8x against 1.9-2.1x.  Against 9-32 points the ratios nearly tie on one
  seed (2.53 vs 2.50), so that is printed (``pytest -s``), not asserted.  In absolute terms the gain is
  *not* largest on the sparsest objects (a sparse object also misses on its centre, voted from one or
  two seeds, which the camera cannot give); the notebook says so.

Objects without any cloud point are undetected by both by construction (no seed lies on them), so that
bucket is not compared.
"""

import pytest
import torch

from fusion_edu.datasets import load_pointcloud_scenes
from fusion_edu.recipes import POINT_IMAGE, point_image_training, train_point_image
from fusion_edu.tokenfusion_heterogeneous import (
    PointImageTokenFusion,
    detection_accuracy_by_sparsity,
    detection_targets,
    object_detections,
)

pytestmark = pytest.mark.claims  # seed sweeps: minutes each; `pytest -m claims` runs them

SEEDS = (0, 1, 2)
MARGIN = 0.05  # detection share by which the fused model must lead (about 3,000 test objects)
WITH_POINTS = ("1-8", "9-32", "33+")
RATIO_MARGIN = 0.2  # fused / point-only detection share (measured gaps: 0.45 to 0.81)
SEEDS_PER_CLOUD, PATCH = POINT_IMAGE["num_seeds"], PointImageTokenFusion().patch_size


@pytest.fixture(scope="module")
def detection_tables(claims_cache) -> dict[int, dict[str, dict[str, tuple[float, int]]]]:
    """Per seed and model (seed 0 shared with notebook 04, the others in a private cache): ``{"all" and
    each sparsity bucket: (share detected, objects)}``."""
    tables = {}
    for seed in SEEDS:
        config = point_image_training(seed)
        with claims_cache("pointimage", seed):
            train, test = (detection_targets(load_pointcloud_scenes(split, seed=seed), SEEDS_PER_CLOUD, PATCH)
                           for split in ("train", "test"))
            tables[seed] = {}
            for name, fusion in (("point-only", False), ("fused", True)):
                model, _ = train_point_image(name, train, config, fusion=fusion, progress=False)
                found = object_detections(model, test, torch.device("cpu"))
                overall = (found["correct"].float().mean().item(), len(found["correct"]))
                tables[seed][name] = {"all": overall, **detection_accuracy_by_sparsity(found)}
        print(f"seed {seed}:", {name: {b: round(a, 3) for b, (a, _) in t.items()}  # pytest -s
                                for name, t in tables[seed].items()})
    return tables


def test_04_fused_detects_more_objects_overall_and_in_every_bucket_with_points(detection_tables):
    for seed, table in detection_tables.items():
        for bucket in ("all", *WITH_POINTS):
            fused, alone = table["fused"][bucket][0], table["point-only"][bucket][0]
            assert fused > alone + MARGIN, (seed, bucket, table)


def test_04_sparse_objects_gain_most_relative_to_the_cloud_alone(detection_tables):
    for seed, table in detection_tables.items():
        ratio = {b: round(table["fused"][b][0] / table["point-only"][b][0], 2) for b in WITH_POINTS}
        print(f"seed {seed}: fused / point-only by bucket", ratio)  # pytest -s
        assert table["fused"]["1-8"][0] > table["point-only"]["9-32"][0] + MARGIN, (seed, table)
        assert ratio["1-8"] > ratio["33+"] + RATIO_MARGIN, (seed, ratio)
