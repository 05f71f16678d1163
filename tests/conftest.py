"""Shared fixtures: a throwaway cache folder and a tiny RGB-D set; the thread count of parallel workers."""

import os
from contextlib import contextmanager

import matplotlib
import pytest
import torch

from fusion_edu.datasets import RGBDConfig, generate_rgbd_scenes
from fusion_edu.train import THREADS_VARIABLE, machine_cores, use_threads

matplotlib.use("Agg")  # no display in this process (notebook kernels keep their own backend)


TEST_THREADS = 2  # the unit tests' pinned thread count (a parallel worker's share of the cores instead)
# A parallel worker on 2 cores runs at 1 thread, the count the committed outputs were made at; so that a test
# run is still "another machine", its notebook kernels compute as a processor without AVX-512 does (ATen's
# and MKL's AVX2 code paths: other floating-point sums, the same results up to rounding).
ANOTHER_PROCESSOR = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def pytest_configure(config):
    """Under pytest-xdist (``-n auto``), each worker computes on its share of the cores, not on all of
    them (two workers at 2 threads each on 2 cores run slower than one), and its notebook kernels, which
    inherit its environment, as another processor would.  An explicit ``$FUSION_EDU_THREADS`` wins."""
    global TEST_THREADS
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:
        os.environ.setdefault(THREADS_VARIABLE, str(max(1, machine_cores() // workers)))
        for variable, value in ANOTHER_PROCESSOR.items():
            os.environ.setdefault(variable, value)
    if workers or os.environ.get(THREADS_VARIABLE, "").strip():
        TEST_THREADS = use_threads()


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """Point the dataset/model cache at an empty temporary folder."""
    monkeypatch.setenv("FUSION_EDU_DATA", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def small_scenes():
    """200 scenes, generated once per test session (no cache involved)."""
    return generate_rgbd_scenes(200, seed=123, config=RGBDConfig())


@pytest.fixture(autouse=True)
def _fixed_threads():
    """CPU results depend on the thread count; pin it so tests are reproducible."""
    previous = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(previous)


NOTEBOOK_SEED = 0  # the seed every notebook trains with


@contextmanager
def notebook_threads():
    """The notebooks' thread count (``use_threads``: $FUSION_EDU_THREADS, else the machine's cores), so a
    sweep's seed 0 trains as its notebook does in the same test run; the caller's count afterwards."""
    threads = torch.get_num_threads()
    use_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def private_cache(tmp_path_factory):
    """For claims fixtures (module-scoped, so they run before ``_fixed_threads``): a context manager that
    points the cache at an empty folder named after ``name`` and uses the notebooks' thread count."""

    @contextmanager
    def enter(name: str):
        with notebook_threads(), pytest.MonkeyPatch.context() as patch:
            patch.setenv("FUSION_EDU_DATA", str(tmp_path_factory.mktemp(name)))
            yield

    return enter


@pytest.fixture(scope="session")
def claims_cache(private_cache):
    """``with claims_cache(name, seed) as shared:`` the notebooks' seed trains in the shared cache
    (``data/``; ``shared`` is True), exactly as its notebook does, so the sweep and the notebook load each
    other's models instead of training them twice; every other seed trains in a private cache. Both
    use the notebooks' thread count."""

    @contextmanager
    def enter(name: str, seed: int):
        if seed == NOTEBOOK_SEED:
            with notebook_threads():
                yield True
        else:
            with private_cache(f"{name}{seed}"):
                yield False

    return enter
