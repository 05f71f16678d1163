"""The claims notebook 07 (LAVT) makes, re-checked over three seeds with the notebook's recipe.

CI (``.ci/run``) leaves this sweep out: it takes about 26 minutes of one core (the seven models it trains
beyond notebook 07's, their data and their scoring), and with it CI ran past its 90 minutes.  Run it by
hand: ``pytest -m claims tests/test_claims_lavt.py``.

Training and test scenes, initialisation and shuffling all change with the seed.  Each seed trains LAVT and
its two controls, all reading the expression through the frozen MiniLM, 10 epochs on 3,000 scenes, scored
on 1,000 test scenes and on their one-word counterfactual edits (``counterfactual_scenes``):

- **gates closed**: the same LAVT with S_i = 0 (E_i = V_i), so PWAM's F_i reach the decoder only.  It
  differs from LAVT in one thing, where language enters: the control for the paper's early-fusion claim.
- **late fusion**: one sentence vector multiplied into each stage's features for the decoder (no PWAM).

and, for the diagnosis of the gates, on seed 0 only (``DIAGNOSIS_SEED``), LAVT once more with its gates'
weights at ``GATE_LR_FACTOR`` times the learning rate (everything else as LAVT's).

- **The mask follows the words.**  With one word of the expression changed so that it names another
  object, the predicted mask moves onto that object: its mean IoU with the newly named object is at
  least ``FOLLOW_SHARE`` of what the same model reaches on the original expressions of the same scenes,
  and its IoU with the original target at most ``STAY_AT_MOST``.  Objects do not overlap, so a mask that
  ignored the edit would score about 0 on the first and its ordinary IoU (0.58-0.64) on the second.
- **Early fusion adds nothing detectable; pixel-word attention leads a sentence vector on relations.**
  Against its gates-closed control (the same PWAM features, to the decoder only) LAVT does not lead on
  every seed, is not detectably ahead (paired t-test over the three seeds, ``paired_difference``), and its
  mean is not above the control's by more than ``NOT_AHEAD`` (recorded run: -0.041 / -0.007 / -0.042).
  Against sentence-vector late fusion the overall gap is small, within ``SMALL_GAP`` on the mean (recorded:
  +0.013 / +0.013 / +0.003, t 2.7, not significant at 5 %; on the first version of the scenes its sign on
  a seed moved with the machine), and
  on relation expressions both PWAM models lead late fusion on the mean over seeds by more than
  ``RELATION_LEAD`` (recorded: LAVT +0.074 / +0.034 / +0.022, gates closed +0.105 / +0.034 / +0.090).
- **Objects of unseen colour-shape combinations are found far less well.**  Every model's mIoU on the
  ``"unseen"`` split is below its test mIoU by more than ``UNSEEN_DROP`` on every seed (recorded: 0.15-0.19).
- **The early gates stay nearly shut, and what that means.**  On every seed LAVT's stage-1 gate opens to a
  mean |S_1| under ``SHUT``, its stage-3 gate past ``OPEN``.  Not saturation: stage 1's gate works in tanh's
  linear range (mean slope above ``LINEAR``).  The gate reads F_1, far smaller than F_3 (root mean square
  under ``SMALL`` of F_3's), so weights of similar size open it far less; and its W_2 moved little: mean
  |w| under ``USED_AT_MOST`` of Σ lr, how far AdamW could carry a weight whose gradient kept one sign (the
  loss gave it no consistent push).  On seed 0, at ``GATE_LR_FACTOR`` times the learning rate the same gate
  opens at least ``WIDER`` times as far as at 1x and past ``SHUT``, and the score stays within ``SAME`` of
  LAVT's: the gates can open.  One seed shows that; it cannot rank the two recipes, so the score difference
  is a bound, not a comparison.  (A recorded run of the diagnosis on all three seeds, 3 December 2026, 1
  thread: stage 1 opened to 0.159 / 0.153 / 0.867 against 0.008 / 0.007 / 0.004 at 1x, and mIoU moved by
  -0.012 / -0.020 / +0.014, paired t -0.57: no detectable change.  Seeds 1 and 2 of the diagnosis would cost
  7 more minutes.)

Seed 0's LAVT, gates-closed and late-fusion models are the notebook's own run, trained in the shared cache
(``data/models``, at the notebooks' thread count, ``use_threads``): whichever of this test and the notebook
comes first trains them, and the other loads them.
"""

import pytest
import torch

from fusion_edu.datasets.referring import (
    REFERRING_SPLIT_SIZES,
    counterfactual_scenes,
    load_referring_scenes,
    new_expressions,
)
from fusion_edu.lavt import (
    PretrainedTextEncoder,
    pathway_statistics,
    predicted_masks,
    scores_by_expression_type,
)
from fusion_edu.metrics import PairedDifference, paired_difference, sample_iou
from fusion_edu.recipes import GATE_LR_FACTOR, lavt_training, train_lavt
from fusion_edu.sweeps import record_sweep
from fusion_edu.train import total_learning_rate, use_threads

pytestmark = pytest.mark.claims  # seed sweeps: minutes each; `pytest -m claims` runs them

SEEDS = (0, 1, 2)
# name: (fusion, the gates' learning-rate factor, the cache name)
MODELS = {"LAVT": ("pwam", 1.0, "pwam_minilm"), "gates closed": ("closed_gates", 1.0, "closed_gates_minilm"),
          "late": ("late", 1.0, "late_minilm")}
FASTER_GATES = "LAVT, gates at 10x lr"  # the diagnosis, trained on DIAGNOSIS_SEED only
DIAGNOSIS = {FASTER_GATES: ("pwam", GATE_LR_FACTOR, "pwam_minilm_gates_lr10")}
DIAGNOSIS_SEED = 0
PWAM_MODELS = ("LAVT", "gates closed")
NOT_AHEAD = 0.02  # LAVT's mean lead over the gates-closed control may not exceed this
SMALL_GAP = 0.03  # |LAVT - late fusion| in mIoU, mean over seeds
RELATION_LEAD = 0.02  # a PWAM model's mean lead over late fusion on relation expressions
UNSEEN_DROP = 0.1  # test mIoU - unseen-split mIoU, every model and seed
FOLLOW_SHARE = 0.8  # of the IoU on the original expressions
STAY_AT_MOST = 0.15
# Mean |S_i| of a gate nearly shut, and open.  Stage 1 measured 0.004-0.008 on seeds 0-2 at 1 thread with AVX2
# kernels, but 0.066 on seed 0 at 2 threads with AVX-512 ones (notebook 07, 4 Dec 2026); stage 3 about 0.5-1
SHUT, OPEN = 0.1, 0.2
# Stage 1's gate at GATE_LR_FACTOR times the lr on seed 0: 0.159 in the recorded run (0.008 at 1x), 20 times
# as far, the least of that run's three seeds (0.153-0.867 on seeds 0-2, 20-217 times); on the first version
# of the scenes 31-197 times on two CI-like machines, and 0.165 on seed 0 on a third.  Seed 0 is the one kept:
# its 1x models are notebook 07's, and exercise 3 trains the same 10x model
WIDER = 10
SAME = 0.05  # 10x lr - LAVT in mIoU on seed 0: -0.012 in the recorded run
LINEAR = 0.95  # mean tanh slope 1 - S² of a gate in tanh's linear range
SMALL = 0.25  # F_1's root mean square, as a share of F_3's (measured on seeds 0-2: 0.015-0.055)
USED_AT_MOST = 0.1  # stage 1's mean |W_2| as a share of the schedule's Σ lr (measured: 0.026)


def _summary(run: dict) -> dict:
    by_type = {kind: round(scores["miou"], 3) for kind, scores in run["scores"].items()}
    rest = {key: value for key, value in run.items() if key != "scores"}
    return by_type | {key: (round(value, 3) if isinstance(value, float) else
                            {k: [round(v, 3) for v in values] for k, values in value.items()})
                      for key, value in rest.items()}


def _run(model: torch.nn.Module, test: dict, edited: dict, unseen: dict) -> dict:
    """One trained model's test scores by expression type, counterfactual IoUs, mIoU on the unseen
    combinations (all, and those whose expression string training never had) and (LAVT) gate statistics."""
    original, moved, source = predicted_masks(model, test), predicted_masks(model, edited), edited["source"]
    unseen_ious = sample_iou(predicted_masks(model, unseen), unseen["mask"])
    run = {"scores": scores_by_expression_type(original, test),
           "original": sample_iou(original[source], test["mask"][source]).mean().item(),
           "new_target": sample_iou(moved, edited["mask"]).mean().item(),
           "old_target": sample_iou(moved, test["mask"][source]).mean().item(),
           "unseen": unseen_ious.mean().item(), "unseen_new": unseen_ious[unseen["new"]].mean().item()}
    if model.fusion == "pwam":
        gate_weights = [gate.layers[2].weight.abs().mean().item() for gate in model.gates]  # mean |W_2|
        run["pathway"] = pathway_statistics(model, test) | {"gate_weight": gate_weights}
    return run


@pytest.fixture(scope="module")
def lavt_runs() -> dict[int, dict[str, dict]]:
    """Per seed and model: test scores by expression type, counterfactual IoUs, gate statistics."""
    threads = torch.get_num_threads()
    use_threads()  # the notebook's thread count ($FUSION_EDU_THREADS, else the cores), as its run
    minilm = PretrainedTextEncoder()
    runs = {}
    try:
        for seed in SEEDS:
            train, test = load_referring_scenes("train", seed=seed), load_referring_scenes("test", seed=seed)
            unseen = load_referring_scenes("unseen", seed=seed)
            unseen["new"] = new_expressions(unseen, train)
            edited, runs[seed] = counterfactual_scenes(test), {}
            models = MODELS | (DIAGNOSIS if seed == DIAGNOSIS_SEED else {})
            for name, (fusion, gate_lr_factor, cache_name) in models.items():
                config = lavt_training(seed, gate_lr_factor=gate_lr_factor)
                model, _ = train_lavt(cache_name, train, config, fusion, minilm, progress=False)
                runs[seed][name] = _run(model, test, edited, unseen)
            print(f"seed {seed}:", {name: _summary(run) for name, run in runs[seed].items()})  # pytest -s
            overall = {name: {**{key: run["scores"]["all"][key] for key in ("miou", "oiou")},
                              "unseen_miou": run["unseen"], "unseen_new_miou": run["unseen_new"]}
                       for name, run in runs[seed].items() if name in MODELS}
            record_sweep("lavt", seed, overall, "07", "miou", "notebook 07's recipe")
    finally:
        torch.set_num_threads(threads)
    return runs


def test_07_an_edited_word_moves_the_mask_onto_the_newly_named_object(lavt_runs):
    for seed, runs in lavt_runs.items():
        for name, run in runs.items():
            assert run["new_target"] > FOLLOW_SHARE * run["original"], (seed, name, run)
            assert run["old_target"] < STAY_AT_MOST, (seed, name, run)


def _difference(lavt_runs: dict, model: str, other: str, kind: str = "all") -> PairedDifference:
    """``model`` - ``other`` in test mIoU (on expressions of ``kind``) over the seeds, as a paired t-test."""
    model_miou, other_miou = ([runs[name]["scores"][kind]["miou"] for runs in lavt_runs.values()]
                              for name in (model, other))
    difference = paired_difference(model_miou, other_miou)
    print(f"{model} - {other} ({kind}): {[round(d, 3) for d in difference.differences]}, "  # pytest -s
          f"mean {difference.mean:+.3f} ± {difference.std:.3f}, t {difference.t:+.2f}, "
          f"detectable {difference.detectable:.3f}")
    return difference


def test_07_early_fusion_adds_nothing_detectable_and_pixel_word_attention_leads_late_fusion_on_relations(
        lavt_runs):
    closed = _difference(lavt_runs, "LAVT", "gates closed")
    assert not all(d > 0 for d in closed.differences), closed
    assert not (closed.significant and closed.mean > 0) and closed.mean < NOT_AHEAD, closed
    late = _difference(lavt_runs, "LAVT", "late")
    assert abs(late.mean) < SMALL_GAP, late
    for model in PWAM_MODELS:
        on_relations = _difference(lavt_runs, model, "late", kind="relation")
        assert on_relations.mean > RELATION_LEAD, (model, on_relations)


def test_07_objects_of_unseen_combinations_are_found_far_less_well(lavt_runs):
    for seed, runs in lavt_runs.items():
        for name, run in runs.items():
            assert run["scores"]["all"]["miou"] - run["unseen"] > UNSEEN_DROP, (seed, name, run["unseen"])


def test_07_the_early_gates_stay_nearly_shut_in_tanhs_linear_range_and_open_at_a_higher_lr(lavt_runs):
    for seed, runs in lavt_runs.items():
        lavt = runs["LAVT"]["pathway"]
        assert lavt["opening"][0] < SHUT and lavt["opening"][-1] > OPEN, (seed, lavt)
        assert lavt["slope"][0] > LINEAR, (seed, lavt)
        assert lavt["fused"][0] < SMALL * lavt["fused"][-1], (seed, lavt)
        room = total_learning_rate(lavt_training(seed), REFERRING_SPLIT_SIZES["train"])  # Σ lr: 0.47
        assert lavt["gate_weight"][0] < USED_AT_MOST * room, (seed, room, lavt)
    runs = lavt_runs[DIAGNOSIS_SEED]
    lavt, faster = runs["LAVT"], runs[FASTER_GATES]
    opened = faster["pathway"]["opening"][0]
    assert opened > WIDER * lavt["pathway"]["opening"][0] and opened > SHUT, (lavt, faster)
    gained = faster["scores"]["all"]["miou"] - lavt["scores"]["all"]["miou"]
    print(f"seed {DIAGNOSIS_SEED}: {FASTER_GATES} - LAVT: {gained:+.3f} mIoU")  # pytest -s
    assert abs(gained) < SAME, (gained, lavt, faster)
