"""The claims notebook 07 (LAVT) makes, re-checked over three seeds with the notebook's recipe.

Training and test scenes, initialisation and shuffling all change with the seed.  Each seed trains LAVT
and the late-fusion baseline, both reading the expression through the frozen MiniLM, 10 epochs on 3,000
scenes, scored on 1,000 test scenes and on their one-word counterfactual edits (``counterfactual_scenes``).

- **The mask follows the words.**  With one word of the expression changed so that it names another
  object, the predicted mask moves onto that object: its mean IoU with the newly named object is at
  least ``FOLLOW_SHARE`` of what the same model reaches on the original expressions of the same scenes,
  and its IoU with the original target at most ``STAY_AT_MOST``.  Objects do not overlap, so a mask that
  ignored the edit would score about 0 on the first and its ordinary IoU (0.5-0.6) on the second.
- **No ranking at this scale.**  LAVT and late fusion stay within ``COMPARABLE`` mIoU of each other on
  every seed.  Which one leads is not asserted: it moves with the machine (two recorded runs, LAVT - late
  = +0.051, -0.036, -0.017 at 2 threads; -0.010, -0.015, -0.004 at 1 thread).  No difference is
  detectable with 64 x 64 scenes, 10 epochs and a frozen MiniLM: three seeds neither confirm nor refute
  the paper's ranking (LAVT ahead, most on relations), and the notebook says so; this test holds the
  notebook to it, and fails the day a change opens a gap of ``COMPARABLE`` on a seed.

Seed 0 is the notebook's own run, trained in the shared cache (``data/models``, at the notebooks' thread
count, ``use_threads``): whichever of this test and the notebook comes first trains it, and the other
loads it.
"""

import pytest
import torch

from fusion_edu.datasets.referring import counterfactual_scenes, load_referring_scenes
from fusion_edu.lavt import PretrainedTextEncoder, predicted_masks, scores_by_expression_type
from fusion_edu.metrics import sample_iou
from fusion_edu.recipes import lavt_training, train_lavt
from fusion_edu.train import use_threads

pytestmark = pytest.mark.claims  # seed sweeps: minutes each; `pytest -m claims` runs them

SEEDS = (0, 1, 2)
FUSIONS = {"LAVT": "pwam", "late": "late"}
FOLLOW_SHARE = 0.8  # of the IoU on the original expressions
STAY_AT_MOST = 0.15
COMPARABLE = 0.06  # mIoU: about twice the standard deviation of LAVT's own score over the seeds (0.033)


def _summary(run: dict) -> dict[str, float]:
    by_type = {kind: scores["miou"] for kind, scores in run["scores"].items()}
    return {key: round(value, 3) for key, value in {**by_type, **run}.items() if key != "scores"}


@pytest.fixture(scope="module")
def lavt_runs() -> dict[int, dict[str, dict]]:
    """Per seed and model: test scores by expression type, and the counterfactual IoUs."""
    threads = torch.get_num_threads()
    use_threads()  # the notebook's thread count ($FUSION_EDU_THREADS, else the cores), as its run
    minilm = PretrainedTextEncoder()
    runs = {}
    try:
        for seed in SEEDS:
            train, test = load_referring_scenes("train", seed=seed), load_referring_scenes("test", seed=seed)
            edited = counterfactual_scenes(test)
            config, runs[seed] = lavt_training(seed), {}
            for name, fusion in FUSIONS.items():
                model, _ = train_lavt(f"{fusion}_minilm", train, config, fusion, minilm, progress=False)
                original = predicted_masks(model, test)
                moved = predicted_masks(model, edited)
                source = edited["source"]
                runs[seed][name] = {
                    "scores": scores_by_expression_type(original, test),
                    "original": sample_iou(original[source], test["mask"][source]).mean().item(),
                    "new_target": sample_iou(moved, edited["mask"]).mean().item(),
                    "old_target": sample_iou(moved, test["mask"][source]).mean().item()}
            print(f"seed {seed}:", {name: _summary(run) for name, run in runs[seed].items()})  # pytest -s
    finally:
        torch.set_num_threads(threads)
    return runs


def test_07_an_edited_word_moves_the_mask_onto_the_newly_named_object(lavt_runs):
    for seed, runs in lavt_runs.items():
        for name, run in runs.items():
            assert run["new_target"] > FOLLOW_SHARE * run["original"], (seed, name, run)
            assert run["old_target"] < STAY_AT_MOST, (seed, name, run)


def test_07_lavt_and_late_fusion_land_within_a_few_hundredths_on_every_seed(lavt_runs):
    gaps = [runs["LAVT"]["scores"]["all"]["miou"] - runs["late"]["scores"]["all"]["miou"]
            for runs in lavt_runs.values()]
    assert max(abs(gap) for gap in gaps) < COMPARABLE, gaps
