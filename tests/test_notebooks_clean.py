"""House rules for the committed notebooks: run top to bottom on a fresh kernel, no errors, no
stored widget state, small enough to read on GitHub, and the same header and closing in each."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
MAX_BYTES = 2_000_000


def _code_cells(notebook):
    return [c for c in notebook["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    notebook = json.loads(path.read_text())
    counts = [cell["execution_count"] for cell in _code_cells(notebook)]
    assert counts == list(range(1, len(counts) + 1)), "restart the kernel and run all before committing"
    errors = [o for c in notebook["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors
    assert "widgets" not in notebook["metadata"], "strip widget state (store_widget_state=False)"
    assert path.stat().st_size < MAX_BYTES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_the_shared_header_and_closing(path):
    notebook = json.loads(path.read_text())
    markdown = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "markdown"]
    header = markdown[0]
    assert header.startswith(f"# {path.name[:2]} · ") and "colab-badge.svg" in header
    assert "**What you will build.**" in header and "**Time.**" in header
    assert "pip" in "".join(_code_cells(notebook)[0]["source"])  # the Colab install cell comes first
    closing = "\n".join(markdown[-3:])
    assert "## What we learned" in closing and "**Exercises.**" in closing
    assert "**References.**" in markdown[-1]
    last_code = "".join(_code_cells(notebook)[-1]["source"])
    assert "assert" in last_code, "end with a check cell"


COLAB = "https://colab.research.google.com/github/fusion-edu/fusion_edu/blob/main/notebooks/"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_in_colab_from_its_header_and_the_readme(path):
    header = "".join(json.loads(path.read_text())["cells"][0]["source"])
    assert f"({COLAB}{path.name})" in header, "the header's Colab badge must open this notebook"
    assert f"colab-badge.svg)]({COLAB}{path.name})" in README.read_text(), "add its badge to the README"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_install_cell_keeps_the_machines_torch(path):
    install = "".join(_code_cells(json.loads(path.read_text()))[0]["source"])
    pip_lines = [line for line in install.splitlines() if '"pip", "install"' in line]
    assert len(pip_lines) == 1 and "torch" not in pip_lines[0], pip_lines  # fusion_edu only: Colab has torch
    assert 'find_spec("fusion_edu") is None' in install  # nothing is installed where the package is present
