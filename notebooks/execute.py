"""Execute notebooks the way their committed outputs are made: a fresh kernel, top to bottom, then
stored widget state stripped (it bloats the file and means nothing on another machine).

    python notebooks/execute.py notebooks/01_vit_from_scratch.ipynb [more.ipynb ...]
"""

import sys

import nbformat
from nbclient import NotebookClient


def execute(path: str) -> None:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": "notebooks"}}).execute()
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, path)


if __name__ == "__main__":
    for notebook_path in sys.argv[1:]:
        execute(notebook_path)
        print("executed", notebook_path)
