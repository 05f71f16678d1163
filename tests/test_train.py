import itertools
import multiprocessing
import os
import re
from concurrent.futures.process import BrokenProcessPool
from functools import partial

import pytest
import torch

from fusion_edu import train as train_module
from fusion_edu.blocks import Attention
from fusion_edu.flops import count_flops, count_parameters
from fusion_edu.recipes import (
    crossvit_training,
    lavt_training,
    mbt_training,
    point_image_training,
    rgbd_training,
    tokenfusion_training,
)
from fusion_edu.train import (
    TrainConfig,
    batches,
    evaluate,
    fit,
    fit_or_load,
    learning_rate_factor,
    load_checkpoint,
    predict,
    save_checkpoint,
    seeded,
    total_learning_rate,
    train_side_by_side,
    training_precision,
    use_threads,
)
from fusion_edu.vit import VisionTransformer

TINY = dict(img_size=32, patch_size=8, in_chans=1, num_classes=5, embed_dim=32, depth=1,
            num_heads=2, task="segmentation", modality="depth")
FAST = TrainConfig(epochs=2, batch_size=50, lr=3e-3)


def _model(seed=0):
    with seeded(seed):
        return VisionTransformer(**TINY)


def test_learning_rate_warmup_then_cosine():
    factors = [learning_rate_factor(step, total_steps=10, warmup_steps=2) for step in range(11)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2] == pytest.approx(1.0)
    assert factors[6] == pytest.approx(0.5)  # half way through the cosine
    assert factors[10] == pytest.approx(0.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[1:]))


def test_total_learning_rate_sums_the_schedule_of_fit():
    config = TrainConfig(epochs=2, batch_size=50, lr=0.1, warmup_fraction=0.25)  # 100 samples: 4 steps
    # one warm-up step (factor 1), then the cosine from 1 at step 1: 1, 0.75, 0.25
    assert total_learning_rate(config, 100) == pytest.approx(0.1 * (1 + 1 + 0.75 + 0.25))


def test_batches_cover_the_data_once_and_check_lengths():
    data = {"x": torch.arange(10), "label": torch.arange(10)}
    seen = torch.cat([b["x"] for b in batches(data, 4, shuffle=True,
                                                generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    assert [len(b["x"]) for b in batches(data, 4)] == [4, 4, 2]
    with pytest.raises(ValueError, match=re.escape("same length, got {'x': 10, 'label': 3}")):
        next(batches({"x": torch.arange(10), "label": torch.arange(3)}, 4))


def test_seeded_restores_the_callers_rng():
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    with seeded(0):
        torch.rand(3)
    assert torch.equal(torch.rand(1), expected)


def test_fit_learns_and_is_deterministic(small_scenes):
    train = {k: small_scenes[k][:150] for k in ("depth", "label")}
    val = {k: small_scenes[k][150:] for k in ("depth", "label")}
    before = evaluate(_model(), val)["loss"]
    history = fit(_model(), train, val, FAST, progress=False)
    again = fit(_model(), train, val, FAST, progress=False)
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in again]
    assert history[-1]["val_loss"] < before
    assert set(history[0]) >= {"epoch", "train_loss", "lr", "val_loss", "val_accuracy", "val_miou"}
    assert history[-1]["lr"] == pytest.approx(0.0)


def test_lr_factors_scale_the_learning_rate_of_the_named_parameters_only(small_scenes):
    train = {k: small_scenes[k][:60] for k in ("depth", "label")}
    start = _model()
    frozen_head = TrainConfig(epochs=2, batch_size=30, lr_factors=(("head.", 0.0),))
    model = _model()
    history = fit(model, train, config=frozen_head, progress=False)
    after_one_epoch = learning_rate_factor(2, total_steps=4, warmup_steps=1)  # 2 batches an epoch
    assert history[0]["lr"] == pytest.approx(frozen_head.lr * after_one_epoch)  # the config's, not the head's
    moved = {name: not torch.equal(parameter, start.state_dict()[name])
             for name, parameter in model.state_dict().items()}
    assert not any(moved[name] for name in moved if name.startswith("head.")), moved
    assert moved["patch_embed.proj.weight"] and moved["blocks.0.attn.qkv.weight"], moved
    with pytest.raises(ValueError, match=r"no trainable parameter's name starts with \['heads\.'\]"):
        fit(_model(), train, config=TrainConfig(lr_factors=(("heads.", 2.0),)), progress=False)


def test_fit_names_missing_targets(small_scenes):
    with pytest.raises(KeyError, match=r"targets under 'label', got keys \['depth'\]"):
        fit(_model(), {"depth": small_scenes["depth"][:4]}, config=FAST, progress=False)


def test_checkpoint_round_trip(tmp_path, small_scenes):
    data = {k: small_scenes[k][:20] for k in ("depth", "label")}
    model = _model(seed=1)
    save_checkpoint(tmp_path / "m.pt", model, history=[{"epoch": 1}], description={"a": 1})
    restored = _model(seed=2)
    assert not torch.equal(restored.head.proj.weight, model.head.proj.weight)
    assert load_checkpoint(tmp_path / "m.pt", restored, {"a": 1}) == [{"epoch": 1}]
    for (name, theirs), ours in zip(model.state_dict().items(), restored.state_dict().values(),
                                    strict=True):
        assert torch.equal(theirs, ours), name
    with pytest.warns(UserWarning, match="is stale: expected {'a': 2}, found {'a': 1}"):
        assert load_checkpoint(tmp_path / "m.pt", _model(), {"a": 2}) is None
    assert torch.equal(predict(restored, data), predict(model, data))


def test_fit_or_load_trains_once(tmp_cache, small_scenes):
    train = {k: small_scenes[k][:60] for k in ("depth", "label")}
    config = TrainConfig(epochs=1, batch_size=30)
    first_model = _model()
    first = fit_or_load("tiny", first_model, train, config=config, progress=False)
    assert (tmp_cache / "models" / "tiny.pt").exists()
    second_model = _model()  # same start: loaded (the history's timings equal only if loaded)
    second = fit_or_load("tiny", second_model, train, config=config, progress=False)
    assert second == first
    torch.testing.assert_close(second_model.state_dict(), first_model.state_dict())
    other_start = _model(seed=9)  # the starting weights are part of the key: trained anew
    with pytest.warns(UserWarning, match="tiny.pt is stale"):
        third = fit_or_load("tiny", other_start, train, config=config, progress=False)
    assert third != first
    assert not torch.equal(other_start.head.proj.weight, first_model.head.proj.weight)


def _fit_or_load_when_released(cache: str, start, results) -> None:
    """A spawned process's ``fit_or_load`` of one tiny model, begun when every process is ready."""
    os.environ["FUSION_EDU_DATA"] = cache
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    train = {"depth": torch.rand(400, 1, 32, 32, generator=generator),
             "label": torch.randint(0, 5, (400, 32, 32), generator=generator)}
    model = _model()
    start.wait()
    results.put(fit_or_load("contested", model, train, config=TrainConfig(epochs=3, batch_size=20),
                            progress=False))


def test_two_processes_asking_for_one_model_train_it_once(tmp_path):
    """Notebook 08 beside the worker still in notebook 05: the second process waits, then loads (its
    history, timings included, is the first one's), instead of training the same model again."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2, timeout=120), context.Queue()
    processes = [context.Process(target=_fit_or_load_when_released, args=(str(tmp_path), start, results),
                                 daemon=True) for _ in range(2)]
    try:
        for process in processes:
            process.start()
        histories = [results.get(timeout=180) for _ in processes]
        for process in processes:
            process.join(timeout=60)
        assert [process.exitcode for process in processes] == [0, 0]
    finally:
        for process in processes:
            process.terminate()
    assert len(histories[0]) == 3 and histories[0] == histories[1]


TINY_RECIPE = {seed: TrainConfig(epochs=2, batch_size=20, seed=seed) for seed in (0, 1)}


def _tiny_data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"depth": torch.rand(200, 1, 32, 32, generator=generator),
            "label": torch.randint(0, 5, (200, 32, 32), generator=generator)}


def _train_tiny(name: str, seed: int, train: dict) -> tuple[VisionTransformer, list[dict]]:
    """What a notebook hands ``train_side_by_side``: a package-level call that trains through the cache."""
    model = _model(seed)
    return model, fit_or_load(name, model, train, config=TINY_RECIPE[seed], progress=False)


def _calls(train: dict, given: VisionTransformer) -> dict:
    """Two kinds of call: one that builds its model (seed 0), and ``fit_or_load`` of ``given`` (seed 1)."""
    return {"seed 0": partial(_train_tiny, "side_0", 0, train),
            "seed 1": partial(fit_or_load, "side_1", given, train, None, TINY_RECIPE[1], progress=False)}


def test_models_trained_side_by_side_load_here_and_match_one_thread(tmp_cache):
    """At 2 threads, two calls train in two 1-thread worker processes; made here afterwards, each loads its
    model (``fit`` is never called in this process) with the weights a 1-thread process trains.  A model
    handed to a call is trained in the worker on a copy, then loaded here: never changed from there."""
    train, given = _tiny_data(), _model(1)

    def not_here(*args, **kwargs):
        raise AssertionError("trained in this process: the workers' models were not loaded")

    with pytest.MonkeyPatch.context() as patch:  # undone before the reference training (tmp_cache stays)
        patch.setattr(torch, "get_num_threads", lambda: 2)  # this process's share: two workers of 1 thread
        patch.setattr(train_module, "fit", not_here)
        results = train_side_by_side(_calls(train, given))
    assert list(results) == ["seed 0", "seed 1"]
    models = {0: results["seed 0"][0], 1: given}
    histories = {0: results["seed 0"][1], 1: results["seed 1"]}
    for seed in (0, 1):
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            here = _model(seed)
            history = fit(here, train, config=TINY_RECIPE[seed], progress=False)
        finally:
            torch.set_num_threads(previous)
        assert [r["train_loss"] for r in histories[seed]] == [r["train_loss"] for r in history]
        torch.testing.assert_close(models[seed].state_dict(), here.state_dict(), rtol=0, atol=0)


def test_at_one_thread_the_calls_are_made_here_in_turn(tmp_cache, monkeypatch):
    def no_workers(*args, **kwargs):
        raise AssertionError("a worker process was started at one thread")

    monkeypatch.setattr(train_module.multiprocessing, "get_context", no_workers)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    results = train_side_by_side(_calls(_tiny_data(), _model(1)))
    assert len(results["seed 0"][1]) == len(results["seed 1"]) == 2
    assert (tmp_cache / "models" / "side_0.pt").exists() and (tmp_cache / "models" / "side_1.pt").exists()


def test_what_is_cached_loads_here_and_what_is_not_trains_in_a_worker(tmp_cache, monkeypatch):
    """A second run: cached models load here, and no worker process starts.  A single model left to train
    still trains in a worker, at the share of the threads the whole set of calls gets (its numbers do not
    depend on what was cached before)."""
    train = _tiny_data()
    _train_tiny("side_0", 0, train)  # cached before
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)

    def not_here(*args, **kwargs):
        raise AssertionError("trained in this process")

    monkeypatch.setattr(train_module, "fit", not_here)
    first = train_side_by_side(_calls(train, _model(1)))  # seed 0 loads here, seed 1 trains in a worker

    def no_workers(*args, **kwargs):
        raise AssertionError("a worker process was started")

    monkeypatch.setattr(train_module.multiprocessing, "get_context", no_workers)
    second = train_side_by_side(_calls(train, _model(1)))  # both load
    assert first["seed 1"] == second["seed 1"] and first["seed 0"][1] == second["seed 0"][1]


def _dies_in_a_worker() -> None:
    """Not cached (in the loading pass here); in a worker, the process dies as if killed."""
    if train_module._LOADING_ONLY.get():
        raise train_module._NotCachedError("dies")
    os._exit(3)


def test_a_worker_s_error_is_raised_here_and_a_dead_worker_does_not_hang(tmp_cache, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    unlabelled = {"depth": _tiny_data()["depth"]}  # fit refuses it in the worker; the loading pass never fits
    calls = {f"model {seed}": partial(fit_or_load, f"unlabelled_{seed}", _model(seed), unlabelled,
                                      config=TINY_RECIPE[seed], progress=False) for seed in (0, 1)}
    with pytest.raises(KeyError, match="targets"):
        train_side_by_side(calls)
    with pytest.raises(BrokenProcessPool):
        train_side_by_side({"a": _dies_in_a_worker, "b": _dies_in_a_worker})


def test_flop_and_parameter_counts():
    layer = torch.nn.Linear(10, 20)
    assert count_flops(layer, torch.zeros(3, 10)) == 2 * 3 * 10 * 20
    assert count_parameters(layer) == 10 * 20 + 20
    layer.bias.requires_grad_(False)
    assert count_parameters(layer) == 200 and count_parameters(layer, trainable_only=False) == 220


def test_attention_flops_are_counted_on_the_cpu_kernel_too():
    """F.scaled_dot_product_attention on a CPU: q k^T and A v, 2 b h n n e each, are counted."""
    attention, tokens = Attention(dim=12, num_heads=3), torch.zeros(2, 5, 12)
    projections = 2 * 2 * 5 * 12 * (3 * 12 + 12)  # qkv and the output projection
    products = 2 * (2 * 2 * 3 * 5 * 5 * 4)  # q k^T and A v
    assert count_flops(attention, tokens) == projections + products


CUDA = torch.device("cuda")


@pytest.mark.parametrize(("capability", "dtype"), [
    ((7, 5), torch.float16),  # Colab's free T4: bfloat16 would be emulated
    ((7, 0), torch.float16),  # V100
    ((8, 0), torch.bfloat16),  # A100
    ((8, 6), torch.bfloat16),
    ((9, 0), torch.bfloat16),  # H100
])
def test_precision_follows_what_the_gpu_computes_natively(monkeypatch, capability, dtype):
    asked = []

    def fake_capability(device=None):
        asked.append(device)
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", fake_capability)
    assert training_precision(CUDA) == dtype
    assert asked == [CUDA]


def test_the_cpu_trains_in_float32_without_asking_for_a_gpu(monkeypatch):
    def no_gpu(device=None):
        raise AssertionError("the CPU path must not query a GPU")

    monkeypatch.setattr(torch.cuda, "get_device_capability", no_gpu)
    assert training_precision(torch.device("cpu")) == torch.float32


def test_threads_from_the_argument_the_variable_or_the_cores(monkeypatch):
    monkeypatch.delenv("FUSION_EDU_THREADS", raising=False)
    assert use_threads(1) == 1 == torch.get_num_threads()
    monkeypatch.setenv("FUSION_EDU_THREADS", "1")
    assert use_threads() == 1 == torch.get_num_threads()
    assert use_threads(2) == 2 == torch.get_num_threads()  # the argument wins over the variable
    monkeypatch.delenv("FUSION_EDU_THREADS")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert use_threads() == cores == torch.get_num_threads()


@pytest.mark.parametrize("setting", ["two", "-1", "1.5", "0"])
def test_a_bad_thread_setting_names_what_was_expected(monkeypatch, setting):
    monkeypatch.setenv("FUSION_EDU_THREADS", setting)
    with pytest.raises(ValueError, match=r"(FUSION_EDU_THREADS to be a positive whole number|at least 1 CPU "
                                         r"thread).*" + re.escape(setting)):
        use_threads()


RECIPES = (rgbd_training, tokenfusion_training, crossvit_training, mbt_training, point_image_training,
           lavt_training)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_is_one_recipe_on_every_device_and_longer_only_adds_epochs(recipe):
    default, longer = recipe(seed=3), recipe(seed=3, longer=True)
    assert default.seed == longer.seed == 3
    assert 2 * default.epochs <= longer.epochs <= 4 * default.epochs, (default, longer)
    assert {**default.__dict__, "epochs": None} == {**longer.__dict__, "epochs": None}


def test_fit_scales_the_loss_when_autocast_computes_in_float16(monkeypatch, small_scenes):
    """The float16 path (a GPU below compute capability 8.0), run on the CPU: autocast in float16, the loss
    scaled by a GradScaler and unscaled before clipping; it must still learn."""
    monkeypatch.setattr(train_module, "training_precision", lambda device: torch.float16)
    scaled = []
    original_scale = torch.amp.GradScaler.scale

    def recording_scale(self, outputs):
        scaled.append(self.is_enabled())
        return original_scale(self, outputs)

    monkeypatch.setattr(torch.amp.GradScaler, "scale", recording_scale)
    data = {key: small_scenes[key] for key in ("depth", "label")}
    model = _model()
    history = fit(model, data, config=FAST, device=torch.device("cpu"), progress=False)
    assert scaled and all(scaled)  # every step went through an enabled scaler
    assert history[-1]["train_loss"] < history[0]["train_loss"], history
    assert all(torch.isfinite(p).all() for p in model.parameters())
