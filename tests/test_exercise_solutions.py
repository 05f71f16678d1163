"""Every exercise has an expected outcome and a worked solution (issue 22, item 3).

The solutions sit in a collapsed cell after each notebook's exercises, as Python blocks that ran once after
the rest of the notebook (their printed numbers are quoted beside them). Training them all would add most
of an hour to the suite, so here they are checked statically: each block compiles, and every name it reads
is a builtin, defined or imported in the block itself, or defined or imported by the notebook's own code
cells, so a student can paste it below the notebook and run it. The same holds for the hints.
"""

import ast
import builtins
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("0*.ipynb"))
WITH_SOLUTIONS = [notebook.stem for notebook in NOTEBOOKS]  # every notebook of the course
SOLUTION = re.compile(r"<details><summary>Exercise (\d+)</summary>\s*```python\n(.*?)```", re.S)
EXERCISE = re.compile(r"^(\d+)\. ", re.M)
HINT_CALL = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)\(")


def _cells(name: str) -> list[dict]:
    return json.loads((NOTEBOOKS[0].parent / f"{name}.ipynb").read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _bound_names(tree: ast.AST) -> set[str]:
    """Every name a piece of code binds: assignments, loop and with targets, functions, classes, imports."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def _notebook_names(name: str) -> set[str]:
    code = "\n".join(_source(c) for c in _cells(name) if c["cell_type"] == "code")
    code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    return _bound_names(ast.parse(code)) | set(dir(builtins))


def _exercises_and_solutions(name: str) -> tuple[str, str]:
    cells = _cells(name)
    index = next(i for i, c in enumerate(cells)
                 if c["cell_type"] == "markdown" and "**Exercises.**" in _source(c))
    return _source(cells[index]).split("**Exercises.**", 1)[1], _source(cells[index + 1])


@pytest.mark.parametrize("name", WITH_SOLUTIONS)
def test_every_exercise_has_an_expectation_and_a_solution(name):
    exercises, solutions = _exercises_and_solutions(name)
    numbers = [int(n) for n in EXERCISE.findall(exercises)]
    assert numbers == list(range(1, len(numbers) + 1)) and numbers, (name, numbers)
    items = EXERCISE.split(exercises)[2::2]
    assert all("*Expect:*" in item for item in items), f"{name}: an exercise without '*Expect:*'"
    assert solutions.startswith("**Solutions**"), f"{name}: the cell after the exercises holds the solutions"
    assert [int(n) for n, _ in SOLUTION.findall(solutions)] == numbers, name


@pytest.mark.parametrize("name", WITH_SOLUTIONS)
def test_solutions_use_only_names_the_notebook_or_the_block_defines(name):
    known = _notebook_names(name)
    for number, code in SOLUTION.findall(_exercises_and_solutions(name)[1]):
        tree = ast.parse(code, filename=f"{name} solution {number}")
        read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        missing = read - known - _bound_names(tree)
        assert not missing, f"{name}, solution {number} reads {sorted(missing)}, which nothing defines"


@pytest.mark.parametrize("name", WITH_SOLUTIONS)
def test_hints_call_only_what_the_notebook_has(name):
    exercises, _ = _exercises_and_solutions(name)
    known = _notebook_names(name)
    called = set(HINT_CALL.findall(exercises))
    assert called <= known, f"{name}: the exercises call {sorted(called - known)}, which the notebook lacks"
