"""The notebooks under parallel test workers (``pytest -n auto --dist loadfile``, the default in
pyproject.toml).  pytest-xdist's ``loadfile`` gives each worker whole test files; here the notebooks go in
two chains instead, each run by one worker in order, so that a notebook finds in the cache the models its
chain's earlier notebooks trained:

- ``rgbd_crossvit``: 00, then 01 (the single-modal ViTs), 02, 03a and 03b (which load them), then 05;
- ``points_audio_language``: 04, 06, 07, then 08, which reads every notebook's saved results.

The two take about as long (10.8 and 11.1 minutes at 2 threads, BENCHMARKS.md).  Should the first chain not
have saved a result when 08 starts, 08 runs that experiment itself, loading whatever models are cached; a
model the other worker is training meanwhile it waits for and loads (``datasets.cache.made_once``) rather
than training it twice.

The seed sweeps (``pytest -m claims``) go to the workers in groups of files whose recorded costs are as even
as they can be (``sweep_groups``): xdist's own order (files by number of tests, the next file handed to a
worker while it still has two tests to run) put 47 of the 78 minutes on one of two workers.
"""

from collections.abc import Collection
from functools import cached_property
from itertools import product
from pathlib import Path

import pytest
from xdist.scheduler import LoadFileScheduling

CHAINS = {"rgbd_crossvit": ("00", "01", "02", "03", "05"), "points_audio_language": ("04", "06", "07", "08")}
# Seconds each seed-sweep file took in one run on a 2-core machine, 2 workers at 1 thread each (--durations).
# LAVT's is estimated: its seven models' recorded training times (1,435 s, both cores busy) and about 150 s of
# data and scoring, since its diagnosis runs on seed 0 only and the scenes are version 2. The RGB-D file's adds an
# estimated 130 s for notebook 03b's forms (nine short fine-tunes and their scoring: 57-58 s a seed, measured on a
# slower day), and 600 s for its weight sharing and damage levels (a shared-layer pretraining, two short
# fine-tunes, every short-run model scored at five damage levels: the 03b test took 242-287 s a seed at 1
# thread on 4 December 2026, with the other core mostly idle)
SWEEP_SECONDS = {"tests/test_claims_lavt.py": 1590, "tests/test_claims.py": 1870,
                 "tests/test_claims_tokenfusion_heterogeneous.py": 1010, "tests/test_claims_mbt.py": 736,
                 "tests/test_claims_crossvit.py": 474}


def chain_of(notebook: Path) -> str:
    """The chain a notebook file (``NN_name.ipynb``, or ``NNa_name.ipynb`` for a part of notebook NN) belongs to."""
    number = notebook.name[:2]
    for chain, numbers in CHAINS.items():
        if number in numbers:
            return chain
    raise ValueError(f"expected a notebook numbered one of {[n for ns in CHAINS.values() for n in ns]}, "
                     f"got {notebook.name}")


def sweep_groups(workers: int, files: Collection[str] = SWEEP_SECONDS) -> dict[str, int]:
    """Each seed-sweep file of ``files`` (those this run collected) its group, for ``workers`` workers: the
    grouping whose costliest group costs least (every grouping tried: at most ``workers ** 5``, and only
    while there are fewer workers than files)."""
    files = [path for path in SWEEP_SECONDS if path in files]
    if workers >= len(files):
        return {path: group for group, path in enumerate(files)}

    def costliest(groups: tuple[int, ...]) -> int:
        return max(sum(SWEEP_SECONDS[path] for path, g in zip(files, groups, strict=True) if g == group)
                   for group in range(workers))

    return dict(zip(files, min(product(range(workers), repeat=len(files)), key=costliest), strict=True))


def scope_of(nodeid: str, workers: int, sweeps: Collection[str] = SWEEP_SECONDS) -> str:
    """What one of ``workers`` workers runs together: a notebook's chain, a group of the collected seed-sweep
    files ``sweeps``, or any other test's file (its module fixtures, the seed sweeps' trained models, are
    built once)."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("notebooks/") and path.endswith(".ipynb"):
        return chain_of(Path(path))
    if path in SWEEP_SECONDS:
        return f"sweeps {sweep_groups(workers, sweeps)[path]}"
    return path


class NotebookChainScheduling(LoadFileScheduling):
    @cached_property
    def collected_sweeps(self) -> set[str]:
        """The seed-sweep files this run collected (``.ci/run`` leaves LAVT's out)."""
        return {nodeid.split("::", 1)[0] for nodeid in self.collection} & SWEEP_SECONDS.keys()

    def _split_scope(self, nodeid: str) -> str:
        return scope_of(nodeid, self.numnodes, self.collected_sweeps)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> LoadFileScheduling | None:
    """With ``--dist loadfile``, notebooks are scheduled by chain (other ``--dist`` modes as xdist has them)."""
    if config.getoption("dist") == "loadfile":
        return NotebookChainScheduling(config, log)
    return None
