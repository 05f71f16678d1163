"""The seed sweeps' recorded results (fusion_edu.sweeps), which notebooks 03b and 08 read."""

import matplotlib.pyplot as plt
import pytest

from fusion_edu.plotting import plot_seed_spread
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
