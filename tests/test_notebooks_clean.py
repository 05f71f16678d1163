"""House rules for the committed notebooks: run top to bottom on a fresh kernel, no errors, no
stored widget state, small enough to read on GitHub, and the same header and closing in each."""

import importlib.util
import json
import re
from itertools import combinations
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
    number = path.name.split("_")[0]  # "03" or, for a notebook in parts, "03a"
    assert header.startswith(f"# {number} · ") and "colab-badge.svg" in header
    assert "**What you will build.**" in header and "**Time.**" in header
    assert "**Prerequisites.**" in header and "**You will learn**" in header
    assert "pip" in "".join(_code_cells(notebook)[0]["source"])  # the Colab install cell comes first
    closing = "\n".join(markdown[-5:])  # what we learned, the exercises, their solutions, the check's note
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


# Portability: the committed outputs are made at one thread count (notebooks/execute.py) and the tests run
# the notebooks at another (the default, the machine's cores), so only what is the same on any machine may
# be compared exactly. A marked cell that reads a trained model would fail on the next machine.
CHECKED = "# NBVAL_CHECK_OUTPUT"
TRAINED_MODEL_READS = ("run_experiment(", "evaluate(", "predict(", "predicted_masks(", "model_outputs(",
                       "token_scores_and_masks(", "object_detections(", "modality_accuracies(",
                       "histories", "print_table(", "load_results(", "in rows")
TRAINING_CALLS = ("_training(", "run_experiment(")


def _sources(path):
    return ["".join(c["source"]) for c in _code_cells(json.loads(path.read_text()))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_were_made_at_the_committed_thread_count(path):
    made_at = json.loads(path.read_text())["metadata"].get("fusion_edu", {}).get("outputs_made_at_threads")
    assert made_at == 1, f"run `python notebooks/execute.py {path.relative_to(path.parents[1])}` (1 thread)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_notebook_takes_its_thread_count_from_the_environment(path):
    sources = _sources(path)
    assert not any("set_num_threads" in source for source in sources), "use fusion_edu.train.use_threads()"
    assert sum("THREADS = use_threads()" in source for source in sources) == 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_compared_exactly_never_read_a_trained_model(path):
    for source in _sources(path):
        if source.startswith(CHECKED):
            reads = [name for name in TRAINED_MODEL_READS if name in source]
            assert not reads, (f"{CHECKED} on a cell that reads trained models ({reads}): its numbers "
                               "move between machines; assert them with a margin in the check cell", source)


TRAINING_NOTEBOOKS = [p for p in NOTEBOOKS if any(call in s for s in _sources(p) for call in TRAINING_CALLS)]


@pytest.mark.parametrize("path", TRAINING_NOTEBOOKS, ids=lambda p: p.name)
def test_a_training_notebook_has_one_longer_switch_off_and_its_checks_respect_it(path):
    sources = _sources(path)
    assert sources[1].startswith("LONGER = False"), "the switch opens the first cell after the install cell"
    assert sum(len(re.findall(r"^LONGER = ", source, re.MULTILINE)) for source in sources) == 1
    training = [s for s in sources if any(call in s for call in TRAINING_CALLS)]
    assert all("longer=LONGER" in s for s in training), "every recipe and experiment follows the switch"
    assert "if LONGER:" in sources[-1], "the check cell skips its trained-model claims under LONGER"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_progress_bar_is_stored(path):
    """A tqdm bar stored without its widget state shows a frozen "0%" on GitHub: execute.py drops them."""
    outputs = [o for c in json.loads(path.read_text())["cells"] for o in c.get("outputs", [])]
    stored = [o["data"]["text/plain"] for o in outputs
              if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert not [text for text in stored if "%|" in "".join(text)], stored


def _chains():
    """notebooks/conftest.py, loaded by path (it is pytest's conftest there, not a module to import)."""
    spec = importlib.util.spec_from_file_location("notebook_chains", NOTEBOOKS[0].parent / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_notebook_runs_in_one_parallel_chain_after_what_it_loads():
    chains = _chains()
    assert [chains.chain_of(path) for path in NOTEBOOKS]  # each has a chain, else chain_of raises
    for numbers in chains.CHAINS.values():
        assert list(numbers) == sorted(numbers)  # a worker runs its chain in this order
    rgbd = chains.chain_of(NOTEBOOKS[1])
    assert {"01", "02", "03"} <= set(chains.CHAINS[rgbd])  # 02, 03a and 03b load 01's single-modal models
    assert chains.chain_of(Path("03b_tokenfusion_ablations.ipynb")) == rgbd
    assert any(numbers[-1] == "08" for numbers in chains.CHAINS.values())  # 08 reads every result: last
    with pytest.raises(ValueError, match="expected a notebook numbered"):
        chains.chain_of(Path("09_new.ipynb"))
    # a worker gets a whole chain, a whole test file, or whole seed-sweep files (their module fixtures train
    # once per file)
    assert chains.scope_of("notebooks/02_alignment_agnostic_fusion.ipynb::Cell 3", 2) == rgbd
    assert chains.scope_of("tests/test_vit.py::test_x", 2) == "tests/test_vit.py"
    claims = chains.scope_of("tests/test_claims.py::test_02_x[1]", 2)
    assert claims == chains.scope_of("tests/test_claims.py::test_03_y[0]", 2) != "tests/test_claims.py"


def test_the_seed_sweeps_are_grouped_into_the_most_even_shares_of_their_recorded_cost():
    chains = _chains()
    sweeps = {f"tests/{path.name}" for path in (NOTEBOOKS[0].parent.parent / "tests").glob("test_claims*.py")}
    assert set(chains.SWEEP_SECONDS) == sweeps  # every sweep file has a recorded cost
    left_out = set(re.findall(r"--ignore=(\S+)", (NOTEBOOKS[0].parent.parent / ".ci" / "run").read_text()))
    assert left_out and left_out < sweeps, left_out  # CI leaves LAVT's out
    for collected in (sweeps, sweeps - left_out):
        # the scheduler itself, handed this run's collection: whole files, no other split of them with a
        # shorter longer share (whole files cannot always split evenly)
        scheduler = object.__new__(chains.NotebookChainScheduling)
        scheduler.numnodes, scheduler.collection = 2, [f"{path}::test_x" for path in sorted(collected)]
        scopes = {path: scheduler._split_scope(f"{path}::test_x") for path in collected}
        assert set(scopes.values()) == {"sweeps 0", "sweeps 1"}, scopes  # neither worker idle
        costs = [sum(chains.SWEEP_SECONDS[path] for path in collected if scopes[path] == scope)
                 for scope in ("sweeps 0", "sweeps 1")]
        splits = (sum(chains.SWEEP_SECONDS[path] for path in subset)
                  for size in range(len(collected) + 1) for subset in combinations(sorted(collected), size))
        # no split is more even (with every file: 2,880 and 2,800 s; CI's four: 1,870 and 2,220, as the RGB-D
        # file alone costs nearly half of them)
        assert max(costs) == min(max(part, sum(costs) - part) for part in splits), costs
        scopes = {chains.scope_of(f"{path}::test_x", 3, collected) for path in collected}
        assert scopes == {f"sweeps {group}" for group in range(3)}, scopes  # none idle at 3 workers either
    assert sorted(chains.sweep_groups(len(sweeps)).values()) == list(range(len(sweeps)))  # one file each
