"""Training and evaluation: one small loop every notebook shares.

Datasets are dicts of tensors held in memory (``{"rgb": (n 3 H W), "label": (n H W), ...}``);
a batch is the same dict sliced, so a model's forward receives its modalities by name and
``batch["label"]`` is the target.  The loop is the textbook one:

- AdamW, weight decay on weight matrices only (not on biases, norms, tokens or embeddings);
- learning rate: linear warm-up, then cosine decay to zero;
- gradient clipping by global norm;
- loss = cross-entropy(logits, label), plus the same on each modality's logits when a fusion
  model returns them, plus the model's ``aux_loss`` when it has one;
- mixed precision by what the GPU computes natively (``training_precision``): bfloat16 autocast from
  compute capability 8.0 (Ampere) on, float16 autocast with a gradient scaler below it (Colab's free T4
  is 7.5, where bfloat16 is emulated), full float32 on the CPU;
- every random draw (initialisation, shuffling, dropout) from ``seed``: same seed, same numbers on
  one machine at one thread count (``use_threads``).
"""

from __future__ import annotations

import contextvars
import hashlib
import math
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .datasets.cache import cache_dir, made_once, read_if_valid, write_atomic
from .metrics import accuracy, confusion_matrix, iou_per_class, mean_iou

__all__ = [
    "TrainConfig",
    "batches",
    "default_device",
    "evaluate",
    "fit",
    "fit_or_load",
    "learning_rate_factor",
    "load_checkpoint",
    "machine_cores",
    "model_outputs",
    "models_and_histories",
    "predict",
    "save_checkpoint",
    "schedule_steps",
    "seeded",
    "total_learning_rate",
    "train_side_by_side",
    "training_loss",
    "training_precision",
    "use_threads",
]

LABEL_KEY = "label"
EVAL_BATCH_SIZE = 256
THREADS_VARIABLE = "FUSION_EDU_THREADS"  # CPU threads for the notebooks, run-all and the seed sweeps
NATIVE_BF16_CAPABILITY = (8, 0)  # CUDA compute capability from which bfloat16 runs natively (Ampere)
# train_side_by_side runs up to this many worker processes per CPU thread at once: three models on two threads
# train together (about 1.5 models' time), not two and then the third alone on one thread (2 models' time)
WORKERS_PER_THREAD = 2


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1  # share of all steps spent warming up
    grad_clip: float = 1.0  # max global gradient norm
    seed: int = 0
    # (name prefix, factor) pairs: parameters whose name (model.named_parameters()) starts with the prefix
    # train at lr × factor; the first matching prefix counts
    lr_factors: tuple[tuple[str, float], ...] = ()


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def machine_cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def use_threads(threads: int | None = None) -> int:
    """Set torch's CPU thread count and return it: ``threads``, else ``$FUSION_EDU_THREADS``, else the
    machine's cores.

    CPU results depend on the thread count (floating-point sums are split differently), so the same
    seed gives the same numbers only on one machine at one count.  The committed notebook outputs are
    made at 1 thread (``notebooks/execute.py``) and the tests run at the default: every test run is a
    run on "another machine", and only what holds on any machine is checked.
    """
    if threads is None:
        setting = os.environ.get(THREADS_VARIABLE, "").strip()
        if setting and not setting.isdigit():
            raise ValueError(f"expected ${THREADS_VARIABLE} to be a positive whole number of threads, "
                             f"got {setting!r}")
        threads = int(setting) if setting else machine_cores()
    if threads < 1:
        raise ValueError(f"expected at least 1 CPU thread, got {threads}")
    torch.set_num_threads(threads)
    return threads


def training_precision(device: torch.device) -> torch.dtype:
    """The dtype autocast computes in on ``device``: bfloat16 on a GPU of compute capability >= 8.0,
    float16 below it (bfloat16 would be emulated there; ``fit`` then scales the loss so small
    gradients do not underflow), float32 (no autocast) on the CPU."""
    if device.type != "cuda":
        return torch.float32
    if torch.cuda.get_device_capability(device) >= NATIVE_BF16_CAPABILITY:
        return torch.bfloat16
    return torch.float16


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global RNG seeded, restoring the caller's RNG state afterwards.

    ``with seeded(0): model = VisionTransformer(...)`` gives the same initial weights every time
    without leaving global state behind.
    """
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def batches(data: Mapping[str, Tensor], batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterator[dict[str, Tensor]]:
    """Slice a dict of equally long tensors into batches (the last one may be smaller)."""
    lengths = {key: len(value) for key, value in data.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"all tensors in a dataset must have the same length, got {lengths}")
    count = next(iter(lengths.values()))
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    for start in range(0, count, batch_size):
        index = order[start:start + batch_size]
        yield {key: value[index] for key, value in data.items()}


def schedule_steps(config: TrainConfig, num_samples: int) -> tuple[int, int]:
    """``fit``'s optimiser steps on ``num_samples`` training samples, and how many of them warm up."""
    total_steps = math.ceil(num_samples / config.batch_size) * config.epochs
    return total_steps, max(1, round(config.warmup_fraction * total_steps))


def total_learning_rate(config: TrainConfig, num_samples: int) -> float:
    """Σ_t lr_t over ``fit``'s schedule: AdamW moves a weight by at most about lr_t a step, so this is how far
    a weight whose gradient keeps one sign can travel in the whole run."""
    total_steps, warmup_steps = schedule_steps(config, num_samples)
    factors = (learning_rate_factor(step, total_steps, warmup_steps) for step in range(total_steps))
    return config.lr * sum(factors)


def learning_rate_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW's groups: weight decay on weight matrices only; lr × factor under ``lr_factors``' prefixes."""
    names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    unmatched = [prefix for prefix, _ in config.lr_factors if not any(n.startswith(prefix) for n in names)]
    if unmatched:
        raise ValueError(f"lr_factors: no trainable parameter's name starts with {unmatched} (names come "
                         f"from model.named_parameters(), e.g. {names[0]!r})")
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_matrix = parameter.ndim >= 2 and name.endswith("weight")
        factor = next((factor for prefix, factor in config.lr_factors if name.startswith(prefix)), 1.0)
        groups.setdefault((factor, config.weight_decay if is_matrix else 0.0), []).append(parameter)
    return [{"params": parameters, "weight_decay": decay, "lr": config.lr * factor}
            for (factor, decay), parameters in groups.items()]


def _autocast(device: torch.device):
    dtype = training_precision(device)
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _to(batch: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _cross_entropy(logits: Tensor, target: Tensor, class_weights: tuple[float, ...] | None) -> Tensor:
    """Cross-entropy of ``logits (b k ...)`` against ``target (b ...)``, shapes checked first."""
    if logits.shape[:1] + logits.shape[2:] != target.shape:
        raise ValueError(f"expected targets of shape {(logits.shape[0], *logits.shape[2:])} for logits "
                         f"{tuple(logits.shape)} (batch, classes, ...), got {tuple(target.shape)}")
    weight = None if class_weights is None else torch.tensor(class_weights, device=logits.device)
    return F.cross_entropy(logits.float(), target, weight=weight)


def training_loss(output: Any, batch: Mapping[str, Tensor]) -> Tensor:
    """Task loss on the prediction (and on each modality's, if any; or, with ``mean_modality_loss``,
    the mean over the modalities' only), class-weighted when the output says so, plus the model's aux
    loss."""
    target, weights = batch[LABEL_KEY], output.class_weights
    modality_logits = (output.modality_logits or {}).values()
    per_modality = [_cross_entropy(logits, target, weights) for logits in modality_logits]
    if output.mean_modality_loss:
        loss = torch.stack(per_modality).mean()
    else:
        loss = _cross_entropy(output.logits, target, weights) + sum(per_modality)
    if output.aux_loss is not None:
        loss = loss + output.aux_loss
    return loss


def fit(model: nn.Module, train_data: Mapping[str, Tensor],
        val_data: Mapping[str, Tensor] | None = None, config: TrainConfig = TrainConfig(),
        device: torch.device | None = None, progress: bool = True) -> list[dict[str, float]]:
    """Train ``model`` in place; return the history, one dict per epoch.

    Each record holds ``epoch``, ``train_loss`` (mean over the epoch), ``lr`` (at its end),
    ``seconds``, ``images_per_second`` and, with ``val_data``, ``val_loss``, ``val_accuracy``
    and ``val_miou``.
    """
    if LABEL_KEY not in train_data:
        raise KeyError(f"expected the training data to hold its targets under {LABEL_KEY!r}, "
                       f"got keys {sorted(train_data)}")
    device = device or default_device()
    model.to(device)
    optimizer = torch.optim.AdamW(_parameter_groups(model, config), lr=config.lr)
    # float16 autocast needs the loss scaled (and unscaled before clipping); elsewhere a pass-through
    scaler = torch.amp.GradScaler(device.type, enabled=training_precision(device) == torch.float16)
    count = len(train_data[LABEL_KEY])
    total_steps, warmup_steps = schedule_steps(config, count)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, total_steps, warmup_steps))
    shuffler = torch.Generator().manual_seed(config.seed)
    history = []
    with seeded(config.seed):
        for epoch in tqdm(range(1, config.epochs + 1), desc="epochs", disable=not progress):
            model.train()
            start, losses = time.perf_counter(), []
            for batch in batches(train_data, config.batch_size, shuffle=True, generator=shuffler):
                batch = _to(batch, device)
                with _autocast(device):
                    loss = training_loss(model(batch), batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                losses.append(loss.detach())
            seconds = time.perf_counter() - start
            record = {"epoch": epoch, "train_loss": torch.stack(losses).mean().item(),
                      "lr": config.lr * schedule.lr_lambdas[0](schedule.last_epoch), "seconds": seconds,
                      "images_per_second": count / seconds}
            if val_data is not None:
                scores = evaluate(model, val_data, device=device)
                record.update({f"val_{key}": scores[key] for key in ("loss", "accuracy", "miou")})
            history.append(record)
    return history


def model_outputs(model: nn.Module, data: Mapping[str, Tensor], device: torch.device | None = None
                  ) -> Iterator[tuple[dict[str, Tensor], Any]]:
    """``(batch, output)`` pairs of ``model`` (in eval mode, no gradient) over ``data``."""
    device = device or next(model.parameters()).device
    model.to(device).eval()
    with torch.inference_mode():
        for batch in batches(data, EVAL_BATCH_SIZE):
            batch = _to(batch, device)
            with _autocast(device):
                yield batch, model(batch)


def predict(model: nn.Module, data: Mapping[str, Tensor], device: torch.device | None = None
            ) -> Tensor:
    """Class predictions (argmax of the logits) for the whole dataset, on the CPU."""
    return torch.cat([output.logits.argmax(1).cpu() for _, output in model_outputs(model, data, device)])


def evaluate(model: nn.Module, data: Mapping[str, Tensor], device: torch.device | None = None
             ) -> dict[str, Any]:
    """Mean loss, accuracy, mIoU and per-class IoU (a list) of ``model`` on ``data``."""
    confusion, loss_sum, count = None, 0.0, 0
    for batch, output in model_outputs(model, data, device):
        num_classes = output.logits.shape[1]
        batch_confusion = confusion_matrix(output.logits.argmax(1), batch[LABEL_KEY], num_classes)
        confusion = batch_confusion if confusion is None else confusion + batch_confusion
        loss_sum += training_loss(output, batch).item() * len(batch[LABEL_KEY])
        count += len(batch[LABEL_KEY])
    confusion = confusion.cpu()
    return {"loss": loss_sum / count, "accuracy": accuracy(confusion), "miou": mean_iou(confusion),
            "iou": iou_per_class(confusion).tolist()}


def save_checkpoint(path: str | Path, model: nn.Module, history: list[dict] | None = None,
                    description: dict | None = None) -> None:
    """Write the model's weights and history atomically, with a checksum (see datasets.cache)."""
    payload = {"model": model.state_dict(), "history": history or []}
    write_atomic(Path(path), payload, description or {})


def load_checkpoint(path: str | Path, model: nn.Module, description: dict | None = None
                    ) -> list[dict] | None:
    """Load weights saved by ``save_checkpoint`` into ``model``; return the history, or None
    when the file is missing, corrupt, or was saved for another description."""
    payload = read_if_valid(Path(path), description or {})
    if payload is None:
        return None
    model.load_state_dict(payload["model"])
    return payload["history"]


def _fingerprint(model: nn.Module, data: Mapping[str, Tensor]) -> str:
    """Architecture (its repr), starting weights and training data, hashed."""
    digest = hashlib.sha256(repr(model).encode())
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().contiguous().cpu().numpy().tobytes())
    for key in sorted(data):
        digest.update(key.encode())
        digest.update(data[key].contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def fit_or_load(name: str, model: nn.Module, train_data: Mapping[str, Tensor],
                val_data: Mapping[str, Tensor] | None = None,
                config: TrainConfig = TrainConfig(), device: torch.device | None = None,
                progress: bool = True) -> list[dict[str, float]]:
    """``fit``, unless weights trained the same way are cached under data/models/ (then load).

    The cache key covers the architecture, the starting weights, the training data and the
    config, so a changed notebook retrains.  A second run in class is instant; a clean clone always trains.
    While one process trains a model, another asking for the same one waits, then loads it (``made_once``).
    """
    path = cache_dir() / "models" / f"{name}.pt"
    device = device or default_device()
    description = {"config": asdict(config), "fingerprint": _fingerprint(model, train_data),
                   "device": device.type}
    with made_once(path):
        history = load_checkpoint(path, model, description)
        if history is None:
            if _LOADING_ONLY.get():
                raise _NotCachedError(name)
            history = fit(model, train_data, val_data, config, device, progress)
            save_checkpoint(path, model, history, description)
    return history


class _NotCachedError(Exception):
    """Raised by ``fit_or_load`` inside ``_loading_only``: the model is not in the cache."""


_LOADING_ONLY = contextvars.ContextVar("loading_only", default=False)


@contextmanager
def _loading_only() -> Iterator[None]:
    """A block in which ``fit_or_load`` loads, and raises ``_NotCachedError`` where it would train."""
    token = _LOADING_ONLY.set(True)
    try:
        yield
    finally:
        _LOADING_ONLY.reset(token)


def _made_in_a_worker(pickled_call: bytes) -> None:
    """A worker process's job: make the call (its model lands in the cache); nothing is sent back."""
    pickle.loads(pickled_call)()


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop the pool's workers now (an interrupt, another worker's error), not once their models are done."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):  # the executor's record of them
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def _train_in_workers(calls: list[Callable[[], Any]], workers: int, threads_each: int) -> None:
    """Make ``calls`` in ``workers`` spawned processes of ``threads_each`` threads, at most ``workers`` at a
    time.  Each call is pickled here, as bytes, when its turn comes: the pool's own pickler would put every
    tensor in memory shared with this process (a model a worker trains would change here too), and pickling
    all of them at once would hold every copy of the data at once."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=torch.set_num_threads, initargs=(threads_each,))
    waiting, running = list(calls), set()
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                running.add(pool.submit(_made_in_a_worker, pickle.dumps(waiting.pop(0))))
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for job in done:
                job.result()  # a worker's exception is raised here (BrokenProcessPool if one died)
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()


def train_side_by_side(calls: Mapping[str, Callable[[], Any]]) -> dict[str, Any]:
    """Each of ``calls`` (name -> a call that trains through ``fit_or_load``, such as
    ``partial(train_lavt, ...)``) made, its result returned under its name.

    A small model keeps two CPU threads only partly busy: two 1-thread processes train 1.35-1.5x the images
    per second of one process at 2 threads (BENCHMARKS.md).  So on a CPU, where this process has more than
    one thread (``use_threads``) and there is more than one call, each model not in the cache yet trains in a
    worker process, up to ``WORKERS_PER_THREAD`` of them per thread at once, each on an equal share of the
    threads (at least one); the calls are then made here, and each loads its model.  The share depends on the
    calls alone, not on which models were cached before, so a model trains at the same thread count (the
    same numbers, on one machine) whatever ran before it.  With one thread (the committed notebooks, each
    test worker), on a GPU, or for one call, the calls are made here in turn.

    Worker processes are started fresh ("spawn", on every platform), so each call must be picklable: a
    function of the package with its arguments (``functools.partial``), not a lambda or a function defined
    in a notebook; and a script that calls it guards its top level with ``if __name__ == "__main__":``, as for
    any spawned process.
    """
    if min(len(calls), torch.get_num_threads()) < 2 or default_device().type != "cpu":
        return {name: call() for name, call in calls.items()}
    workers = min(len(calls), WORKERS_PER_THREAD * torch.get_num_threads())
    results, to_train = {}, {}
    with _loading_only():  # what is cached loads here, with no worker started for it
        for name, call in calls.items():
            try:
                results[name] = call()
            except _NotCachedError:
                to_train[name] = call
        if to_train:
            _train_in_workers(list(to_train.values()), min(workers, len(to_train)),
                              max(1, torch.get_num_threads() // workers))
        results |= {name: call() for name, call in to_train.items()}  # loads what its worker cached
    return {name: results[name] for name in calls}


def models_and_histories(trained: Mapping[str, tuple[nn.Module, list[dict]]]
                         ) -> tuple[dict[str, nn.Module], dict[str, list[dict]]]:
    """``{name: (model, history)}``, as ``train_side_by_side`` returns a recipe's trainings, as two dicts."""
    return ({name: model for name, (model, _) in trained.items()},
            {name: history for name, (_, history) in trained.items()})
