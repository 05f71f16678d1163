"""The course's experiments, headless: each notebook's headline models, trained and scored once.

Every notebook 01-07 ends by calling ``run_experiment`` for itself: the models it just trained are found
in the cache (same recipe, same seed, same data), scored on the test split, measured (parameters, FLOPs
of one sample's forward pass, training time) and saved as ``Result`` rows under the cache's
``results/`` folder.  Notebook 08 reads those rows; ``python -m fusion_edu run-all`` runs the same
experiments without a notebook (training what is not cached) and writes a report (see ``__main__``).

Training time is the sum of the epochs' seconds recorded when the model was trained (a cached model
keeps them), *including* the models it starts from: late fusion and TokenFusion count the two
single-modal ViTs they reuse.  Parameters are all the model's parameters except a frozen pretrained
text encoder's (LAVT's MiniLM: 22.7 M, trained by others, its FLOPs spent once per distinct sentence).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from .concat import InputFusion, LateFusion, TokenConcatFusion
from .crossvit import FUSIONS, NO_FUSION
from .datasets import (
    TEXTURES,
    load_audiovisual_clips,
    load_multiscale_images,
    load_pointcloud_scenes,
    load_referring_scenes,
    load_rgbd_scenes,
)
from .datasets.cache import cache_dir
from .flops import count_flops, count_parameters
from .lavt import PretrainedTextEncoder, predicted_masks, referring_inputs, scores_by_expression_type
from .mbt import modality_accuracies
from .recipes import (
    MBT_MODES,
    POINT_IMAGE,
    RGBD_BACKBONE,
    RGBD_CHANNELS,
    RGBD_VIT,
    crossvit_training,
    lavt_training,
    mbt_training,
    point_image_training,
    rgbd_training,
    tokenfusion_training,
    train_crossvit,
    train_lavt,
    train_mbt,
    train_point_image_models,
    train_single_modal,
    train_tokenfusion,
)
from .tokenfusion_heterogeneous import PointImageTokenFusion, detection_targets, object_detections
from .train import (
    default_device,
    evaluate,
    fit_or_load,
    models_and_histories,
    predict,
    seeded,
    train_side_by_side,
)

__all__ = [
    "EXPERIMENTS",
    "WHERE",
    "Experiment",
    "Result",
    "experiment_named",
    "load_results",
    "results_dir",
    "results_table",
    "rgbd_cache_name",
    "run_experiment",
    "save_results",
]

RESULTS_FOLDER = "results"
WHERE = {"none": "one modality (a baseline)", "input": "at the input tokens",
         "inside": "inside the encoder, layer by layer", "output": "after the encoders (late fusion)"}
LATE_FUSION_EPOCHS, LATE_FUSION_LR = 1, 0.05  # notebook 02: only the two ensemble weights are fitted


@dataclass(frozen=True)
class Result:
    """One trained model's row in the course's comparison (notebook 08)."""

    notebook: str  # "01" ... "07"
    model: str
    fuses: str  # what meets what ("nothing (one modality)", "RGB and depth tokens in one sequence", ...)
    where: str  # where the modalities meet: one of WHERE
    task: str
    metric: str  # the task's headline metric on the test split
    value: float
    params: int
    mflops: float  # one sample's forward pass, a multiply-add counted as 2
    train_seconds: float  # including the models it starts from
    device: str
    seed: int
    extra: dict[str, float] = field(default_factory=dict)  # other scores (missing modalities, ...)
    longer: bool = False  # trained with the notebook's LONGER recipe (2-4x the epochs)

    def __post_init__(self) -> None:
        if self.where not in WHERE:
            raise ValueError(f"expected where in {list(WHERE)}, got {self.where!r}")


def _seconds(*histories: Sequence[Mapping[str, float]]) -> float:
    return sum(record["seconds"] for history in histories for record in history)


def _first(data: Mapping[str, Tensor], keys: Sequence[str] | None = None) -> dict[str, Tensor]:
    """One sample of ``data`` (its ``keys``, default all) as a batch of one: what FLOPs are counted on."""
    return {key: data[key][:1] for key in (keys or list(data))}


def _measure(model: nn.Module, sample: Tensor | Mapping[str, Tensor], frozen: nn.Module | None = None
             ) -> dict[str, float]:
    """Parameters (less a frozen pretrained part's) and MFLOPs of one sample, on the CPU."""
    params = count_parameters(model, trainable_only=False)
    if frozen is not None:
        params -= count_parameters(frozen, trainable_only=False)
    return {"params": params, "mflops": count_flops(model.cpu(), sample) / 1e6}


# Notebooks 01-03 share the RGB-D scenes, the recipe and the single-modal models.
RGBD_TASK, RGBD_METRIC = "RGB-D segmentation", "test mIoU"


def _rgbd_data() -> tuple[dict[str, Tensor], ...]:
    return tuple(load_rgbd_scenes(split) for split in ("train", "val", "test"))


def _rgbd_singles(seed: int, longer: bool, progress: bool, train: Mapping, val: Mapping
                  ) -> tuple[dict[str, nn.Module], dict[str, list[dict]]]:
    return models_and_histories(train_side_by_side(
        {modality: partial(train_single_modal, modality, train, val, rgbd_training(seed, longer), progress)
         for modality in RGBD_CHANNELS}))


def rgbd_cache_name(name: str, seed: int) -> str:
    """Notebooks 02-03's cache name for a model trained with ``seed``: the notebook's own name for seed 0,
    so that ``run-all`` and the notebooks share their models, and the seed appended for any other, so that
    ``run-all --seed 1`` trains beside the notebooks' models instead of over them."""
    return name if seed == 0 else f"{name}_seed{seed}"


def _rgbd_result(notebook: str, name: str, fuses: str, where: str, model: nn.Module, test: Mapping,
                 seconds: float, device: torch.device, seed: int) -> Result:
    return Result(notebook, name, fuses, where, RGBD_TASK, RGBD_METRIC, evaluate(model, test, device)["miou"],
                  **_measure(model, _first(test)), train_seconds=seconds, device=device.type, seed=seed)


def vit_experiment(device: torch.device, seed: int, progress: bool, longer: bool) -> list[Result]:
    """Notebook 01: a ViT per modality (RGB, depth), nothing fused."""
    train, val, test = _rgbd_data()
    models, histories = _rgbd_singles(seed, longer, progress, train, val)
    return [_rgbd_result("01", f"ViT, {modality} only", "nothing (one modality)", "none", models[modality],
                         test, _seconds(histories[modality]), device, seed) for modality in RGBD_CHANNELS]


def concat_experiment(device: torch.device, seed: int, progress: bool, longer: bool) -> list[Result]:
    """Notebook 02: late fusion of the two ViTs, token concatenation, input fusion."""
    train, val, test = _rgbd_data()
    singles, single_histories = _rgbd_singles(seed, longer, progress, train, val)
    config = rgbd_training(seed, longer)
    late = LateFusion(singles)
    for parameter in late.models.parameters():
        parameter.requires_grad_(False)
    late_config = replace(config, epochs=LATE_FUSION_EPOCHS, lr=LATE_FUSION_LR)
    with seeded(seed):
        concat = TokenConcatFusion(RGBD_CHANNELS, **RGBD_BACKBONE)
    with seeded(seed):
        input_fusion = InputFusion(RGBD_CHANNELS, **RGBD_VIT)
    trainings = {"02_token_concat": (concat, config), "02_input_fusion": (input_fusion, config),
                 "02_late_fusion": (late, late_config)}
    histories = train_side_by_side({  # each model is trained in place, or loaded into it
        name: partial(fit_or_load, rgbd_cache_name(name, seed), model, train, val, recipe, device, progress)
        for name, (model, recipe) in trainings.items()})
    late_history, concat_history, input_history = (
        histories[name] for name in ("02_late_fusion", "02_token_concat", "02_input_fusion"))
    runs = (("late fusion", "logits only (a learned weighted sum)", "output", late,
             _seconds(late_history, *single_histories.values())),
            ("token concatenation", "RGB and depth tokens in one sequence", "inside", concat,
             _seconds(concat_history)),
            ("input fusion", "aligned patch tokens summed", "input", input_fusion, _seconds(input_history)))
    return [_rgbd_result("02", name, fuses, where, model, test, seconds, device, seed)
            for name, fuses, where, model, seconds in runs]


def tokenfusion_experiment(device: torch.device, seed: int, progress: bool, longer: bool) -> list[Result]:
    """Notebook 03a: TokenFusion fine-tuned from the two ViTs, and the same without exchange."""
    train, val, test = _rgbd_data()
    singles, single_histories = _rgbd_singles(seed, longer, progress, train, val)
    config, start = tokenfusion_training(seed, longer), _seconds(*single_histories.values())
    (tokenfusion, history), (control, control_history) = train_side_by_side({
        name: partial(train_tokenfusion, rgbd_cache_name(name, seed), singles, train, val, config,
                      progress=progress, **options)
        for name, options in (("03_tokenfusion", {}),
                              ("03_no_exchange", dict(lambda_l1=0.0, substitution=False)))}).values()
    return [_rgbd_result("03", "TokenFusion", "low-score tokens substituted by the other modality's",
                         "inside", tokenfusion, test, start + _seconds(history), device, seed),
            _rgbd_result("03", "TokenFusion without exchange", "logits only (ensemble; the control)",
                         "output", control, test, start + _seconds(control_history), device, seed)]


POINT_IMAGE_ROWS = {  # notebook 04's models: the row's name, what it fuses, where
    "point-only": ("point-only", "nothing (points alone)", "none"),
    "TokenFusion": ("TokenFusion, points + image",
                    "point tokens substituted by the image tokens they project to", "inside"),
    "additive": ("points + image, added", "the projected image token added to every point token", "inside"),
    "substitute all": ("points + image, all substituted", "every projected point token substituted",
                       "inside"),
    "random": ("points + image, random substitution",
               "a random share of point tokens substituted (TokenFusion's)", "inside")}


def point_image_experiment(device: torch.device, seed: int, progress: bool, longer: bool) -> list[Result]:
    """Notebook 04: 3-D detection from points alone, with image tokens substituted in (Sec. 3.5), and
    the three controls that read the image without scores."""
    patch = PointImageTokenFusion().patch_size
    train, test = (detection_targets(load_pointcloud_scenes(split), POINT_IMAGE["num_seeds"], patch,
                                     POINT_IMAGE["group_size"])
                   for split in ("train", "test"))
    models, histories = train_point_image_models(train, point_image_training(seed, longer), progress=progress)
    results = []
    for key, (name, fuses, where) in POINT_IMAGE_ROWS.items():
        found = object_detections(models[key], test, torch.device("cpu"))  # on the CPU, as notebook 04
        results.append(Result("04", name, fuses, where, "3-D detection (point cloud + image)",
                              "objects detected", found["correct"].float().mean().item(),
                              **_measure(models[key], _first(test)), train_seconds=_seconds(histories[key]),
                              device=device.type, seed=seed))
    return results


CROSSVIT_FUSES = {  # after each multi-scale block, the two branches (patch sizes) meet by ...
    "cross_attention": "two scales: each CLS token reads the other branch's patches",
    "all_attention": "two scales: all tokens of both branches attend together",
    "class_token": "two scales: the CLS tokens summed",
    "pairwise": "two scales: CLS and same-position patch tokens summed",
    "none": "logits only (two branches trained together, averaged)"}


def crossvit_experiment(device: torch.device, seed: int, progress: bool, longer: bool) -> list[Result]:
    """Notebook 05: each branch alone, CrossViT with each of the paper's four fusion schemes, and the
    no-fusion control (two branches trained together, logits averaged)."""
    train, val, test = (load_multiscale_images(split) for split in ("train", "val", "test"))
    runs = {"S-branch alone": ("S_branch_alone", dict(branch=0), "nothing (small patches alone)", "none"),
            "L-branch alone": ("L_branch_alone", dict(branch=1), "nothing (large patches alone)", "none")}
    runs |= {f"CrossViT, {kind.replace('_', ' ')}": (kind, dict(fusion=kind), CROSSVIT_FUSES[kind], "inside")
             for kind in FUSIONS}
    runs["CrossViT, no fusion"] = (NO_FUSION, dict(fusion=NO_FUSION), CROSSVIT_FUSES[NO_FUSION], "output")
    trained = train_side_by_side({
        name: partial(train_crossvit, key, train, val, crossvit_training(seed, longer, options.get("fusion")),
                      progress=progress, **options) for name, (key, options, _, _) in runs.items()})
    results = []
    for name, (model, history) in trained.items():
        _, _, fuses, where = runs[name]
        predicted = predict(model, test, device)
        texture = (predicted % len(TEXTURES) == test["texture"]).float().mean().item()
        results.append(Result("05", name, fuses, where, "multi-scale classification", "test accuracy",
                              (predicted == test["label"]).float().mean().item(),
                              **_measure(model, test["image"][:1]), train_seconds=_seconds(history),
                              device=device.type, seed=seed, extra={"texture accuracy": texture}))
    return results


MBT_WHERE = {"late": "output", "vanilla": "inside", "cross": "inside", "bottleneck": "inside"}
MBT_FUSES = {"late": "logits only (two streams, averaged)", "vanilla": "all tokens, from layer L_f",
             "cross": "each modality reads the other's tokens, from layer L_f",
             "bottleneck": "only through B bottleneck tokens, from layer L_f"}


def mbt_experiment(device: torch.device, seed: int, progress: bool, longer: bool) -> list[Result]:
    """Notebook 06: MBT's late, vanilla, cross and bottleneck fusion; accuracy with a modality missing."""
    train, val, test = (load_audiovisual_clips(split) for split in ("train", "val", "test"))
    config, results = mbt_training(seed, longer), []
    trained = train_side_by_side({name: partial(train_mbt, name, train, val, config, progress, **options)
                                  for name, options in MBT_MODES.items()})
    for name, (model, history) in trained.items():
        accuracies = modality_accuracies(model, test, device)
        results.append(Result("06", f"MBT, {name} fusion", MBT_FUSES[name], MBT_WHERE[name],
                              "audio-visual classification", "test accuracy", accuracies["fused"],
                              **_measure(model, _first(test, ("frames", "spectrogram"))),
                              train_seconds=_seconds(history), device=device.type, seed=seed,
                              extra={"frames dark": accuracies["dark"], "silent": accuracies["silent"]}))
    return results


def lavt_experiment(device: torch.device, seed: int, progress: bool, longer: bool) -> list[Result]:
    """Notebook 07: LAVT (PWAM and the gated pathway in every stage) vs the same with its gates closed and vs
    late fusion, frozen MiniLM."""
    train, test = load_referring_scenes("train"), load_referring_scenes("test")
    text_encoder, results = PretrainedTextEncoder(), []
    runs = (("LAVT", "pwam", "words into every pixel, each encoder stage", "inside"),
            ("LAVT, gates closed", "closed_gates", "words into every pixel, for the decoder only", "output"),
            ("LAVT, late fusion", "late", "words and pixels after the encoder", "output"))
    config = lavt_training(seed, longer)
    trained = train_side_by_side({name: partial(train_lavt, f"{fusion}_minilm", train, config, fusion,
                                                text_encoder, progress) for name, fusion, _, _ in runs})
    for (name, _, fuses, where), (model, history) in zip(runs, trained.values(), strict=True):
        scores = scores_by_expression_type(predicted_masks(model, test), test)
        sample = _first(referring_inputs(test, text_encoder))
        results.append(Result("07", name, fuses, where, "referring segmentation", "test mIoU",
                              scores["all"]["miou"],
                              **_measure(model, sample, frozen=text_encoder), train_seconds=_seconds(history),
                              device=device.type, seed=seed,
                              extra={"oIoU": scores["all"]["oiou"],
                                     "relation mIoU": scores["relation"]["miou"]}))
    return results


@dataclass(frozen=True)
class Experiment:
    """A notebook's headline experiment: ``run(device, seed, progress, longer)`` gives its ``Result`` rows."""

    notebook: str
    name: str
    run: Callable[[torch.device, int, bool, bool], list[Result]]


EXPERIMENTS = (Experiment("01", "vit", vit_experiment),
               Experiment("02", "concat", concat_experiment),
               Experiment("03", "tokenfusion", tokenfusion_experiment),
               Experiment("04", "tokenfusion_heterogeneous", point_image_experiment),
               Experiment("05", "crossvit", crossvit_experiment),
               Experiment("06", "mbt", mbt_experiment),
               Experiment("07", "lavt", lavt_experiment))


def experiment_named(name: str) -> Experiment:
    """The experiment of notebook ``name`` ("03") or module ``name`` ("tokenfusion")."""
    for experiment in EXPERIMENTS:
        if name in (experiment.notebook, experiment.name):
            return experiment
    known = [f"{e.notebook} ({e.name})" for e in EXPERIMENTS]
    raise KeyError(f"expected a notebook number or name among {known}, got {name!r}")


def results_dir() -> Path:
    """Where notebooks and run-all save their rows: ``results/`` in the cache (``data/`` in a checkout)."""
    return cache_dir() / RESULTS_FOLDER


def _results_path(notebook: str, seed: int, longer: bool, directory: Path | None) -> Path:
    return (directory or results_dir()) / f"{notebook}_seed{seed}{'_longer' if longer else ''}.json"


def save_results(results: Sequence[Result], directory: Path | None = None) -> Path:
    """Write one notebook's rows as JSON (atomically: a temporary file, then a rename)."""
    notebooks, seeds = {r.notebook for r in results}, {r.seed for r in results}
    recipes = {r.longer for r in results}
    if len(notebooks) != 1 or len(seeds) != 1 or len(recipes) != 1:
        raise ValueError(f"expected the rows of one notebook, one seed and one recipe, got notebooks "
                         f"{sorted(notebooks)}, seeds {sorted(seeds)} and longer {sorted(recipes)}")
    path = _results_path(notebooks.pop(), seeds.pop(), recipes.pop(), directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps([asdict(result) for result in results], indent=1))
    temporary.replace(path)
    return path


def load_results(seed: int = 0, directory: Path | None = None, longer: bool = False
                 ) -> dict[str, list[Result]]:
    """The saved rows of every notebook that has saved some for ``seed`` (and recipe), by notebook
    ("01": [...]).  A file that cannot be read as rows is skipped (its notebook counts as not run)."""
    results = {}
    for experiment in EXPERIMENTS:
        path = _results_path(experiment.notebook, seed, longer, directory)
        try:
            results[experiment.notebook] = [Result(**row) for row in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError):
            continue
    return results


def run_experiment(name: str, device: torch.device | None = None, seed: int = 0, progress: bool = True,
                   directory: Path | None = None, longer: bool = False) -> list[Result]:
    """Train (or load) and score notebook ``name``'s models with its default recipe (or, ``longer``,
    its LONGER one), save the rows, return them."""
    rows = experiment_named(name).run(device or default_device(), seed, progress, longer)
    results = [replace(row, longer=longer) for row in rows]
    save_results(results, directory)
    return results


def results_table(results: Sequence[Result]) -> str:
    """The rows as one Markdown table (metric to 3 decimals, MFLOPs to 1, seconds to the second)."""
    lines = ["| nb | model | fuses | where | task | metric | value | params | MFLOPs | training s | other |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        other = "; ".join(f"{key} {value:.3f}" for key, value in r.extra.items())
        lines.append(f"| {r.notebook} | {r.model} | {r.fuses} | {r.where} | {r.task} | {r.metric} | "
                     f"{r.value:.3f} | {r.params:,} | {r.mflops:.1f} | {r.train_seconds:.0f} ({r.device}) | "
                     f"{other} |")
    return "\n".join(lines)
