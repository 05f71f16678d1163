"""The seed sweeps' recorded results (fusion_edu.sweeps), which notebooks 03b and 08 read."""

import json

import matplotlib.pyplot as plt
import pytest

from fusion_edu.plotting import plot_seed_curves, plot_seed_spread
from fusion_edu.sweeps import SWEEPS_DIR, load_sweep, record_sweep, seed_spread

RECORDED = {"rgbd": "01-03", "tokenfusion_forms": "03b", "point_image": "04", "crossvit": "05", "mbt": "06",
            "lavt": "07"}


def test_seeds_accumulate_and_a_seed_is_updated_in_place(tmp_path):
    record_sweep("toy", 0, {"a": {"acc": 0.5, "cost": 2}, "b": {"acc": 0.7}}, "09", "acc", "r", tmp_path)
    record_sweep("toy", 1, {"a": {"acc": 0.6}, "b": {"acc": 0.9}}, "09", "acc", "r", tmp_path)
    record_sweep("toy", 0, {"a": {"acc": 0.4}}, "09", "acc", "r", tmp_path)  # seed 0's "a" again
    sweep = load_sweep("toy", tmp_path)
    assert sweep["seeds"]["0"] == {"a": {"acc": 0.4}, "b": {"acc": 0.7}}
    spread = seed_spread(sweep, "a")
    assert spread.values == (0.4, 0.6) and spread.low == 0.4 and spread.high == 0.6
    assert spread.mean == pytest.approx(0.5)
    assert seed_spread(sweep, "b", "acc").values == (0.7, 0.9)
    assert not list(tmp_path.glob("*.tmp"))


def test_another_recipe_starts_the_file_afresh(tmp_path):
    record_sweep("toy", 0, {"a": {"acc": 0.5}}, "09", "acc", "small", tmp_path)
    record_sweep("toy", 1, {"a": {"acc": 0.6}}, "09", "acc", "large", tmp_path)
    assert list(load_sweep("toy", tmp_path)["seeds"]) == ["1"]


def test_bad_rows_and_missing_sweeps_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"to hold the sweep's metric 'acc', got \['loss'\]"):
        record_sweep("toy", 0, {"a": {"loss": 1.0}}, "09", "acc", "r", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no recorded sweep 'absent'.*pytest -m claims"):
        load_sweep("absent", tmp_path)
    record_sweep("toy", 0, {"a": {"acc": 0.5}}, "09", "acc", "r", tmp_path)
    record_sweep("toy", 1, {"b": {"acc": 0.5}}, "09", "acc", "r", tmp_path)
    with pytest.raises(KeyError, match=r"no 'a' on seeds \['1'\]"):
        seed_spread(load_sweep("toy", tmp_path), "a")


@pytest.mark.parametrize("name", RECORDED)
def test_the_committed_sweeps_hold_three_seeds_of_the_same_models(name):
    sweep = load_sweep(name)
    assert (SWEEPS_DIR / f"{name}.json").exists() and sweep["notebook"] == RECORDED[name]
    assert list(sweep["seeds"]) == ["0", "1", "2"], sweep["seeds"].keys()
    models = [sorted(rows) for rows in sweep["seeds"].values()]
    assert models[0] and all(m == models[0] for m in models), models
    for rows in sweep["seeds"].values():
        assert all(0.0 <= row[sweep["metric"]] <= 1.0 for row in rows.values()), rows


def test_an_undefined_quantity_is_recorded_as_null_in_strict_json(tmp_path):
    path = record_sweep("toy", 0, {"a": {"acc": 0.5, "on damaged": float("nan")}}, "09", "acc", "r", tmp_path)
    def strict(constant):
        raise ValueError(f"not strict JSON: {constant}")
    saved = json.loads(path.read_text(), parse_constant=strict)
    assert saved["seeds"]["0"]["a"] == {"acc": 0.5, "on damaged": None}


def _toy_curves(tmp_path):
    for seed in range(3):
        rows = {model: {"acc": 0.5, **{f"acc at {level}": base - 0.1 * level + 0.01 * seed
                                       for level in range(3)}}
                for model, base in (("a", 0.8), ("b", 0.7))}
        record_sweep("toy", seed, rows, "09", "acc", "r", tmp_path)
    return load_sweep("toy", tmp_path)


def test_seed_curves_plot_means_bands_and_each_seeds_difference(tmp_path):
    sweep = _toy_curves(tmp_path)
    fig = plot_seed_curves(sweep, ["a", "b"], [f"acc at {level}" for level in range(3)], [0, 1, 2], "level")
    try:
        values, differences = fig.axes
        mean_b = values.get_lines()[1].get_ydata()
        assert mean_b == pytest.approx([0.71, 0.61, 0.51])
        assert values.get_ylim()[0] == 0
        gaps = [line.get_ydata() for line in differences.get_lines() if len(line.get_ydata()) == 3]
        assert len(gaps) == 3 and all(gap == pytest.approx([-0.1] * 3) for gap in gaps)
        low, high = differences.get_ylim()
        assert low == pytest.approx(-high) and high >= 0.1
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="one quantity per point of x, got 2 quantities and 3 points"):
        plot_seed_curves(sweep, ["a", "b"], ["acc at 0", "acc at 1"], [0, 1, 2], "level")
    with pytest.raises(ValueError, match=r"compare with and 1-8 more, got \['a'\]"):
        plot_seed_curves(sweep, ["a"], ["acc at 0"], [0], "level")


def test_seed_spread_plot_shows_the_chosen_models_in_order(tmp_path):
    fig = plot_seed_spread([_toy_curves(tmp_path)], models=["b", "a"])
    try:
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["b", "a"]
    finally:
        plt.close(fig)


def test_seed_spread_plot_has_a_panel_per_sweep_from_zero(tmp_path):
    for seed, values in enumerate(((0.5, 0.7), (0.6, 0.9), (0.55, 0.8))):
        record_sweep("toy", seed, {"a": {"acc": values[0]}, "b_model": {"acc": values[1]}}, "09", "acc", "r",
                     tmp_path)
    sweep = load_sweep("toy", tmp_path)
    fig = plot_seed_spread([sweep, sweep])
    try:
        panels = [ax for ax in fig.axes if ax.get_visible() and ax.has_data()]
        assert len(panels) == 2
        assert all(ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 0.9 for ax in panels)
        assert [t.get_text() for t in panels[0].get_xticklabels()] == ["a", "b model"]
    finally:
        plt.close(fig)
