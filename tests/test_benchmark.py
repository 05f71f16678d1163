"""The benchmark's notebook timer: installed as an IPython startup file, it times a notebook from inside the
kernel nbval starts (benchmarks/notebook_timer.py)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "benchmarks" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_notebook_timer_splits_a_notebooks_time_from_inside_its_kernel(tmp_path):
    benchmark = _benchmark()
    environment = {**os.environ, **benchmark._timer_profile(tmp_path)}
    notebook = "notebooks/00_start_here.ipynb"  # loads (or generates) the RGB-D scenes, plots, trains nothing
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", notebook], cwd=ROOT, env=environment,
                   check=True, capture_output=True)
    totals = json.loads(Path(environment["FUSION_EDU_TIMINGS"]).read_text())
    assert set(totals) == set(benchmark.TIMINGS)
    assert totals["data"] > 0 and totals["plotting"] > 0, totals
    assert totals["training"] == 0 and totals["evaluation"] == 0, totals
