"""The claims notebooks 01 and 02 assert, re-checked over several seeds at a smaller configuration.

Data, initialisation and shuffling all change with the seed.  Per seed, the single-modal models are
trained once and shared by the tests of both notebooks.

- 01: a single modality has a ceiling: the RGB model does not find (predicts background on) the
  objects only depth sees, the depth model those only RGB sees, and each classifies worse than the
  other under its own damage.
- 02: late fusion beats the best single modality by ``MARGIN``; token concatenation beats it too, but
  narrowly (by 0.02-0.05 in the recorded run, by 0.007 on seed 2 in a CI run on another 2-core CPU), so
  without a margin, as notebook 02's check asserts; token concat's first layer reads its aligned partner
  about uniformly, its last layer clearly more.
- 03: TokenFusion, fine-tuned from the single-modal models, substitutes a real share of tokens and
  beats the best single modality, late fusion and token concat; in depth's least-exchanging layer a
  damaged token is substituted more than ``ODDS`` times as often as a clean one (the rule notebook 03a's
  check asserts; in the layers that exchange at most ``SELECTIVE`` of depth's tokens, the substituted
  tokens' share on damaged patches against the random rate is printed: 4.5x, 4.7x and 5.9x on seeds 0-2
  in one recorded run).  A layer that exchanges most of its tokens cannot be selective (substituting a
  share s, it can land on damage at most 1/s times the random rate), and how much each layer exchanges
  moves with the machine: the rule does not ask for a layer under a quarter.
- 03b: TokenFusion's two forms, the official code's and the paper's literal one, against the same model
  that never exchanges, each fine-tuned in notebook 03b's short run from this seed's single-modal models
  (recorded in ``fusion_edu/sweeps/tokenfusion_forms.json``, which notebook 03b plots).  The paper form
  trails the official one on every seed, by more than ``FORM_GAP`` on average (0.065-0.117 in the recorded
  run, paired t = -5.6, p about 0.03: printed, not asserted, as three seeds make it fragile), and no
  exchange on every seed; the official form does not lead no exchange (a paired t-test finds no lead;
  recorded: -0.042, -0.020, -0.001).
- 03b, weight sharing (the paper's model: one attention and MLP, LayerNorms per modality), fairly
  started: from single-modal models that share those layers, trained on both modalities for the same 8
  epochs (``SharedLayerViTs``; fair in training budget, with half the layer parameters), then the same
  short run, exchanging and not.  The shared single-modal models trail the separate ones on every seed, and
  separate weights lead shared ones on every seed, exchanging or not, by more than ``SHARING_GAP`` on
  average; with shared weights too the exchange shows no lead.
- 03b, where the exchange would pay: every model above is also scored on one set of undamaged test scenes
  damaged afresh at 0 to 8 of the 16 cells per modality (``DAMAGED_CELLS``, ``damage_scenes``; training has
  1-2), with its substitutions' shares on damaged patches; the official form leads no exchange at no level,
  with separate weights or shared ones (a paired t-test per level).  The last tests compare the seeds once
  all three have run.
"""

import math
from dataclasses import replace

import pytest
import torch

from fusion_edu.concat import LateFusion, TokenConcatFusion, cross_modal_attention
from fusion_edu.datasets import VISIBILITY, corrupted_patches, damage_scenes, load_rgbd_scenes
from fusion_edu.datasets.rgbd import RGBDConfig
from fusion_edu.metrics import grouped_accuracy, paired_difference
from fusion_edu.recipes import (
    DAMAGED_CELLS,
    OFFICIAL_LAMBDA,
    RGBD_CHANNELS,
    RGBD_VIT,
    SHARED_FORMS,
    SHORT_RUN_SCENES,
    TOKENFUSION,
    TOKENFUSION_FORMS,
    damage_quantity,
    short_run_training,
    tokenfusion_training,
)
from fusion_edu.sweeps import record_sweep
from fusion_edu.tokenfusion import (
    SharedLayerViTs,
    TokenFusion,
    least_exchanging_layer,
    pooled_on_corrupted,
    substitution_rates,
    substitution_statistics,
    token_scores_and_masks,
)
from fusion_edu.train import TrainConfig, evaluate, fit, predict, seeded
from fusion_edu.vit import VisionTransformer

pytestmark = pytest.mark.claims  # seed sweeps: minutes each; `pytest -m claims` runs them

SEEDS = (0, 1, 2)
TRAIN_SCENES, TEST_SCENES = 4000, 500
RGB_ONLY, DEPTH_ONLY = VISIBILITY.index("rgb_only"), VISIBILITY.index("depth_only")
GLARE, DEPTH_DAMAGE = 1, 2
MARGIN = 0.01  # mIoU by which late fusion and TokenFusion must beat the best single modality (measured:
# late fusion +0.04 to +0.06)
VIT = {key: value for key, value in RGBD_VIT.items() if key != "task"}
REAL_SHARE = 0.1  # "a real share": at least this share of tokens substituted, per modality
SELECTIVE = 0.25  # a layer exchanging at most this share of depth's tokens: its enrichment is printed
ODDS = 2.0  # P(substituted | damaged) against P(substituted | clean), in depth's least-exchanging layer
RECIPE = (f"{TRAIN_SCENES:,} training / {TEST_SCENES} test scenes; single-modal models and token concat 8 "
          "epochs, late fusion 1, TokenFusion fine-tuned 3 (smaller than notebooks 01-03)")
FORMS_RECIPE = (f"notebook 03b's short run (1 epoch on the first {SHORT_RUN_SCENES:,} training scenes, "
                f"lambda {OFFICIAL_LAMBDA:g}) from the single-modal models of the RGB-D sweep "
                f"({TRAIN_SCENES:,} scenes, 8 epochs), or, for shared weights, from single-modal models "
                f"sharing their attention and MLP (SharedLayerViTs, the same 8 epochs); {TEST_SCENES} test "
                "scenes, each model also scored on test scenes with more or fewer damaged cells")
SHORT_RUN = {**TOKENFUSION, "lambda_l1": OFFICIAL_LAMBDA}  # 03b's short run; each form adds options
FORM_ROWS: dict[int, dict[str, dict[str, float]]] = {}  # seed -> model -> quantity, filled seed by seed
FORM_GAP = 0.03  # mean mIoU by which the paper form must trail the official one (measured: 0.087)
SHARING_GAP = 0.03  # mean mIoU by which shared weights must trail separate ones (measured: 0.095 and 0.061)


def _record(seed: int, rows: dict[str, float]) -> None:
    """This seed's test mIoU per model, for notebook 08 (fusion_edu.sweeps)."""
    record_sweep("rgbd", seed, {model: {"miou": miou} for model, miou in rows.items()}, "01-03", "miou",
                 RECIPE)


@pytest.fixture(scope="module", params=SEEDS)
def seeded_run(request, tmp_path_factory):
    """One seed's data (in a private cache) and its two trained single-modal models."""
    seed = request.param
    config = TrainConfig(epochs=8, batch_size=32, lr=2e-3, seed=seed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FUSION_EDU_DATA", str(tmp_path_factory.mktemp(f"seed{seed}")))
        train = load_rgbd_scenes("train", seed=seed, num_scenes=TRAIN_SCENES)
        test = load_rgbd_scenes("test", seed=seed, num_scenes=TEST_SCENES)
        undamaged = load_rgbd_scenes("test", seed=seed, num_scenes=TEST_SCENES,
                                     config=RGBDConfig(rgb_glare_cells=(0, 0), depth_bad_cells=(0, 0)))
    damaged = {cells: damage_scenes(undamaged, cells, seed) for cells in DAMAGED_CELLS}  # the same scenes
    singles = {}
    for modality, channels in RGBD_CHANNELS.items():
        with seeded(seed):
            singles[modality] = VisionTransformer(**RGBD_VIT, in_chans=channels, modality=modality)
        fit(singles[modality], train, config=config, progress=False)
    return {"seed": seed, "config": config, "train": train, "test": test, "damaged": damaged,
            "singles": singles}


def test_01_each_modality_misses_what_it_cannot_see(seeded_run):
    test = seeded_run["test"]
    damage = test["rgb_corrupt"].long() * GLARE + test["depth_corrupt"].long() * DEPTH_DAMAGE
    found, classified = {}, {}
    for modality, model in seeded_run["singles"].items():
        predictions = predict(model, test)
        found[modality] = grouped_accuracy(predictions > 0, test["label"] > 0, test["visibility"],
                                           len(VISIBILITY))
        classified[modality] = grouped_accuracy(predictions, test["label"], damage, 3)
    assert found["rgb"][DEPTH_ONLY] < 0.1 < 0.4 < found["rgb"][RGB_ONLY], found["rgb"]
    assert found["depth"][RGB_ONLY] < 0.1 < 0.4 < found["depth"][DEPTH_ONLY], found["depth"]
    assert classified["rgb"][GLARE] < classified["depth"][GLARE], classified
    assert classified["depth"][DEPTH_DAMAGE] < classified["rgb"][DEPTH_DAMAGE], classified


def _baselines(run: dict) -> dict:
    """Notebook 02's fusions for this seed (trained once, kept in the run): test mIoU of each."""
    if "baselines" not in run:
        seed, config, train, test = (run[k] for k in ("seed", "config", "train", "test"))
        late = LateFusion(run["singles"])
        for parameter in late.models.parameters():
            parameter.requires_grad_(False)
        fit(late, train, config=replace(config, epochs=1, lr=0.05), progress=False)
        with seeded(seed):
            concat = TokenConcatFusion(RGBD_CHANNELS, **VIT)
        fit(concat, train, config=config, progress=False)
        run["concat"] = concat
        singles = {m: evaluate(model, test)["miou"] for m, model in run["singles"].items()}
        run["baselines"] = {"best single": max(singles.values()), "late": evaluate(late, test)["miou"],
                            "concat": evaluate(concat, test)["miou"]}
        _record(seed, {"ViT, rgb only": singles["rgb"], "ViT, depth only": singles["depth"],
                       "late fusion": run["baselines"]["late"],
                       "token concatenation": run["baselines"]["concat"]})
    return run["baselines"]


def test_02_late_fusion_and_token_concat_beat_the_best_single_modality(seeded_run):
    scores = _baselines(seeded_run)
    best_single, concat, test = scores["best single"], seeded_run["concat"], seeded_run["test"]
    print(f"seed {seeded_run['seed']}: best single {best_single:.3f}, late {scores['late']:.3f}, "
          f"concat {scores['concat']:.3f}")
    assert scores["late"] > best_single + MARGIN, (scores, best_single)
    assert scores["concat"] > best_single, (scores, best_single)
    concat.eval()
    with torch.inference_mode():
        attention = concat({k: v[:100] for k, v in test.items()}, return_attention=True).attention
    _, partner = cross_modal_attention(attention, concat.num_patches)
    uniform = 1 / concat.num_patches
    assert partner[0] < 2 * uniform and partner[-1] > 3 * uniform, partner


def test_03_tokenfusion_exchanges_tokens_beats_the_fusions_and_finds_damaged_depth(seeded_run):
    seed, train, test = (seeded_run[k] for k in ("seed", "train", "test"))
    baselines = _baselines(seeded_run)
    with seeded(seed):
        model = TokenFusion(RGBD_CHANNELS, **VIT, **TOKENFUSION)
    model.load_single_modal(seeded_run["singles"])
    fit(model, train, config=tokenfusion_training(seed), progress=False)
    miou = evaluate(model, test)["miou"]
    _record(seed, {"TokenFusion": miou})
    _, masks = token_scores_and_masks(model, test)
    patches = {m: corrupted_patches(test[f"{m}_corrupt"], VIT["patch_size"]) for m in RGBD_CHANNELS}
    stats = substitution_statistics(masks, patches)
    print(f"seed {seed}: TokenFusion {miou:.3f} vs {baselines}; "
          + "; ".join(f"{m} share {[round(v, 2) for v in s['share']]} on damaged "
                      f"{[round(v, 3) for v in s['on_corrupted']]} random {s['random'][0]:.3f}"
                      for m, s in stats.items()))
    for modality, numbers in stats.items():
        assert sum(numbers["share"]) / len(numbers["share"]) > REAL_SHARE, (modality, numbers)
    assert miou > baselines["best single"] + MARGIN, (miou, baselines)
    assert miou > baselines["late"] and miou > baselines["concat"], (miou, baselines)
    depth = stats["depth"]
    selective = [layer for layer, share in enumerate(depth["share"]) if 0 < share <= SELECTIVE]
    if selective:  # pytest -s
        print(f"seed {seed}: depth's layers {selective} substitute damaged tokens at "
              f"{pooled_on_corrupted(depth, selective) / depth['random'][0]:.1f}x the random rate")
    damaged, clean = substitution_rates(depth, least_exchanging_layer(depth))
    assert damaged > ODDS * clean, (damaged, clean, depth)


def _scored(model: TokenFusion, data: dict) -> dict[str, float]:
    """Test mIoU on ``data`` and, per modality, the share of tokens substituted (mean over the layers), the
    share of the substitutions on damaged patches (pooled over the exchanging layers), the share of patches
    damaged (where random substitution lands), and, in the least-exchanging layer (notebook 03a's rule), the
    rates at which damaged and clean tokens are substituted; NaN where undefined (nothing substituted, or
    nothing damaged), which the record keeps as null."""
    patches = {m: corrupted_patches(data[f"{m}_corrupt"], VIT["patch_size"]) for m in RGBD_CHANNELS}
    _, masks = token_scores_and_masks(model, data)
    row = {"miou": evaluate(model, data)["miou"]}
    for modality, numbers in substitution_statistics(masks, patches).items():
        exchanging = [layer for layer, share in enumerate(numbers["share"]) if share > 0]
        damaged = numbers["random"][0]
        defined = exchanging and 0 < damaged < 1
        rates = substitution_rates(numbers, least_exchanging_layer(numbers)) if defined else (math.nan,) * 2
        on_damaged = pooled_on_corrupted(numbers, exchanging) if exchanging else math.nan
        row |= {f"{modality} substituted": sum(numbers["share"]) / len(numbers["share"]),
                f"{modality} on damaged": on_damaged,
                f"{modality} damaged": damaged,
                f"{modality} least-exchanging layer, damaged substituted": rates[0],
                f"{modality} least-exchanging layer, clean substituted": rates[1]}
    return row


def _short_run_row(model: TokenFusion, run: dict) -> dict[str, float]:
    """A short-run model scored on the test scenes, and on the same undamaged scenes at each damage level."""
    row = _scored(model, run["test"])
    for cells, data in run["damaged"].items():
        row |= {damage_quantity(cells, quantity): value for quantity, value in _scored(model, data).items()}
    return row


def _fine_tune_short(run: dict, singles: dict, options: dict) -> TokenFusion:
    """TokenFusion with ``options``, started from ``singles`` and fine-tuned in notebook 03b's short run."""
    seed = run["seed"]
    with seeded(seed):
        model = TokenFusion(RGBD_CHANNELS, **VIT, **{**SHORT_RUN, **options})
    model.load_single_modal(singles)
    short_train = {key: value[:SHORT_RUN_SCENES] for key, value in run["train"].items()}
    fit(model, short_train, config=short_run_training(seed), progress=False)
    return model


def test_03b_the_forms_and_weight_sharing_against_no_exchange(seeded_run):
    seed = seeded_run["seed"]
    rows = {form: _short_run_row(_fine_tune_short(seeded_run, seeded_run["singles"], options), seeded_run)
            for form, options in TOKENFUSION_FORMS.items()}
    with seeded(seed):
        pair = SharedLayerViTs(RGBD_CHANNELS, **RGBD_VIT)
    fit(pair, seeded_run["train"], config=seeded_run["config"], progress=False)
    for kind, models in (("separate", seeded_run["singles"]), ("shared", pair.models)):
        rows |= {f"{kind} single-modal, {m} only": {"miou": evaluate(model, seeded_run["test"])["miou"]}
                 for m, model in models.items()}
    rows |= {form: _short_run_row(_fine_tune_short(seeded_run, dict(pair.models), options), seeded_run)
             for form, options in SHARED_FORMS.items()}
    record_sweep("tokenfusion_forms", seed, rows, "03b", "miou", FORMS_RECIPE)
    FORM_ROWS[seed] = rows
    print(f"seed {seed}:", {form: {k: round(v, 3) for k, v in row.items()} for form, row in rows.items()})
    for form in ("official form", "paper form", "shared, official form"):  # compared with live models
        assert rows[form]["depth substituted"] > 0, rows


def _over_the_seeds(model: str, quantity: str = "miou") -> list[float]:
    assert set(FORM_ROWS) == set(SEEDS), f"run every seed's forms first (this run: {sorted(FORM_ROWS)})"
    return [FORM_ROWS[seed][model][quantity] for seed in SEEDS]


def test_03b_over_the_seeds_the_paper_form_trails_and_the_official_form_does_not_lead():
    official, paper, none = (_over_the_seeds(form) for form in ("official form", "paper form", "no exchange"))
    lead, gap = paired_difference(official, none), paired_difference(official, paper)
    print(f"official - no exchange {[round(d, 3) for d in lead.differences]} "
          f"(detectable {lead.detectable:.3f}); official - paper {[round(d, 3) for d in gap.differences]}")
    assert not (lead.significant and lead.mean > 0), lead
    assert all(p < min(o, n) for p, o, n in zip(paper, official, none, strict=True)), (paper, official, none)
    assert gap.mean > FORM_GAP, gap


def test_03b_over_the_seeds_separate_weights_lead_shared_ones_exchanging_or_not():
    pairs = ((f"separate single-modal, {m} only", f"shared single-modal, {m} only") for m in RGBD_CHANNELS)
    for separate, shared in pairs:  # before any fusion: every seed, no margin
        gap = paired_difference(_over_the_seeds(separate), _over_the_seeds(shared))
        print(f"{separate}: separate - shared {[round(d, 3) for d in gap.differences]}")
        assert min(gap.differences) > 0, (separate, gap)
    pairs = (("official form", "shared, official form"), ("no exchange", "shared, no exchange"))
    for separate, shared in pairs:
        gap = paired_difference(_over_the_seeds(separate), _over_the_seeds(shared))
        print(f"{separate}: separate - shared {[round(d, 3) for d in gap.differences]}")
        assert min(gap.differences) > 0 and gap.mean > SHARING_GAP, (separate, gap)
    lead = paired_difference(_over_the_seeds("shared, official form"), _over_the_seeds("shared, no exchange"))
    assert not (lead.significant and lead.mean > 0), lead


def test_03b_over_the_seeds_the_exchange_leads_at_no_damage_level():
    for weights in ("", "shared, "):
        for cells in DAMAGED_CELLS:
            quantity = damage_quantity(cells)
            lead = paired_difference(_over_the_seeds(f"{weights}official form", quantity),
                                     _over_the_seeds(f"{weights}no exchange", quantity))
            print(f"{weights or 'separate, '}{cells} damaged cells: official - no exchange "
                  f"{[round(d, 3) for d in lead.differences]} (detectable {lead.detectable:.3f})")
            assert not (lead.significant and lead.mean > 0), (weights, cells, lead)
