"""The headless course: result rows saved and read back, the report, and ``python -m fusion_edu run-all``.

The seven real experiments are checked by the notebooks: each one ends by running its own experiment and
asserting that the saved rows equal the numbers it computed itself."""

import json

import matplotlib.pyplot as plt
import pytest
import torch

from fusion_edu import __main__ as cli
from fusion_edu import course
from fusion_edu.course import (
    Experiment,
    Result,
    experiment_named,
    load_results,
    results_table,
    run_experiment,
    save_results,
)
from fusion_edu.datasets import CLASSES
from fusion_edu.flops import count_parameters
from fusion_edu.plotting import plot_metric_vs_cost
from fusion_edu.train import TrainConfig, evaluate, fit_or_load, seeded
from fusion_edu.vit import VisionTransformer


def row(notebook="01", model="m", task="t", value=0.5, seed=0, fuses="nothing", where="none", **changes
        ) -> Result:
    return Result(notebook=notebook, model=model, fuses=fuses, where=where, task=task, metric="test mIoU",
                  value=value, params=10, mflops=1.5, train_seconds=3.0, device="cpu", seed=seed, **changes)


def test_saved_rows_read_back_equal(tmp_cache):
    rows = [row(model="a"), row(model="b", value=0.25, extra={"silent": 0.125})]
    path = save_results(rows)
    assert path == tmp_cache / "results" / "01_seed0.json"
    assert load_results() == {"01": rows}
    assert load_results(seed=1) == {}


def test_rows_of_two_notebooks_or_seeds_are_refused(tmp_cache):
    with pytest.raises(ValueError, match=r"one seed and one recipe, got notebooks \['01', '02'\]"):
        save_results([row(notebook="01"), row(notebook="02")])
    with pytest.raises(ValueError, match=r"seeds \[0, 1\]"):
        save_results([row(seed=0), row(seed=1)])


def test_an_unreadable_results_file_counts_as_not_run(tmp_cache):
    save_results([row(notebook="02")])
    (tmp_cache / "results" / "01_seed0.json").write_text('[{"notebook": "01"')  # cut short
    (tmp_cache / "results" / "03_seed0.json").write_text('[{"unknown_field": 1}]')
    assert list(load_results()) == ["02"]


def test_experiments_are_found_by_number_or_name():
    assert experiment_named("03") is experiment_named("tokenfusion")
    assert [e.notebook for e in course.EXPERIMENTS] == ["01", "02", "03", "04", "05", "06", "07"]
    with pytest.raises(KeyError, match=r"notebook number or name among .*'07 \(lavt\)'.*got 'mbt2'"):
        experiment_named("mbt2")


def test_a_row_says_where_the_modalities_meet_in_the_known_words():
    with pytest.raises(ValueError, match=r"where in \['none', 'input', 'inside', 'output'\], got 'middle'"):
        row(where="middle")


def test_the_table_has_a_line_per_row_with_the_rounded_numbers():
    table = results_table([row(model="late fusion", value=0.58549, extra={"silent": 0.46067}), row()])
    lines = table.splitlines()
    assert len(lines) == 2 + 2
    assert "| late fusion | nothing | none | t | test mIoU | 0.585 | 10 | 1.5 | 3 (cpu) | silent 0.461 |" \
        in lines[2]


def test_metric_vs_cost_draws_a_panel_per_task_and_a_point_per_model():
    rows = [row(task="a", model="x"), row(task="a", model="y", where="inside", value=0.75, notebook="03"),
            row(task="b")]
    figure = plot_metric_vs_cost(rows, "train_seconds")
    visible = [ax for ax in figure.axes if ax.axison]
    assert [ax.get_title() for ax in visible] == ["a (notebook 01–03)", "b (notebook 01)"]
    points = visible[0].collections
    assert len(points) == 2
    assert points[1].get_offsets()[0].tolist() == [3.0, 0.75]
    assert points[0].get_facecolor().sum() == 0  # the fusion-free baseline is hollow
    assert [text.get_text() for text in visible[0].get_legend().get_texts()] == ["x", "y"]  # in a legend
    assert visible[0].get_ylim()[0] == 0 and visible[0].get_xlim()[0] == 0
    plt.close(figure)
    with pytest.raises(ValueError, match="cost must be one of"):
        plot_metric_vs_cost(rows, "joules")
    with pytest.raises(ValueError, match="at least one Result"):
        plot_metric_vs_cost([], "mflops")


def test_arguments_of_run_all():
    arguments = cli.parse_arguments(["run-all", "--only", "03", "--only", "crossvit", "--device", "cpu",
                                     "--seed", "2"])
    assert (arguments.only, arguments.device, arguments.seed, arguments.threads, arguments.longer) == (
        ["03", "crossvit"], "cpu", 2, None, False)  # threads: $FUSION_EDU_THREADS, else the cores
    assert cli.parse_arguments(["run-all", "--threads", "1", "--longer"]).longer
    with pytest.raises(SystemExit):
        cli.parse_arguments(["run-all", "--seed", "one"])
    with pytest.raises(SystemExit, match=r"run-all: expected a notebook number or name .* got 'nine'"):
        cli.main(["run-all", "--only", "nine"])


@pytest.fixture
def tiny_experiment(small_scenes, monkeypatch):
    """A real experiment, small: a 1-layer ViT trained one epoch on 200 scenes (cached like the course's)."""
    data = {key: small_scenes[key] for key in ("rgb", "label")}

    def run(device: torch.device, seed: int, progress: bool, longer: bool) -> list[Result]:
        with seeded(seed):
            model = VisionTransformer(img_size=32, patch_size=8, num_classes=len(CLASSES), embed_dim=16,
                                      depth=1, num_heads=2, task="segmentation", in_chans=3, modality="rgb")
        config = TrainConfig(epochs=2 if longer else 1, seed=seed)
        history = fit_or_load(f"tiny_seed{seed}", model, data, None, config, device, progress)
        return [Result("99", "tiny ViT", "nothing", "none", "toy segmentation", "train mIoU",
                       evaluate(model, data, device)["miou"], count_parameters(model), 0.1,
                       sum(r["seconds"] for r in history), device.type, seed)]

    experiments = (Experiment("99", "tiny", run),)
    monkeypatch.setattr(course, "EXPERIMENTS", experiments)
    monkeypatch.setattr(cli, "EXPERIMENTS", experiments)


def test_run_all_trains_saves_and_reports_then_loads_the_same(tmp_cache, tiny_experiment, tmp_path, capsys):
    out = tmp_path / "report"
    only_tiny = ["run-all", "--only", "tiny", "--device", "cpu", "--out", str(out)]
    first = cli.run_all(cli.parse_arguments(only_tiny))
    second = cli.run_all(cli.parse_arguments(["run-all", "--device", "cpu", "--out", str(out)]))
    assert first == second  # the second run loads the cached model: same score, same recorded seconds
    assert (tmp_cache / "models" / "tiny_seed0.pt").exists()
    assert json.loads((tmp_cache / "results" / "99_seed0.json").read_text())[0]["model"] == "tiny ViT"
    report = (out / "results.md").read_text()
    assert "| 99 | tiny ViT |" in report and "Device cpu, seed 0" in report
    assert [r["value"] for r in json.loads((out / "results.json").read_text())] == [first[0].value]
    assert all((out / name).stat().st_size > 0 for name in cli.FIGURES)
    assert "experiments: 100%" in capsys.readouterr().err  # the progress bar


def test_the_longer_recipe_saves_and_loads_apart_from_the_default(tmp_cache, tiny_experiment):
    default = run_experiment("99", torch.device("cpu"), progress=False)
    longer = run_experiment("99", torch.device("cpu"), progress=False, longer=True)
    assert [r.longer for r in default] == [False] and [r.longer for r in longer] == [True]
    assert (tmp_cache / "results" / "99_seed0.json").exists()
    assert (tmp_cache / "results" / "99_seed0_longer.json").exists()
    assert load_results()["99"] == default and load_results(longer=True)["99"] == longer
    with pytest.raises(ValueError, match="one recipe"):
        save_results([*default, *longer])


def test_rgbd_experiments_train_other_seeds_beside_the_notebooks_models(tmp_cache, small_scenes, monkeypatch):
    """Notebooks 02-03 cache seed 0 under their own names; ``run-all --seed 1`` must not train over them."""
    from fusion_edu import train as train_module

    untrained = [{"epoch": 1, "train_loss": 0.0, "seconds": 0.0}]  # the cache is what is tested, not fit
    monkeypatch.setattr(train_module, "fit", lambda *args, **kwargs: list(untrained))
    monkeypatch.setattr(course, "_rgbd_data", lambda: (small_scenes,) * 3)
    for seed in (0, 1):
        for notebook in ("02", "03"):
            run_experiment(notebook, torch.device("cpu"), seed, progress=False)
    cached = {path.stem for path in (tmp_cache / "models").glob("0[23]_*.pt")}
    names = ("02_late_fusion", "02_token_concat", "02_input_fusion", "03_tokenfusion", "03_no_exchange")
    assert cached == {*names, *(f"{name}_seed1" for name in names)}, cached
