"""The thread policy: small models run on one torch thread in evaluation and training, large
ones keep torch's setting, the user's OVRSISBENCH_THREADS / OMP_NUM_THREADS win."""

from __future__ import annotations

import pytest
import torch
from tests_helpers import run_toy

from ovrsisbench import threads
from ovrsisbench.errors import UserError
from ovrsisbench.protocol import load_protocol
from ovrsisbench.registry import create_adapter
from ovrsisbench.train import TrainSettings, seed_everything, train


@pytest.fixture
def two_threads(monkeypatch):
    """torch at 2 threads (the tests run at 1), restored afterwards; no user setting."""
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_policy(monkeypatch, two_threads):
    assert threads.policy_threads(1_000) == 1
    assert threads.policy_threads(threads.SMALL_MODEL_PARAMETERS) is None
    assert threads.policy_threads(None) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.policy_threads(1_000) is None  # torch already follows the user's setting
    monkeypatch.setenv(threads.THREADS_ENV, "3")
    assert threads.policy_threads(1_000) == 3 and threads.policy_threads(10**9) == 3
    monkeypatch.setenv(threads.THREADS_ENV, "many")
    with pytest.raises(UserError, match="OVRSISBENCH_THREADS='many' must be a positive integer"):
        threads.policy_threads(1_000)


def spy_on_threads(monkeypatch, cls, method: str) -> list[int]:
    seen: list[int] = []
    original = getattr(cls, method)

    def spy(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, spy)
    return seen


@pytest.mark.parametrize(("small_below", "expected"), [(None, 1), (0, 2)])
def test_evaluation_runs_a_small_model_on_one_thread(
    monkeypatch, two_threads, synthetic_root, tmp_path, toy_adapters, small_below, expected
):
    if small_below is not None:  # every model counts as large
        monkeypatch.setattr(threads, "SMALL_MODEL_PARAMETERS", small_below)
    import toy_adapters as module

    seen = spy_on_threads(monkeypatch, module.ColourAdapter, "predict")
    run_toy(toy_adapters, synthetic_root, tmp_path)
    assert seen and set(seen) == {expected}
    assert torch.get_num_threads() == 2  # restored


def test_training_runs_a_small_model_on_one_thread(
    monkeypatch, two_threads, synthetic_root, tmp_path, toy_adapters
):
    import toy_adapters as module

    seen = spy_on_threads(monkeypatch, module.ToyTrainable, "loss")
    adapter = create_adapter("toy_adapters:ToyTrainable")
    seed_everything(0)
    adapter.load(None, "cpu")
    settings = TrainSettings(workers=0, batch_size=2, max_iters=2, log_every=1)
    train(adapter, load_protocol("demo"), synthetic_root, tmp_path, settings)
    assert seen == [1, 1] and torch.get_num_threads() == 2
