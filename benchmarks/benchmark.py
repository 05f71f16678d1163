"""The course's benchmark, one table: every model's parameters, FLOPs, training images/s and peak memory,
ViT and CrossViT against timm's, and (``--notebooks``) each notebook's wall time under nbval.

    python benchmarks/benchmark.py [--steps 20] [--repeats 3] [--batch-size 32] [--threads 2]
                                   [--notebooks [--cold]] [--device cpu|cuda]

- *Training images/s*: forward, the training loss, backward and an AdamW step on one batch of the model's
  own (generated) data, ``--steps`` times after a warm-up; the median of ``--repeats``.  Against timm: our
  ViT and CrossViT with timm's weights loaded, beside timm's models, same batch, interleaved (compare the
  ratio, within one run: timings on a shared machine are noisy).
- *FLOPs*: one sample's forward pass (``fusion_edu.flops``; a multiply-add is 2 FLOPs).
- *Peak memory*: each model is measured in a fresh process; on a CPU the process's peak resident memory
  minus its resident memory just before training (the training's own footprint: activations, gradients,
  optimiser state), on CUDA ``torch.cuda.max_memory_allocated`` during training.
- *Notebooks*: ``pytest --nbval-lax -n 0`` on each notebook in turn (alone, on every core), in a fresh
  process, with the data cache as it is (``--cold``: an empty temporary cache shared by the notebooks in
  order, as on a clean clone); and where each one's time goes: training, evaluation, data and plotting,
  timed inside its kernel by ``notebook_timer.py`` (an IPython startup file the benchmark installs), the
  rest as "other".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.crossvit import CrossVit as TimmCrossViT
from timm.models.vision_transformer import VisionTransformer as TimmViT

from fusion_edu.concat import InputFusion, LateFusion, TokenConcatFusion
from fusion_edu.crossvit import FUSIONS, CrossViT, load_timm_crossvit, single_branch
from fusion_edu.datasets import (
    generate_audiovisual_clips,
    generate_multiscale_images,
    generate_pointcloud_scenes,
    generate_referring_scenes,
    generate_rgbd_scenes,
)
from fusion_edu.flops import count_flops, count_parameters
from fusion_edu.lavt import LAVT, PretrainedTextEncoder, referring_inputs
from fusion_edu.mbt import MBT
from fusion_edu.recipes import (
    CROSSVIT,
    MBT_MODES,
    POINT_IMAGE,
    RGBD_BACKBONE,
    RGBD_CHANNELS,
    RGBD_VIT,
    TOKENFUSION,
)
from fusion_edu.tokenfusion import TokenFusion
from fusion_edu.tokenfusion_heterogeneous import PointImageTokenFusion, detection_targets
from fusion_edu.train import default_device, seeded, training_loss
from fusion_edu.vit import VisionTransformer

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 3
BYTES_PER_MB = 2**20
DATA_SEED = 123  # generated batches, not the course's splits
# The timm comparison: classification models of the course's widths (timm has no segmenter).
TIMM_IMG_SIZE, TIMM_CLASSES = 32, 5
TIMM_VIT = dict(img_size=TIMM_IMG_SIZE, patch_size=4, embed_dim=64, depth=4, num_heads=4,
                num_classes=TIMM_CLASSES)
TIMM_CROSSVIT = dict(patch_sizes=(4, 8), embed_dims=(48, 96), depth=((1, 2, 1),) * 3, num_heads=(3, 3),
                     mlp_ratios=(2.0, 2.0))


# --- the course's models at their recipes' sizes, each with a batch of its own data ---------------------

def _rgbd(batch_size: int) -> dict:
    return generate_rgbd_scenes(batch_size, DATA_SEED)


def _points(batch_size: int) -> dict:
    scenes = generate_pointcloud_scenes(batch_size, DATA_SEED)
    return detection_targets(scenes, POINT_IMAGE["num_seeds"], PointImageTokenFusion().patch_size,
                             POINT_IMAGE["group_size"])


def _multiscale(batch_size: int) -> dict:
    return generate_multiscale_images(batch_size, DATA_SEED)


def _vit(modality: str) -> VisionTransformer:
    return VisionTransformer(**RGBD_VIT, in_chans=RGBD_CHANNELS[modality], modality=modality)


MODELS: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[int], dict]]] = {
    "01 ViT, rgb only": (lambda: _vit("rgb"), _rgbd),
    "02 late fusion": (lambda: LateFusion({m: _vit(m) for m in RGBD_CHANNELS}), _rgbd),
    "02 token concatenation": (lambda: TokenConcatFusion(RGBD_CHANNELS, **RGBD_BACKBONE), _rgbd),
    "02 input fusion": (lambda: InputFusion(RGBD_CHANNELS, **RGBD_VIT), _rgbd),
    "03 TokenFusion": (lambda: TokenFusion(RGBD_CHANNELS, **RGBD_BACKBONE, **TOKENFUSION), _rgbd),
    "04 point-only": (lambda: PointImageTokenFusion(fusion="none", **POINT_IMAGE), _points),
    "04 TokenFusion, points + image": (lambda: PointImageTokenFusion(**POINT_IMAGE), _points),
    "05 S-branch alone": (lambda: single_branch(0, **CROSSVIT), _multiscale),
    "05 L-branch alone": (lambda: single_branch(1, **CROSSVIT), _multiscale),
    **{f"05 CrossViT, {kind.replace('_', ' ')}": (lambda kind=kind: CrossViT(**{**CROSSVIT, "fusion": kind}),
                                                  _multiscale)
       for kind in FUSIONS},
    **{f"06 MBT, {name} fusion": (lambda options=options: MBT(**options),
                                  lambda b: generate_audiovisual_clips(b, DATA_SEED))
       for name, options in MBT_MODES.items()},
}
LAVT_MODELS = {"07 LAVT": "pwam", "07 LAVT, late fusion": "late"}  # with the frozen MiniLM (loaded once)


def _model_and_batch(name: str, batch_size: int) -> tuple[torch.nn.Module, dict, torch.nn.Module | None]:
    """The model ``name`` (seeded), a training batch of its data, and its frozen part (LAVT's MiniLM)."""
    if name in LAVT_MODELS:
        text = PretrainedTextEncoder()
        with seeded(0):
            model = LAVT(text, fusion=LAVT_MODELS[name])
        return model, referring_inputs(generate_referring_scenes(batch_size, DATA_SEED), text), text
    build, data = MODELS[name]
    with seeded(0):
        model = build()
    return model, data(batch_size), None


def _resident_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / BYTES_PER_MB


def _timed_steps(step: Callable[[], None], steps: int, device: torch.device) -> float:
    for _ in range(WARMUP_STEPS):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _training_step(model: torch.nn.Module, loss_of: Callable[[], torch.Tensor]) -> Callable[[], None]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()

    def step() -> None:
        loss = loss_of()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure_model(name: str, arguments: argparse.Namespace) -> dict:
    """Parameters, MFLOPs of one sample, training images/s (median) and training memory of ``name``."""
    device = torch.device(arguments.device)
    model, batch, frozen = _model_and_batch(name, arguments.batch_size)
    params = count_parameters(model, trainable_only=False) - (
        count_parameters(frozen, trainable_only=False) if frozen is not None else 0)
    sample = {key: value[:1] for key, value in batch.items()}
    count_flops(model, sample)  # a frozen text encoder remembers the sentence, as in training: not counted
    mflops = count_flops(model, sample) / 1e6
    model.to(device)
    batch = {key: value.to(device) for key, value in batch.items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    resident_before = _resident_mb()
    step = _training_step(model, lambda: training_loss(model(batch), batch))
    rates = [arguments.steps * arguments.batch_size / _timed_steps(step, arguments.steps, device)
             for _ in range(arguments.repeats)]
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated() / BYTES_PER_MB
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - resident_before  # KiB on Linux
    return {"model": name, "params": params, "mflops": mflops, "images_per_second": statistics.median(rates),
            "memory_mb": memory}


# --- ours against timm's -------------------------------------------------------------------------------

def _timm_pairs() -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    timm_vit = TimmViT(**TIMM_VIT)
    ours_vit = VisionTransformer(**TIMM_VIT)
    ours_vit.load_state_dict(timm_vit.state_dict())
    cfg = TIMM_CROSSVIT
    timm_crossvit = TimmCrossViT(img_size=TIMM_IMG_SIZE, img_scale=(1.0, 1.0), patch_size=cfg["patch_sizes"],
                                 embed_dim=cfg["embed_dims"], num_heads=cfg["num_heads"],
                                 mlp_ratio=(*cfg["mlp_ratios"], 1.0), num_classes=TIMM_CLASSES,
                                 depth=tuple((small, large, 0) for small, large, _ in cfg["depth"]))
    ours_crossvit = CrossViT(img_size=TIMM_IMG_SIZE, num_classes=TIMM_CLASSES, reattach_patches=False, **cfg)
    load_timm_crossvit(ours_crossvit, timm_crossvit)
    return {"ViT (classifier, timm's config)": (ours_vit, timm_vit),
            "CrossViT (timm's config)": (ours_crossvit, timm_crossvit)}


def _logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    output = model(images)
    return output if isinstance(output, torch.Tensor) else output.logits


def measure_against_timm(arguments: argparse.Namespace) -> list[dict]:
    """Images/s of ours and timm's, same weights, same batch, repeats interleaved; params and MFLOPs."""
    device, rows = torch.device(arguments.device), []
    for name, pair in _timm_pairs().items():
        with seeded(0):
            images = torch.randn(arguments.batch_size, 3, TIMM_IMG_SIZE, TIMM_IMG_SIZE, device=device)
            labels = torch.randint(0, TIMM_CLASSES, (arguments.batch_size,), device=device)
        steps = {}
        for label, model in zip(("ours", "timm"), pair, strict=True):
            model.to(device)
            steps[label] = _training_step(
                model, lambda m=model, x=images, y=labels: F.cross_entropy(_logits(m, x), y))
        rates: dict[str, list[float]] = {"ours": [], "timm": []}
        for _ in range(arguments.repeats):
            for label, step in steps.items():
                seconds = _timed_steps(step, arguments.steps, device)
                rates[label].append(arguments.steps * arguments.batch_size / seconds)
        ours, timm_rate = (statistics.median(rates[label]) for label in ("ours", "timm"))
        rows.append({"model": name, "params": count_parameters(pair[0]),
                     "mflops": count_flops(pair[0].cpu(), images[:1].cpu()) / 1e6, "images_per_second": ours,
                     "timm_images_per_second": timm_rate})
    return rows


# --- notebooks under nbval -----------------------------------------------------------------------------

TIMINGS = ("training", "evaluation", "data", "plotting")  # what notebook_timer.py measures, in its order


def _timer_profile(folder: Path) -> dict[str, str]:
    """An IPython folder whose startup runs notebook_timer.py in every kernel, and where it writes."""
    startup = folder / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00_notebook_timer.py").write_text((REPO / "benchmarks" / "notebook_timer.py").read_text())
    return {"IPYTHONDIR": str(folder / "ipython"), "FUSION_EDU_TIMINGS": str(folder / "timings.json")}


def time_notebooks(cold: bool) -> list[dict]:
    """Per notebook: wall seconds of ``pytest --nbval-lax`` on it alone, pytest's exit code, and the seconds
    its kernel spent training, evaluating, on data and plotting (``notebook_timer.py``)."""
    scratch = tempfile.TemporaryDirectory(prefix="fusion_edu_benchmark_")
    environment = {**os.environ, **_timer_profile(Path(scratch.name))}
    if cold:
        environment["FUSION_EDU_DATA"] = str(Path(scratch.name) / "cache")
    rows = []
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        timings = Path(environment["FUSION_EDU_TIMINGS"])
        timings.unlink(missing_ok=True)
        start = time.perf_counter()
        command = [sys.executable, "-m", "pytest", "-q", "-n", "0", str(notebook.relative_to(REPO))]
        finished = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        parts = json.loads(timings.read_text()) if timings.exists() else dict.fromkeys(TIMINGS, math.nan)
        rows.append({"notebook": notebook.name, "seconds": seconds, "exit": finished.returncode, **parts})
        print(f"  {notebook.name}: {seconds:.0f} s (exit {finished.returncode})", file=sys.stderr)
    scratch.cleanup()
    return rows


def print_notebook_table(rows: list[dict], cold: bool) -> None:
    """Wall time per notebook and where it went (other: kernel start, imports, widgets, the rest)."""
    print(f"\n| notebook | nbval wall ({'empty' if cold else 'current'} cache) | "
          + " | ".join(TIMINGS) + " | other | result |")
    print("|---|---|" + "---|" * len(TIMINGS) + "---|---|")
    for row in [*rows, _total(rows)]:
        other = row["seconds"] - sum(row[part] for part in TIMINGS)
        result = "passed" if row["exit"] == 0 else f"failed ({row['exit']})"
        print(f"| {row['notebook']} | {row['seconds']:.0f} s | "
              + " | ".join(f"{row[part]:.0f} s" for part in TIMINGS) + f" | {other:.0f} s | {result} |")


def _total(rows: list[dict]) -> dict:
    exits = {row["exit"] for row in rows}
    return {"notebook": "**all**", "exit": max(exits, key=abs),
            **{key: sum(row[key] for row in rows) for key in ("seconds", *TIMINGS)}}


# --- the table ----------------------------------------------------------------------------------------

def _measure_in_fresh_process(name: str, arguments: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--one", name, "--device", arguments.device, "--steps",
               str(arguments.steps), "--repeats", str(arguments.repeats), "--batch-size",
               str(arguments.batch_size), "--threads", str(arguments.threads)]
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict], arguments: argparse.Namespace) -> None:
    memory = "peak MB (CUDA)" if arguments.device == "cuda" else "train MB (RSS)"
    print(f"| model | params | MFLOPs / sample | train img/s | timm img/s | ours / timm | {memory} |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        timm_rate = row.get("timm_images_per_second")
        timm_cells = f"{timm_rate:.0f} | {row['images_per_second'] / timm_rate:.2f}" if timm_rate else "– | –"
        memory_cell = f"{row['memory_mb']:.0f}" if "memory_mb" in row else "–"
        print(f"| {row['model']} | {row['params']:,} | {row['mflops']:.1f} | "
              f"{row['images_per_second']:.0f} | {timm_cells} | {memory_cell} |")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=default_device().type)
    parser.add_argument("--notebooks", action="store_true", help="also time each notebook under nbval")
    parser.add_argument("--cold", action="store_true", help="...with an empty data cache, as a clean clone")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # measure one model (in a fresh process)
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    torch.set_num_threads(arguments.threads)
    if arguments.one:
        print(json.dumps(measure_model(arguments.one, arguments)))
        return
    cpu = f"CPU, {arguments.threads} threads"
    device_name = torch.cuda.get_device_name() if arguments.device == "cuda" else cpu
    print(f"{device_name}; batch {arguments.batch_size}, median of {arguments.repeats} x {arguments.steps} "
          "steps\n")
    rows = measure_against_timm(arguments)
    rows += [_measure_in_fresh_process(name, arguments) for name in [*MODELS, *LAVT_MODELS]]
    print_table(rows, arguments)
    if arguments.notebooks:
        print_notebook_table(time_notebooks(arguments.cold), arguments.cold)

if __name__ == "__main__":
    main()
