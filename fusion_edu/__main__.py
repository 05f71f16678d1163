"""The course without a notebook: ``python -m fusion_edu run-all`` trains every notebook's headline models.

    python -m fusion_edu run-all [--only 03 --only crossvit] [--device cpu|cuda] [--seed 0] [--out results]
                                 [--threads N] [--longer]

Each experiment (``course.EXPERIMENTS``, one per notebook 01-07) trains its models with the notebook's
default recipe (``--longer``: its LONGER one), or loads them from the cache when a notebook or an earlier
run trained them, scores them and saves its rows where notebook 08 reads them.  ``--out`` receives the
report: ``results.md`` (the table), ``results.json`` (the rows) and two figures (metric vs FLOPs, metric
vs training time).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures go to files

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

from .course import EXPERIMENTS, Result, experiment_named, results_table, run_experiment
from .plotting import plot_metric_vs_cost
from .train import THREADS_VARIABLE, default_device, use_threads

FIGURE_DPI = 120
FIGURES = {"metric_vs_flops.png": "mflops", "metric_vs_training_time.png": "train_seconds"}


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fusion_edu", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_all = commands.add_parser("run-all", help="train and score every notebook's models, write a report")
    run_all.add_argument("--only", action="append", metavar="NAME",
                         help="a notebook number or name (repeatable): " +
                              ", ".join(f"{e.notebook}/{e.name}" for e in EXPERIMENTS))
    run_all.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    run_all.add_argument("--seed", type=int, default=0, help="training seed (initialisation, shuffling)")
    run_all.add_argument("--out", type=Path, default=Path("results"), help="folder for the report")
    run_all.add_argument("--threads", type=int, default=None,
                         help=f"CPU threads (default: ${THREADS_VARIABLE}, else the machine's cores; CPU "
                              "numbers match a notebook's bit for bit only at its thread count)")
    run_all.add_argument("--longer", action="store_true",
                         help="the notebooks' LONGER recipes (2-4x the epochs, meant for a GPU)")
    return parser.parse_args(argv)


def write_report(results: Sequence[Result], seconds: dict[str, float], out: Path) -> None:
    """``results.md``, ``results.json`` and the figures of ``FIGURES`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    timing = ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items())
    devices = ", ".join(sorted({r.device for r in results}))
    seeds = ", ".join(str(seed) for seed in sorted({r.seed for r in results}))
    (out / "results.md").write_text(
        f"# fusion_edu: the course's results\n\nDevice {devices}, seed {seeds}; "
        f"wall time per experiment (training or loading, scoring): {timing}.\n\n{results_table(results)}\n\n"
        + "".join(f"![{name}]({name})\n" for name in FIGURES))
    (out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    for name, cost in FIGURES.items():
        figure = plot_metric_vs_cost(results, cost)
        figure.savefig(out / name, dpi=FIGURE_DPI)
        plt.close(figure)


def run_all(arguments: argparse.Namespace) -> list[Result]:
    """Run the chosen experiments in the notebooks' order, with progress bars; write the report."""
    experiments = [experiment_named(name) for name in arguments.only] if arguments.only else list(EXPERIMENTS)
    device = torch.device(arguments.device) if arguments.device else default_device()
    use_threads(arguments.threads)
    results, seconds = [], {}
    for experiment in tqdm(experiments, desc="experiments", unit="notebook"):
        tqdm.write(f"notebook {experiment.notebook} ({experiment.name}) on {device}, seed {arguments.seed}")
        start = time.perf_counter()
        results += run_experiment(experiment.notebook, device, arguments.seed, longer=arguments.longer)
        seconds[experiment.notebook] = time.perf_counter() - start
    write_report(results, seconds, arguments.out)
    print(results_table(results))
    print(f"report: {arguments.out / 'results.md'} ({sum(seconds.values()):.0f} s)")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    if arguments.command == "run-all":
        try:
            run_all(arguments)
        except KeyError as error:  # an unknown --only NAME: say which names exist, without a traceback
            raise SystemExit(f"python -m fusion_edu run-all: {error.args[0]}") from None


if __name__ == "__main__":
    main()
