"""The mechanism diagrams: each draws, follows the package's own computation where it shows one, is written
to notebooks/figures/ as SVG, and is shown in a notebook."""

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from fusion_edu import diagrams

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "notebooks" / "figures"


def _texts(fig) -> list[str]:
    return [text.get_text() for ax in fig.axes for text in ax.texts]


@pytest.mark.parametrize("name", list(diagrams.DIAGRAMS))
def test_each_diagram_draws_with_a_title(name):
    fig = diagrams.DIAGRAMS[name]()
    try:
        assert fig.axes and len(_texts(fig)) >= 5, name
        assert any(text.get_fontweight() == "bold" for ax in fig.axes for text in ax.texts), name
    finally:
        plt.close(fig)


def test_substitution_diagram_moves_the_aligned_token_of_each_low_score():
    fig = diagrams.token_substitution()
    try:
        labels = {text for text in _texts(fig) if "'s\ntoken" in text}
    finally:
        plt.close(fig)
    expected = set()
    for modality, scores in diagrams.EXAMPLE_SCORES.items():
        other = next(m for m in diagrams.EXAMPLE_SCORES if m != modality)
        expected |= {f"{other}'s\ntoken {j}" for j, s in enumerate(scores) if s < diagrams.THRESHOLD}
    assert labels == expected == {"depth's\ntoken 2", "rgb's\ntoken 3"}


def test_camera_diagram_marks_the_points_without_a_patch():
    fig = diagrams.point_to_patch()
    try:
        reasons = [text for text in _texts(fig) if text.startswith("no patch")]
    finally:
        plt.close(fig)
    behind = sum(z <= 0 for _, _, z in diagrams.EXAMPLE_POINTS)  # one; and one point is above the image
    expected = ["no patch:\nbehind the camera"] * behind + ["no patch:\noutside the image"]
    assert behind == 1 and sorted(reasons) == sorted(expected)


def test_write_diagrams_is_deterministic_and_keeps_text(tmp_path):
    first = diagrams.write_diagrams(tmp_path / "a")
    second = diagrams.write_diagrams(tmp_path / "b")
    assert [p.name for p in first] == [f"{name}.svg" for name in diagrams.DIAGRAMS]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert "TokenFusion: replace the tokens" in (tmp_path / "a" / "token_substitution.svg").read_text()


def test_committed_svgs_are_the_diagrams():
    """notebooks/figures/ holds one SVG per diagram (regenerate: python -m fusion_edu.diagrams)."""
    assert sorted(p.stem for p in FIGURES.glob("*.svg")) == sorted(diagrams.DIAGRAMS)
    for name, draw in diagrams.DIAGRAMS.items():
        fig = draw()
        title = next(t.get_text() for ax in fig.axes for t in ax.texts if t.get_fontweight() == "bold")
        plt.close(fig)
        assert title.split(":")[0] in (FIGURES / f"{name}.svg").read_text(), name


def test_every_diagram_is_shown_in_a_notebook():
    sources = "".join("".join(cell["source"]) for path in sorted((REPO / "notebooks").glob("*.ipynb"))
                      for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code")
    missing = [name for name in diagrams.DIAGRAMS if f"diagrams.{name}()" not in sources]
    assert not missing, missing
