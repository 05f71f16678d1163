"""The seed sweeps' results, saved where notebook 08 reads them.

The seed sweeps (``tests/test_claims*.py``, ``pytest -m claims``) re-train each notebook's models on
seeds 0, 1 and 2 and assert its claims. Each also records what it measured, per seed and model, in
``fusion_edu/sweeps/<sweep>.json``: the committed files are one recorded run (its processor and thread
count are inside), and a new run of the sweeps rewrites them. Notebook 08 plots the mean and the range
over the seeds from these files and trains nothing.

A file holds ``{"sweep", "notebook", "metric", "recipe", "machine", "threads", "seeds": {seed: {model:
{quantity: value}}}}``; ``metric`` names the quantity that is each model's headline score.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["SWEEPS_DIR", "SeedSpread", "load_sweep", "machine", "record_sweep", "seed_spread"]

SWEEPS_DIR = Path(__file__).resolve().parent / "sweeps"


def machine() -> str:
    """The processor (its model name where Linux says it) and the vector instructions ATen computes with."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        name = names[0] if names else name
    return f"{name}, {torch.backends.cpu.get_cpu_capability()} kernels"


def _path(sweep: str, directory: Path | None) -> Path:
    return (directory or SWEEPS_DIR) / f"{sweep}.json"


def _number(value: float | None) -> float | None:
    """A recorded quantity: a float, or None (JSON's null) where it is undefined (NaN)."""
    return None if value is None or math.isnan(value) else float(value)


def record_sweep(sweep: str, seed: int, rows: Mapping[str, Mapping[str, float]], notebook: str, metric: str,
                 recipe: str, directory: Path | None = None) -> Path:
    """Add (or replace) one seed's ``rows`` ``{model: {quantity: value}}`` in the sweep's file; rows of a
    model already recorded for this seed are updated, others kept. Written atomically, as strict JSON: an
    undefined quantity (NaN) is recorded as null."""
    for model, quantities in rows.items():
        if metric not in quantities:
            raise ValueError(f"expected every row to hold the sweep's metric {metric!r}, "
                             f"got {sorted(quantities)} for {model!r}")
    path = _path(sweep, directory)
    saved = load_sweep(sweep, directory) if path.exists() else {}
    if saved and (saved["notebook"], saved["metric"], saved["recipe"]) != (notebook, metric, recipe):
        saved = {}  # another configuration: start afresh
    seeds = saved.get("seeds", {})
    seeds[str(seed)] = {**seeds.get(str(seed), {}),
                        **{model: {key: _number(value) for key, value in quantities.items()}
                           for model, quantities in rows.items()}}
    payload = {"sweep": sweep, "notebook": notebook, "metric": metric, "recipe": recipe,
               "machine": machine(), "threads": torch.get_num_threads(),
               "seeds": dict(sorted(seeds.items()))}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")  # strict JSON
    os.replace(temporary, path)
    return path


def load_sweep(sweep: str, directory: Path | None = None) -> dict:
    """The recorded sweep; a clear error if it was never recorded."""
    path = _path(sweep, directory)
    if not path.exists():
        raise FileNotFoundError(f"no recorded sweep {sweep!r} at {path}: run `pytest -m claims` to record it")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class SeedSpread:
    """One model's quantity over the recorded seeds."""

    values: tuple[float, ...]  # by seed, in seed order

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)


def seed_spread(sweep: Mapping, model: str, quantity: str | None = None) -> SeedSpread:
    """``model``'s ``quantity`` (default: the sweep's metric) over every recorded seed."""
    quantity = quantity or sweep["metric"]
    missing = [seed for seed, rows in sweep["seeds"].items() if model not in rows]
    if missing:
        raise KeyError(f"sweep {sweep['sweep']!r} has no {model!r} on seeds {missing}; "
                       f"models: {sorted(next(iter(sweep['seeds'].values())))}")
    return SeedSpread(tuple(rows[model][quantity] for rows in sweep["seeds"].values()))
