"""The generic trainer on the toy trainable adapter and the synthetic demo data (CPU, fast)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PLUGINS
from launch import finish, start_by_hand, torchrun
from safetensors.torch import load_file
from tests_helpers import source_miou

from ovrsisbench.checkpoints import latest_checkpoint
from ovrsisbench.errors import UserError
from ovrsisbench.protocol import load_protocol
from ovrsisbench.registry import create_adapter
from ovrsisbench.train import TrainSettings, lr_factor, seed_everything, train
from ovrsisbench.train_data import BatchPlan

MODEL = "toy_adapters:ToyTrainable"


@pytest.fixture
def demo():
    return load_protocol("demo")


@pytest.fixture
def make_toy(toy_adapters):
    """A factory of loaded toy adapters (CPU), initialised from ``seed``."""

    def make(seed: int = 0, **options):
        adapter = create_adapter(MODEL, **options)
        seed_everything(seed)
        adapter.load(None, "cpu")
        return adapter

    return make


def fast(**overrides) -> TrainSettings:
    values = {"workers": 0, "log_every": 1, "batch_size": 4, "max_iters": 4, **overrides}
    return TrainSettings(**values)


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def parameters(adapter) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in adapter.network.state_dict().items()}


# -- learning -------------------------------------------------------------------------------------
def test_training_lowers_the_loss_and_raises_miou(make_toy, demo, synthetic_root, tmp_path):
    adapter = make_toy()
    before = source_miou(adapter, synthetic_root, tmp_path / "before")
    result = train(
        adapter, demo, synthetic_root, tmp_path / "out", fast(max_iters=40, batch_size=8)
    )
    after = source_miou(adapter, synthetic_root, tmp_path / "after")
    losses = [line["loss"] for line in log_lines(tmp_path / "out")]
    assert len(losses) == 40 and result.iterations == 40
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.6 * first, f"loss over the first 5 iterations {first:.3f}, last 5 {last:.3f}"
    # mIoU in percent; seeds 0-2 give about 3-11 untrained and 94-96 trained
    assert after > 70 and after > before + 40, f"mIoU untrained {before:.1f}, trained {after:.1f}"
    assert result.loss == losses[-1]
    assert result.checkpoint == tmp_path / "out" / "final.safetensors"


def test_logged_fields_and_rich_progress(make_toy, demo, synthetic_root, tmp_path):
    from rich.console import Console

    from ovrsisbench.display import make_progress

    console = Console(file=open(tmp_path / "progress.txt", "w"), force_terminal=False, width=200)
    with make_progress(console) as progress:
        train(
            make_toy(), demo, synthetic_root, tmp_path / "out", fast(log_every=2), progress=progress
        )
    lines = log_lines(tmp_path / "out")
    assert [line["iteration"] for line in lines] == [2, 4]
    for line in lines:
        assert set(line) == {"iteration", "loss", "lr", "it_per_s", "data_seconds", "step_seconds"}
        assert line["it_per_s"] > 0 and line["data_seconds"] >= 0 and line["step_seconds"] > 0
    [task] = progress.tasks
    assert task.completed == 4 and "loss" in task.description and "lr" in task.description


# -- exact resume ---------------------------------------------------------------------------------
def test_resume_continues_exactly(make_toy, demo, synthetic_root, tmp_path):
    settings = fast(max_iters=6, checkpoint_every=3)
    whole = make_toy()
    train(whole, demo, synthetic_root, tmp_path / "whole", settings)

    crashing = make_toy()
    calls = []

    def crash_in_iteration_4(images, labels):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("simulated crash")
        return type(crashing).loss(crashing, images, labels)

    crashing.loss = crash_in_iteration_4
    # the second half loads its data in a worker process: data do not depend on that
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(
            crashing,
            demo,
            synthetic_root,
            tmp_path / "split",
            fast(max_iters=6, workers=1, checkpoint_every=3),
        )
    out = tmp_path / "split"
    assert latest_checkpoint(out) == (3, out / "checkpoint-0000003.json")
    with open(out / "log.jsonl", "a") as log:  # a line the interrupted run wrote after saving
        log.write(json.dumps({"iteration": 4, "loss": 0.0}) + "\n")

    resumed = make_toy(seed=1)  # another initialisation: the checkpoint must replace it
    result = train(
        resumed, demo, synthetic_root, out, TrainSettings(workers=0, log_every=1), resume=True
    )
    assert result.iterations == 6

    expected, got = parameters(whole), load_file(out / "final.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-7, msg=key)
    split_log, whole_log = log_lines(out), log_lines(tmp_path / "whole")
    assert [(x["iteration"], x["loss"], x["lr"]) for x in split_log] == [
        (x["iteration"], x["loss"], x["lr"]) for x in whole_log
    ]
    # only the latest periodic checkpoint is kept, plus the final weights
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "checkpoint-0000006.json",
        "checkpoint-0000006.safetensors",
        "checkpoint-0000006.state.json",
        "checkpoint-0000006.state.safetensors",
        "final.json",
        "final.safetensors",
        "log.jsonl",
    ]


@pytest.mark.parametrize("accumulate_on_resume", [None, 1], ids=["as-saved", "changed"])
def test_resume_takes_seed_amp_and_accumulate_from_the_checkpoint(
    make_toy, demo, synthetic_root, tmp_path, accumulate_on_resume
):
    """A run started with non-default seed, accumulate and amp resumes without repeating them;
    accumulate may change (the same batches, split otherwise)."""
    settings = {"max_iters": 4, "checkpoint_every": 2, "seed": 5, "accumulate": 2, "amp": "off"}
    whole = make_toy()
    train(whole, demo, synthetic_root, tmp_path / "whole", fast(**settings))

    crashing = make_toy()
    calls = []

    def crash_in_iteration_3(images, labels):  # two micro-batches per iteration
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("simulated crash")
        return type(crashing).loss(crashing, images, labels)

    crashing.loss = crash_in_iteration_3
    out = tmp_path / "split"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashing, demo, synthetic_root, out, fast(**settings))
    resumed = make_toy(seed=1)
    again = TrainSettings(workers=0, log_every=1, accumulate=accumulate_on_resume)
    train(resumed, demo, synthetic_root, out, again, resume=True)
    config = json.loads((out / "final.json").read_text())
    assert config["settings"]["seed"] == 5 and config["settings"]["amp"] == "off"
    assert config["settings"]["accumulate"] == (accumulate_on_resume or 2)
    expected, got = parameters(whole), load_file(out / "final.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    with pytest.raises(UserError, match=r"seed=6 \(checkpoint: 5\)"):
        train(make_toy(), demo, synthetic_root, out, TrainSettings(seed=6), resume=True)


def signal_in_iteration(adapter, iteration: int, signum: int) -> list[int]:
    """Make ``adapter``'s loss send ``signum`` to this process in ``iteration`` (1-based);
    returns the list that counts the loss calls."""
    calls: list[int] = []

    def loss(images, labels):
        calls.append(1)
        if len(calls) == iteration:
            os.kill(os.getpid(), signum)
        return type(adapter).loss(adapter, images, labels)

    adapter.loss = loss
    return calls


def test_a_stop_signal_saves_a_checkpoint_and_resume_is_exact(
    make_toy, demo, synthetic_root, tmp_path
):
    """Ctrl-C in iteration 4 (data from a worker process, which ignores it) ends that iteration,
    saves checkpoint 4 although checkpoints are due every 100, and resuming gives the
    uninterrupted run's parameters."""
    whole = make_toy()
    train(whole, demo, synthetic_root, tmp_path / "whole", fast(max_iters=6))

    stopped = make_toy()
    calls = signal_in_iteration(stopped, 4, signal.SIGINT)
    out = tmp_path / "stopped"
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job of a shell script
    with pytest.raises(KeyboardInterrupt, match="after iteration 4"):
        settings = fast(max_iters=6, workers=1, checkpoint_every=100)
        train(stopped, demo, synthetic_root, out, settings, stop_on_signals=True)
    assert len(calls) == 4 and latest_checkpoint(out) == (4, out / "checkpoint-0000004.json")
    assert signal.getsignal(signal.SIGINT) is before  # handler restored

    resumed = make_toy(seed=1)
    train(resumed, demo, synthetic_root, out, fast(max_iters=6), resume=True)
    expected, got = parameters(whole), load_file(out / "final.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-7, msg=key)


def test_a_library_call_leaves_stop_signals_to_the_process(
    make_toy, demo, synthetic_root, tmp_path
):
    """Only the command line turns SIGTERM into a graceful stop: under a test runner killed by
    ``timeout``, the signal must reach the runner's own handler (here: an exception), not be
    absorbed by the trainer while the test goes on to pass."""

    class Terminated(Exception):
        pass

    def terminated(signum, frame):
        raise Terminated

    adapter = make_toy()
    calls = signal_in_iteration(adapter, 2, signal.SIGTERM)
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        with pytest.raises(Terminated):
            train(adapter, demo, synthetic_root, tmp_path, fast(max_iters=6, checkpoint_every=100))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(calls) == 2 and latest_checkpoint(tmp_path) is None


@pytest.mark.parametrize(
    ("signals", "at_once"),
    [
        ((signal.SIGINT, signal.SIGINT), True),  # Ctrl-C twice
        ((signal.SIGINT, signal.SIGTERM), False),  # a launcher forwarding Ctrl-C, then SIGTERM
        ((signal.SIGTERM, signal.SIGTERM), False),
    ],
    ids=["ctrl-c-twice", "ctrl-c-then-term", "term-twice"],
)
def test_a_second_ctrl_c_interrupts_at_once(
    make_toy, demo, synthetic_root, tmp_path, signals, at_once
):
    adapter = make_toy()
    calls = []

    def two_signals(images, labels):
        calls.append(1)
        for sig in signals:
            os.kill(os.getpid(), sig)
        return type(adapter).loss(adapter, images, labels)

    adapter.loss = two_signals
    with pytest.raises(KeyboardInterrupt):
        settings = fast(max_iters=6, checkpoint_every=100)
        train(adapter, demo, synthetic_root, tmp_path, settings, stop_on_signals=True)
    assert len(calls) == 1
    assert latest_checkpoint(tmp_path) == (
        None if at_once else (1, tmp_path / "checkpoint-0000001.json")
    )
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_checkpoint_files(make_toy, demo, synthetic_root, tmp_path):
    adapter = make_toy()
    initial = adapter.weights_sha256()
    train(adapter, demo, synthetic_root, tmp_path, fast(max_iters=2))
    config = json.loads((tmp_path / "final.json").read_text())
    assert config["iteration"] == 2 and config["model"] == "toy-trainable"
    assert config["protocol"] == "demo" and config["train"]["dataset"] == "synthetic-source"
    assert config["settings"]["lr"] == 1e-2 and config["settings"]["max_iters"] == 2
    assert config["recipe_defaults"]["batch_size"] == 8
    assert config["initial_weights"] == {"sha256": initial} and initial is not None
    model_bytes = (tmp_path / "final.safetensors").read_bytes()
    assert config["model_file"]["sha256"] == hashlib.sha256(model_bytes).hexdigest()
    state = load_file(tmp_path / "checkpoint-0000002.state.safetensors")
    assert {key.rsplit(".", 1)[1] for key in state} == {"step", "exp_avg", "exp_avg_sq"}
    # the adapter loads the trained weights from the file
    loaded = create_adapter(MODEL)
    loaded.load(tmp_path / "final.safetensors", "cpu")
    for key, value in parameters(adapter).items():
        assert torch.equal(loaded.network.state_dict()[key], value)


# -- optimiser, schedule, clipping ----------------------------------------------------------------
def test_lr_schedule_is_warmup_then_cosine_to_zero():
    assert lr_factor(0, 100) == 1.0
    assert lr_factor(50, 100) == pytest.approx(0.5)
    assert lr_factor(25, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(100, 100) == pytest.approx(0.0, abs=1e-15)
    assert lr_factor(0, 100, warmup_iters=10) == pytest.approx(0.001)
    # detectron2's WarmupParamScheduler: a line from 0.001 * cos(0) to cos(W / T), by hand
    end = 0.5 * (1 + math.cos(math.pi * 10 / 100))
    assert lr_factor(5, 100, warmup_iters=10) == pytest.approx(0.001 + (end - 0.001) * 5 / 10)
    assert lr_factor(10, 100, warmup_iters=10) == pytest.approx(end)
    assert lr_factor(9, 100, warmup_iters=10) < end


def test_poly_schedule_is_deeplab_warmup_poly_lr():
    # detectron2 DeepLab WarmupPolyLR (SAN): (1 - t/T)^power, times the linear warm-up factor
    assert lr_factor(0, 100, schedule="poly") == 1.0
    assert lr_factor(50, 100, schedule="poly") == pytest.approx(0.5**0.9)
    assert lr_factor(50, 100, schedule="poly", poly_power=2.0) == pytest.approx(0.25)
    assert lr_factor(100, 100, schedule="poly") == 0.0
    assert lr_factor(0, 100, 10, "poly") == pytest.approx(0.001)
    assert lr_factor(5, 100, 10, "poly") == pytest.approx((0.001 * 0.5 + 0.5) * 0.95**0.9)
    assert lr_factor(10, 100, 10, "poly") == pytest.approx(0.9**0.9)


def test_recipe_chooses_the_lr_schedule(toy_adapters, demo, synthetic_root, tmp_path):
    import toy_adapters as toys

    class Poly(toys.ToyTrainable):
        def training_recipe(self, classes):
            recipe = super().training_recipe(classes)
            recipe.defaults = {**recipe.defaults, "lr_schedule": "poly", "poly_power": 2.0}
            return recipe

    adapter = Poly()
    seed_everything(0)
    adapter.load(None, "cpu")
    train(adapter, demo, synthetic_root, tmp_path, fast(lr=0.02))
    logged = [line["lr"] for line in log_lines(tmp_path)]
    assert logged == pytest.approx([0.02 * (1 - t / 4) ** 2 for t in range(4)])
    config = json.loads((tmp_path / "final.json").read_text())
    assert config["settings"]["lr_schedule"] == "poly"

    class Unknown(toys.ToyTrainable):
        def training_recipe(self, classes):
            recipe = super().training_recipe(classes)
            recipe.defaults = {**recipe.defaults, "lr_schedule": "step"}
            return recipe

    unknown = Unknown()
    seed_everything(0)
    unknown.load(None, "cpu")
    with pytest.raises(UserError, match="unknown lr_schedule 'step'"):
        train(unknown, demo, synthetic_root, tmp_path / "unknown", fast())


def test_logged_lr_follows_the_schedule(make_toy, demo, synthetic_root, tmp_path):
    train(make_toy(), demo, synthetic_root, tmp_path, fast(lr=0.02, warmup_iters=2))
    logged = [line["lr"] for line in log_lines(tmp_path)]
    assert logged == pytest.approx([0.02 * lr_factor(t, 4, 2) for t in range(4)])
    assert logged[0] == pytest.approx(0.02 * 0.001)


def test_param_group_lr_multipliers_and_weight_decay(toy_adapters, demo, synthetic_root, tmp_path):
    import toy_adapters as toys

    class Probed(toys.ToyTrainable):
        """Adds a parameter with a zero gradient: AdamW changes it by weight decay alone."""

        def training_recipe(self, classes):
            recipe = super().training_recipe(classes)
            probe = torch.nn.Parameter(torch.ones(4))
            recipe.module.register_parameter("probe", probe)
            recipe.param_groups.append(
                {"params": [probe], "lr_mult": 2.0, "weight_decay": 0.25, "name": "probe"}
            )
            loss = recipe.loss
            recipe.loss = lambda images, labels: loss(images, labels) + 0.0 * probe.sum()
            return recipe

    adapter = Probed(head_lr_mult=0.0)
    seed_everything(0)
    adapter.load(None, "cpu")
    before = parameters(adapter)
    settings = fast(max_iters=2, lr=0.1, weight_decay=0.5)
    train(adapter, demo, synthetic_root, tmp_path, settings)
    after = parameters(adapter)
    # head: LR multiplier 0, so nothing moves (weight decay is scaled by the LR too)
    for key in ("proj.weight", "proj.bias", "logit_scale"):
        assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["conv1.weight"], before["conv1.weight"])
    # probe: decoupled decay with LR 0.1 * factor * 2 and its own decay 0.25 (kept: not default)
    expected = 1.0
    for t in range(2):
        expected *= 1 - 0.1 * lr_factor(t, 2) * 2.0 * 0.25
    torch.testing.assert_close(after["probe"], torch.full((4,), expected), rtol=1e-6, atol=0)
    state = json.loads((tmp_path / "checkpoint-0000002.state.json").read_text())
    groups = {g["name"]: g for g in state["optimizer"]["param_groups"]}
    last = 0.1 * lr_factor(1, 2)
    assert groups["body"]["lr"] == pytest.approx(last) and groups["head"]["lr"] == 0.0
    assert groups["probe"]["lr"] == pytest.approx(2 * last)
    # --weight-decay replaces the recipe's default decay (1e-4); norms stay at 0
    decays = {name: group["weight_decay"] for name, group in groups.items()}
    assert decays == {"body": 0.5, "norm": 0.0, "head": 0.5, "probe": 0.25}


def update_norm(make_toy, demo, synthetic_root, out: Path, clip_norm: float) -> float:
    adapter = make_toy()
    before = parameters(adapter)
    settings = fast(max_iters=1, lr=0.01, weight_decay=0.0, clip_norm=clip_norm)
    train(adapter, demo, synthetic_root, out, settings)
    after = parameters(adapter)
    return math.sqrt(sum(float((after[k] - before[k]).pow(2).sum()) for k in before))


def test_gradient_clipping_bounds_the_update(make_toy, demo, synthetic_root, tmp_path):
    """Adam's first step moves each weight by lr * g / (|g| + eps): with the total gradient norm
    clipped to c << eps the whole update is at most lr * c / eps; unclipped about lr per weight."""
    clipped = update_norm(make_toy, demo, synthetic_root, tmp_path / "clipped", 1e-9)
    free = update_norm(make_toy, demo, synthetic_root, tmp_path / "free", 0.0)
    bound = 0.01 * 1e-9 / 1e-8
    assert 0 < clipped <= bound * 1.001, f"clipped update {clipped:.3g}, bound {bound:.3g}"
    assert free > 100 * bound, f"unclipped update {free:.3g}"


def test_accumulation_matches_the_full_batch(make_toy, demo, synthetic_root, tmp_path):
    one, two = make_toy(), make_toy()
    train(one, demo, synthetic_root, tmp_path / "one", fast(max_iters=3))
    train(two, demo, synthetic_root, tmp_path / "two", fast(max_iters=3, accumulate=2))
    for key, value in parameters(one).items():
        torch.testing.assert_close(parameters(two)[key], value, rtol=1e-4, atol=1e-5, msg=key)
    losses = [[line["loss"] for line in log_lines(tmp_path / name)] for name in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.parametrize(("amp", "dtype"), [("bf16", torch.bfloat16), ("off", torch.float32)])
def test_amp_setting_decides_the_autocast(make_toy, demo, synthetic_root, tmp_path, amp, dtype):
    """The loss runs under bf16 autocast with amp=bf16 (the default on CUDA), in float32 with
    amp=off and by default on the CPU; the network is back in eval mode afterwards."""
    adapter = make_toy()
    seen = []

    def loss(images, labels):
        enabled = torch.is_autocast_enabled("cpu")
        seen.append(torch.get_autocast_dtype("cpu") if enabled else torch.float32)
        return type(adapter).loss(adapter, images, labels)

    adapter.loss = loss
    adapter.network.eval()
    result = train(adapter, demo, synthetic_root, tmp_path, fast(max_iters=2, amp=amp))
    assert math.isfinite(result.loss) and seen == [dtype, dtype]
    assert not adapter.network.training


def test_deterministic_mode_is_restored_afterwards(make_toy, demo, synthetic_root, tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    train(make_toy(), demo, synthetic_root, tmp_path, fast(max_iters=1, deterministic=True))
    assert not torch.are_deterministic_algorithms_enabled()


def test_batch_plan_is_a_pure_function_of_the_iteration():
    plan = BatchPlan(10, seed=3, batch_size=4)
    stream = [key for it in range(6) for key in plan.iteration(it)[0]]
    for epoch in range(2):  # each epoch visits every sample once
        assert sorted(i for e, i in stream if e == epoch) == list(range(10))
    assert BatchPlan(10, seed=4, batch_size=4).iteration(0) != plan.iteration(0)
    # resuming at iteration 2 yields what the uninterrupted plan yields there
    resumed = iter(BatchPlan(10, seed=3, batch_size=4, start=2))
    assert [next(resumed) for _ in range(2)] == [plan.iteration(2)[0], plan.iteration(3)[0]]
    # two ranks with two micro-batches each share out exactly the single process's batch
    shares = [
        BatchPlan(10, 3, 4, rank=r, world_size=2, accumulate=2).iteration(5) for r in range(2)
    ]
    assert sorted(key for share in shares for micro in share for key in micro) == sorted(
        plan.iteration(5)[0]
    )
    assert all(len(micro) == 1 for share in shares for micro in share)


# -- mistakes -------------------------------------------------------------------------------------
def corrupt_garbage(path: Path) -> None:
    path.write_bytes(b"not a checkpoint")


def corrupt_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data: the header still parses
    path.write_bytes(bytes(data))


def corrupt_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_json(**changes):
    def corrupt(path: Path) -> None:
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, **changes}))

    return corrupt


@pytest.mark.parametrize(
    ("name", "corrupt"),
    [
        ("checkpoint-0000002.safetensors", corrupt_garbage),
        ("checkpoint-0000002.safetensors", corrupt_flip),
        ("checkpoint-0000002.state.safetensors", corrupt_truncate),
        ("checkpoint-0000002.state.json", corrupt_truncate),
        ("checkpoint-0000002.json", corrupt_truncate),
        ("checkpoint-0000002.json", edit_json(model_file={})),  # no checksum recorded
        ("checkpoint-0000002.state.json", edit_json(sha256=None)),
        ("checkpoint-0000002.state.json", edit_json(iteration=1)),
    ],
)
def test_corrupted_checkpoint_is_a_one_line_error(
    make_toy, demo, synthetic_root, tmp_path, name, corrupt
):
    train(make_toy(), demo, synthetic_root, tmp_path, fast(max_iters=2))
    corrupt(tmp_path / name)
    with pytest.raises(UserError) as error:
        train(make_toy(), demo, synthetic_root, tmp_path, fast(max_iters=None), resume=True)
    message = str(error.value)
    assert str(tmp_path / name) in message and "\n" not in message, message


@pytest.mark.parametrize("kind", ["nan-gradient", "nan-loss"])
def test_divergence_stops_before_saving(make_toy, demo, synthetic_root, tmp_path, kind):
    """A NaN gradient behind a finite loss (d sqrt(x) at 0) or a NaN loss in iteration 3 stops
    the run with a one-line error; the checkpoint of iteration 2 stays and holds finite
    weights."""
    adapter = make_toy()
    calls = []

    def poisoned(images, labels):
        calls.append(1)
        loss = type(adapter).loss(adapter, images, labels)
        if len(calls) == 3:
            weight = next(adapter.network.parameters())
            loss = (
                loss + torch.sqrt(weight * 0).sum() if kind == "nan-gradient" else loss * math.nan
            )
        return loss

    adapter.loss = poisoned
    with pytest.raises(UserError, match="training diverged") as error:
        train(adapter, demo, synthetic_root, tmp_path, fast(max_iters=6, checkpoint_every=1))
    assert "iteration 3" in str(error.value) and "\n" not in str(error.value)
    assert latest_checkpoint(tmp_path) == (2, tmp_path / "checkpoint-0000002.json")
    saved = load_file(tmp_path / "checkpoint-0000002.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in saved.values())


def test_settings_mistakes(make_toy, demo, synthetic_root, tmp_path):
    with pytest.raises(UserError, match="amp"):
        train(make_toy(), demo, synthetic_root, tmp_path / "a", fast(amp="fp16"))
    with pytest.raises(UserError, match="divisible"):
        train(make_toy(), demo, synthetic_root, tmp_path / "b", fast(batch_size=3, accumulate=2))
    train(make_toy(), demo, synthetic_root, tmp_path / "c", fast(max_iters=1))
    with pytest.raises(UserError, match="already holds a training run"):
        train(make_toy(), demo, synthetic_root, tmp_path / "c", fast(max_iters=1))
    with pytest.raises(UserError, match="checkpoint's settings: lr=1.0"):
        train(
            make_toy(), demo, synthetic_root, tmp_path / "c", fast(max_iters=1, lr=1.0), resume=True
        )


# -- the command line -----------------------------------------------------------------------------
def train_arguments(data_root: Path, results: Path, *extra: str) -> list[str]:
    return [
        "train", "--model", MODEL, "--protocol", "demo", "--data-root", str(data_root),
        "--results", str(results), "--device", "cpu", "--workers", "0", *extra,
    ]  # fmt: skip


def test_cli_train_then_evaluate(cli, toy_adapters, synthetic_root, tmp_path):
    results = tmp_path / "results"
    args = train_arguments(synthetic_root, results, "--max-iters", "3", "--batch-size", "4")
    done = cli(*args, "--eval")
    assert done.code == 0, done.err
    out = results / "train" / "toy_adapters_ToyTrainable-demo"
    assert "trained" in done.out and (out / "final.safetensors").is_file()
    weights_sha = hashlib.sha256((out / "final.safetensors").read_bytes()).hexdigest()
    records = [json.loads(p.read_text()) for p in (results / "records").rglob("*.json")]
    assert sorted(r["dataset"] for r in records) == ["synthetic-source", "synthetic-target"]
    assert all(r["weights_sha256"] == weights_sha for r in records)
    # a finished run resumes to nothing new; a fresh start refuses to overwrite it
    again = cli(*args, "--resume")
    assert again.code == 0, again.err
    assert hashlib.sha256((out / "final.safetensors").read_bytes()).hexdigest() == weights_sha
    refused = cli(*args)
    assert refused.code == 2 and "already holds a training run" in refused.err


def test_cli_ctrl_c_saves_and_resume_finishes(synthetic_root, tmp_path):
    """A real Ctrl-C to the command's process group (main process and data worker) while
    training: exit code 130 with the resume hint, a checkpoint at the last finished iteration,
    and ``--resume`` finishes the run."""
    out = tmp_path / "out"
    args = train_arguments(
        synthetic_root, tmp_path, "--out", str(out), "--max-iters", "150", "--workers", "1",
        "--log-every", "1", "--checkpoint-every", "1000",
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), *sys.path])}
    command = [sys.executable, "-m", "ovrsisbench", *args]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    log = out / "log.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and len(log.read_text().splitlines()) >= 3):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err
    assert "interrupted" in err.decode() and "--resume" in err.decode()
    found = latest_checkpoint(out)
    assert found is not None and 3 <= found[0] < 150
    assert log_lines(out)[-1]["iteration"] == found[0]
    finished = subprocess.run([*command, "--resume"], env=env, capture_output=True, timeout=300)
    assert finished.returncode == 0, finished.stderr.decode()
    assert json.loads((out / "final.json").read_text())["iteration"] == 150


def test_cli_resume_without_checkpoint(cli, toy_adapters, synthetic_root, tmp_path):
    result = cli(*train_arguments(synthetic_root, tmp_path, "--out", tmp_path / "x", "--resume"))
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "no checkpoint to resume" in lines[0], result.err


def test_cli_mistakes(cli, toy_adapters, synthetic_root, tmp_path):
    unknown = cli("train", "--model", MODEL, "--protocol", "nope")
    assert unknown.code == 2 and "unknown protocol" in unknown.err
    missing = cli(*train_arguments(tmp_path / "no-data", tmp_path))
    assert missing.code == 2 and "does not exist" in missing.err
    amp = cli(*train_arguments(synthetic_root, tmp_path, "--amp", "fp8"))
    assert amp.code == 2 and "amp" in amp.err and len(amp.err.strip().splitlines()) == 1


# -- under torchrun -------------------------------------------------------------------------------
def test_torchrun_trains_like_one_process_and_evaluates(make_toy, demo, synthetic_root, tmp_path):
    """``torchrun --nproc-per-node 2`` (gloo): each process with half of every batch in two
    micro-batches ends where one process with the whole batch ends; rank 0 alone prints and
    writes; ``--eval`` then evaluates under torchrun with the trained weights."""
    single = make_toy()
    train(single, demo, synthetic_root, tmp_path / "single", fast(max_iters=3))
    out, results = tmp_path / "ddp", tmp_path / "results"
    arguments = train_arguments(synthetic_root, results, "--out", str(out))
    arguments += ["--max-iters", "3", "--batch-size", "4", "--accumulate", "2", "--log-every", "1"]
    launched = torchrun([*arguments, "--eval"])
    assert launched.returncode == 0, launched.stderr
    assert launched.stdout.count(f"trained {MODEL} for 3 iterations") == 1
    assert launched.stdout.count("on protocol demo") == 1
    got = load_file(out / "final.safetensors")
    for key, value in parameters(single).items():
        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5, msg=key)
    losses = [[line["loss"] for line in log_lines(path)] for path in (tmp_path / "single", out)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert json.loads((out / "final.json").read_text())["world_size"] == 2
    records = [json.loads(p.read_text()) for p in (results / "records").rglob("*.json")]
    sha = hashlib.sha256((out / "final.safetensors").read_bytes()).hexdigest()
    assert sorted(r["dataset"] for r in records) == ["synthetic-source", "synthetic-target"]
    assert {r["weights_sha256"] for r in records} == {sha}


def test_sigterm_to_one_process_stops_all_at_the_same_iteration(synthetic_root, tmp_path):
    """Preemption of one of two processes: both finish the same iteration, one checkpoint is
    written there, both exit 130; the resumed pair finishes the run."""
    out = tmp_path / "out"
    arguments = train_arguments(synthetic_root, tmp_path, "--out", str(out))
    arguments += ["--max-iters", "150", "--log-every", "1", "--checkpoint-every", "1000"]
    processes = start_by_hand(arguments)
    log = out / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):
        if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
            finish(processes)
            pytest.fail("training did not start")
        time.sleep(0.05)
    processes[1].send_signal(signal.SIGTERM)
    stopped = finish(processes)
    assert [p.returncode for p in stopped] == [130, 130], stopped[0].stderr + stopped[1].stderr
    found = latest_checkpoint(out)
    assert found is not None and 3 <= found[0] < 150
    assert log_lines(out)[-1]["iteration"] == found[0]
    resumed = finish(start_by_hand([*arguments, "--resume"]))
    assert [p.returncode for p in resumed] == [0, 0], resumed[0].stderr + resumed[1].stderr
    assert json.loads((out / "final.json").read_text())["iteration"] == 150


def test_records_and_leaderboards_name_the_training_run(make_toy, demo, synthetic_root, tmp_path):
    """The weights of `train` are labelled by their run (and a checkpoint by its iteration)."""
    from ovrsisbench.checkpoints import weights_origin
    from ovrsisbench.results import weights_label

    out = tmp_path / "rsktseg-demo"
    train(make_toy(), demo, synthetic_root, out, fast(max_iters=4))
    final, checkpoint = out / "final.safetensors", out / "checkpoint-0000004.safetensors"
    sha = hashlib.sha256(final.read_bytes()).hexdigest()
    origin = weights_origin(final, sha)
    assert origin == {
        "file": "final.safetensors", "training_run": "rsktseg-demo", "protocol": "demo",
        "iteration": 4,
    }  # fmt: skip
    record = {"weights_sha256": sha, "weights_origin": origin}
    assert weights_label(record) == f"{sha[:12]} (run rsktseg-demo)"
    origin = weights_origin(checkpoint, sha)  # the same network, as the run's last checkpoint
    assert weights_label({"weights_sha256": sha, "weights_origin": origin}) == (
        f"{sha[:12]} (run rsktseg-demo @ 4)"
    )
    # a file that is not the one its JSON describes is only named
    assert weights_origin(final, "0" * 64) == {"file": "final.safetensors"}
    assert weights_label({"weights_sha256": None, "weights_origin": None}) == "none"
