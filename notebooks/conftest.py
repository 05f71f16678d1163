"""The notebooks under parallel test workers (``pytest -n auto --dist loadgroup``, the default in
pyproject.toml): two chains, each run by one worker in order, so a notebook finds in the cache the models
its chain's earlier notebooks trained.

- ``rgbd_crossvit``: 00, then 01 (the single-modal ViTs), 02 and 03 (which load them), then 05;
- ``points_audio_language``: 04, 06, 07, then 08, which reads every notebook's saved results.

The two take about as long (10.8 and 11.1 minutes at 2 threads, BENCHMARKS.md).  Should the first chain not
have saved a result when 08 starts, 08 runs that experiment itself, loading whatever models are cached.
"""

from pathlib import Path

import pytest

CHAINS = {"rgbd_crossvit": ("00", "01", "02", "03", "05"), "points_audio_language": ("04", "06", "07", "08")}
NOTEBOOKS = Path(__file__).resolve().parent


def chain_of(notebook: Path) -> str:
    """The chain a notebook file (``NN_name.ipynb``) belongs to."""
    number = notebook.name[:2]
    for chain, numbers in CHAINS.items():
        if number in numbers:
            return chain
    raise ValueError(f"expected a notebook numbered one of {[n for ns in CHAINS.values() for n in ns]}, "
                     f"got {notebook.name}")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.suffix == ".ipynb" and item.path.parent == NOTEBOOKS:
            item.add_marker(pytest.mark.xdist_group(chain_of(item.path)))
