"""The claims notebook 06 (MBT) makes, re-checked over three seeds with the notebook's recipe.

Data, initialisation and shuffling all change with the seed.  Each seed trains late fusion, vanilla
fusion, bottleneck fusion (L_f = 2, B = 4), early bottleneck fusion (L_f = 0) and one bottleneck token
(B = 1), 15 epochs each on 3,000 clips, scored on 1,000 test clips.

- Bottleneck fusion beats either modality alone (late fusion's frames and audio streams) on every seed,
  and by ``MARGIN`` on average over the seeds (its lead on a seed: 0.22 / 0.10 / 0.07 in the recorded run,
  0.22 / 0.10 / 0.03 in a CI run on another 2-core CPU).
- Bottleneck fusion matches or beats vanilla full attention on average: the mean of the paired
  differences is above ``-MATCH_TOLERANCE``, and a paired t-test over the seeds does not find it below.
  It does not on every seed: seed 2 had it 0.02 below in the recorded run and 0.065 below in that CI run
  (three seeds do not separate the two).  At the notebook's 33 + 17 tokens it costs *more* FLOPs than
  vanilla (the FLOPs half of the paper's claim holds at hundreds of tokens per modality:
  ``tests/test_mbt.py::test_bottlenecks_save_flops_only_when_the_modalities_hold_many_tokens``).
- Mid fusion (L_f = 2) lands clearly above late fusion, and early fusion (L_f = 0) above it too (by
  0.03 to 0.26 in our runs); which of early and mid is ahead changes with the seed, so it is printed,
  not asserted.
- B = 1, the only B cheaper than vanilla fusion here, loses most of the binding that B = 4 learns.
"""

import statistics

import pytest
import torch

from fusion_edu.datasets import load_audiovisual_clips
from fusion_edu.flops import count_flops
from fusion_edu.mbt import modality_accuracies
from fusion_edu.metrics import paired_difference
from fusion_edu.recipes import MBT_MODES, MBT_SWEEP, mbt_training, train_mbt
from fusion_edu.sweeps import record_sweep

pytestmark = pytest.mark.claims  # seed sweeps: minutes each; `pytest -m claims` runs them

SEEDS = (0, 1, 2)
MARGIN = 0.05  # accuracy by which a claimed winner must lead (chance is 0.25; 1,000 test clips)
MATCH_TOLERANCE = 0.05  # "matches": about one seed-to-seed standard deviation of the same model
# (measured mean gaps, bottleneck - vanilla: +0.029 in the recorded run, +0.009 in the CI run)
# B = 1 below B = 4 by at least this much: it falls behind on every seed, by 0.10-0.17 at 2 threads and
# 0.04-0.12 at 1 thread (two recorded runs; its seed-0 score moves by 0.11 between the two)
LOSES_BINDING = 0.02
RUNS = {name: MBT_MODES[name] for name in ("late", "vanilla", "bottleneck")} | MBT_SWEEP


@pytest.fixture(scope="module")
def mbt_runs(claims_cache) -> dict[int, dict[str, dict[str, float]]]:
    """Per seed and model (seed 0 shared with notebook 06, which validates each epoch; the others in a
    private cache): accuracies per stream and MFLOPs per clip."""
    runs = {}
    for seed in SEEDS:
        config = mbt_training(seed)
        with claims_cache("mbt", seed) as shared:
            train = load_audiovisual_clips("train", seed=seed)
            val = load_audiovisual_clips("val", seed=seed) if shared else None
            test = load_audiovisual_clips("test", seed=seed)
            one_clip = {m: test[m][:1] for m in ("frames", "spectrogram")}
            runs[seed] = {}
            for name, options in RUNS.items():
                model, _ = train_mbt(name, train, val, config, progress=False, **options)
                runs[seed][name] = {**modality_accuracies(model, test, torch.device("cpu")),
                                    "mflops": count_flops(model.cpu(), one_clip) / 1e6}
        print(f"seed {seed}:", {name: round(r["fused"], 3) for name, r in runs[seed].items()})  # pytest -s
        record_sweep("mbt", seed, runs[seed], "06", "fused", "notebook 06's recipe")
    return runs


def test_06_bottleneck_fusion_beats_either_modality_alone(mbt_runs):
    leads = [runs["bottleneck"]["fused"] - max(runs["late"]["frames"], runs["late"]["spectrogram"])
             for runs in mbt_runs.values()]
    print("bottleneck fusion - the better modality alone, per seed:", [round(lead, 3) for lead in leads])
    assert min(leads) > 0, leads
    assert statistics.mean(leads) > MARGIN, leads


def test_06_bottleneck_fusion_matches_or_beats_vanilla_on_average_at_more_flops_on_few_tokens(mbt_runs):
    difference = paired_difference(*([runs[name]["fused"] for runs in mbt_runs.values()]
                                      for name in ("bottleneck", "vanilla")))
    print(f"bottleneck - vanilla: {[round(d, 3) for d in difference.differences]}, "  # pytest -s
          f"mean {difference.mean:+.3f} ± {difference.std:.3f}, detectable {difference.detectable:.3f}")
    assert difference.mean > -MATCH_TOLERANCE, difference
    assert not (difference.significant and difference.mean < 0), difference
    for runs in mbt_runs.values():
        assert runs["bottleneck"]["mflops"] > runs["vanilla"]["mflops"], runs


def test_06_mid_and_early_fusion_land_above_late_fusion(mbt_runs):
    for seed, runs in mbt_runs.items():
        assert runs["bottleneck"]["fused"] > runs["late"]["fused"] + MARGIN, (seed, runs)
        assert runs["early"]["fused"] > runs["late"]["fused"], (seed, runs)


def test_06_one_bottleneck_is_cheaper_than_vanilla_but_loses_the_binding(mbt_runs):
    for seed, runs in mbt_runs.items():
        assert runs["B1"]["mflops"] < runs["vanilla"]["mflops"], (seed, runs)
        assert runs["B1"]["fused"] < runs["bottleneck"]["fused"] - LOSES_BINDING, (seed, runs)
