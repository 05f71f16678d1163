"""The notebooks under parallel test workers (``pytest -n auto --dist loadfile``, the default in
pyproject.toml).  pytest-xdist's ``loadfile`` gives each worker whole test files; here the notebooks go in
two chains instead, each run by one worker in order, so that a notebook finds in the cache the models its
chain's earlier notebooks trained:

- ``rgbd_crossvit``: 00, then 01 (the single-modal ViTs), 02, 03a and 03b (which load them), then 05;
- ``points_audio_language``: 04, 06, 07, then 08, which reads every notebook's saved results.

The two take about as long (10.8 and 11.1 minutes at 2 threads, BENCHMARKS.md).  Should the first chain not
have saved a result when 08 starts, 08 runs that experiment itself, loading whatever models are cached.
"""

from pathlib import Path

import pytest
from xdist.scheduler import LoadFileScheduling

CHAINS = {"rgbd_crossvit": ("00", "01", "02", "03", "05"), "points_audio_language": ("04", "06", "07", "08")}


def chain_of(notebook: Path) -> str:
    """The chain a notebook file (``NN_name.ipynb``, or ``NNa_name.ipynb`` for a part of notebook NN) belongs to."""
    number = notebook.name[:2]
    for chain, numbers in CHAINS.items():
        if number in numbers:
            return chain
    raise ValueError(f"expected a notebook numbered one of {[n for ns in CHAINS.values() for n in ns]}, "
                     f"got {notebook.name}")


def scope_of(nodeid: str) -> str:
    """What one worker runs together: a notebook's chain, or any other test's file (its module fixtures,
    the seed sweeps' trained models, are built once)."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("notebooks/") and path.endswith(".ipynb"):
        return chain_of(Path(path))
    return path


class NotebookChainScheduling(LoadFileScheduling):
    def _split_scope(self, nodeid: str) -> str:
        return scope_of(nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> LoadFileScheduling | None:
    """With ``--dist loadfile``, notebooks are scheduled by chain (other ``--dist`` modes as xdist has them)."""
    if config.getoption("dist") == "loadfile":
        return NotebookChainScheduling(config, log)
    return None
