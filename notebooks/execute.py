"""Execute notebooks the way their committed outputs are made: a fresh kernel, top to bottom, at one
CPU thread, then stored widget state and progress bars stripped (they bloat the file and mean nothing on
another machine).

    python notebooks/execute.py notebooks/01_vit_from_scratch.ipynb [more.ipynb ...]

The committed outputs are made at ``COMMITTED_THREADS`` and the tests run the notebooks at the default
(the machine's cores), so every test run checks them as another machine would: only outputs that are the
same on any machine are compared (``# NBVAL_CHECK_OUTPUT``), and claims about trained models are check-cell
assertions with margins.  The thread count is recorded in the notebook's metadata.
"""

import os
import re
import sys

import nbformat
from nbclient import NotebookClient

THREADS_VARIABLE = "FUSION_EDU_THREADS"  # read by fusion_edu.train.use_threads in the kernel
COMMITTED_THREADS = 1
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PROGRESS_BAR = re.compile(r"^[^\n]*\d+%\|")  # tqdm's text, e.g. "epochs:   0%|          | 0/10"


def _is_progress_bar(output: dict) -> bool:
    """A tqdm bar drawn as a widget: with widget state stripped, only its first text ("0%") would show."""
    data = output.get("data", {})
    return WIDGET_VIEW in data and bool(PROGRESS_BAR.match(data.get("text/plain", "")))


def strip_widget_state(notebook: nbformat.NotebookNode) -> None:
    """Drop stored widget state and progress-bar outputs (they mean nothing on another machine)."""
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [output for output in cell.outputs if not _is_progress_bar(output)]


def execute(path: str) -> None:
    notebook = nbformat.read(path, as_version=4)
    os.environ[THREADS_VARIABLE] = str(COMMITTED_THREADS)  # the kernel inherits this process's environment
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": "notebooks"}}).execute()
    strip_widget_state(notebook)
    notebook.metadata["fusion_edu"] = {"outputs_made_at_threads": COMMITTED_THREADS}
    nbformat.write(notebook, path)


if __name__ == "__main__":
    for notebook_path in sys.argv[1:]:
        execute(notebook_path)
        print("executed", notebook_path)
