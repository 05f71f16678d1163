"""Where a notebook's time goes: an IPython startup file that ``benchmark.py --notebooks`` installs in the
kernels nbval starts (through ``$IPYTHONDIR``), not part of the course.

It times, cumulatively, in seconds:

- ``training``: inside ``fusion_edu.train.fit`` (the per-epoch validation included), or inside
  ``train_side_by_side``, whose worker processes train (the outermost of the two counted once);
- ``evaluation``: outermost forward passes of any model with gradients off, outside ``fit`` (scoring,
  predictions, the widgets' and figures' internals, FLOP counts);
- ``data``: inside ``fusion_edu.datasets.cache.cached_split`` (generating a split, or loading it);
- ``plotting``: rendering figures (``FigureCanvasBase.print_figure``, which the inline backend calls).

After every cell it writes the totals to the JSON file ``$FUSION_EDU_TIMINGS`` names.
"""

import functools
import importlib
import json
import os
import pkgutil
import sys
import time
from pathlib import Path

import torch
from matplotlib.backend_bases import FigureCanvasBase

import fusion_edu
import fusion_edu.datasets.cache
import fusion_edu.train

TOTALS = {"training": 0.0, "evaluation": 0.0, "data": 0.0, "plotting": 0.0}
_state = {"in_fit": False, "forward_depth": 0}


def _timed(category, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            TOTALS[category] += time.perf_counter() - start
    return wrapper


def _fit(function):
    """``function`` timed as training, unless it runs inside another such call (``fit`` in
    ``train_side_by_side``): each second is counted once."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if _state["in_fit"]:
            return function(*args, **kwargs)
        _state["in_fit"] = True
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            TOTALS["training"] += time.perf_counter() - start
            _state["in_fit"] = False
    return wrapper


def _forward(call):
    @functools.wraps(call)
    def wrapper(module, *args, **kwargs):
        counted = _state["forward_depth"] == 0 and not _state["in_fit"] and not torch.is_grad_enabled()
        _state["forward_depth"] += 1
        start = time.perf_counter()
        try:
            return call(module, *args, **kwargs)
        finally:
            _state["forward_depth"] -= 1
            if counted:
                TOTALS["evaluation"] += time.perf_counter() - start
    return wrapper


def _replace_everywhere(original, replacement):
    """Every ``fusion_edu`` module that imported ``original`` by name gets ``replacement``."""
    for name, module in list(sys.modules.items()):
        if name.startswith("fusion_edu"):
            for attribute, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attribute, replacement)


for _module in pkgutil.walk_packages(fusion_edu.__path__, "fusion_edu."):
    if _module.name != "fusion_edu.__main__":
        importlib.import_module(_module.name)
for _trainer in (fusion_edu.train.fit, fusion_edu.train.train_side_by_side):
    _replace_everywhere(_trainer, _fit(_trainer))
_replace_everywhere(fusion_edu.datasets.cache.cached_split,
                    _timed("data", fusion_edu.datasets.cache.cached_split))
torch.nn.Module.__call__ = _forward(torch.nn.Module.__call__)
FigureCanvasBase.print_figure = _timed("plotting", FigureCanvasBase.print_figure)


def _write_totals(*_):
    Path(os.environ["FUSION_EDU_TIMINGS"]).write_text(json.dumps(TOTALS))


get_ipython().events.register("post_run_cell", _write_totals)  # noqa: F821 (IPython's startup namespace)
