"""Checks an adapter against the contract on generated inputs and names every breach."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ovrsisbench.adapter import Adapter

# Vocabularies of generated names: A and B have equal size and different names, C is larger.
VOCAB_A = [["building", "house"], ["road"], ["tree"]]
VOCAB_B = [["water"], ["car", "vehicle"], ["bare soil"]]
VOCAB_C = [["grass"], ["ship"], ["airplane"], ["tennis court"], ["sand"]]
SIZES = ((2, 64, 64), (1, 50, 70))  # (batch, height, width): a square batch, an odd size


@dataclass(frozen=True)
class Check:
    """One contract check and its outcome (``problem`` is None when it passed)."""

    name: str
    problem: str | None


def _images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 3, height, width), generator=generator)


def _output_problem(scores: object, images: torch.Tensor, num_classes: int) -> str | None:
    if not isinstance(scores, torch.Tensor):
        return f"predict returned {type(scores).__name__}, expected a torch.Tensor"
    expected = (images.shape[0], num_classes, *images.shape[2:])
    if tuple(scores.shape) != expected:
        return f"wrong shape: got {tuple(scores.shape)}, expected {expected} (B,K,H,W)"
    if not scores.is_floating_point():
        return f"wrong dtype: got {scores.dtype}, expected a floating-point tensor"
    if not torch.isfinite(scores).all():
        bad = int((~torch.isfinite(scores)).sum())
        return f"non-finite values: {bad} of {scores.numel()} scores are NaN or infinite"
    return None


class AdapterValidator:
    """Runs every contract check on a loaded adapter, continuing after failures."""

    def __init__(self, adapter: Adapter, device: torch.device) -> None:
        self.adapter = adapter
        self.device = device

    def _predict(self, vocabulary: list[list[str]], images: torch.Tensor) -> torch.Tensor:
        self.adapter.set_vocabulary(vocabulary)
        with torch.inference_mode():
            return self.adapter.predict(images.to(self.device))

    def _check(self, name: str, body: Callable[[], str | None]) -> Check:
        try:
            return Check(name, body())
        except Exception as error:
            return Check(name, f"raised {type(error).__name__}: {error}")

    def run(self) -> list[Check]:
        checks = [
            self._check(
                f"output contract on {b}x3x{h}x{w}", lambda b=b, h=h, w=w: self._shape(b, h, w)
            )
            for b, h, w in SIZES
        ]
        checks.append(self._check("vocabulary size change", self._vocabulary_size))
        checks.append(self._check("output follows the vocabulary", self._vocabulary_names))
        checks.append(self._check("determinism", self._determinism))
        checks.append(self._check("input left unchanged", self._input_untouched))
        return checks

    def _shape(self, batch: int, height: int, width: int) -> str | None:
        images = _images(batch, height, width, seed=1)
        return _output_problem(self._predict(VOCAB_A, images), images, len(VOCAB_A))

    def _vocabulary_size(self) -> str | None:
        images = _images(1, 64, 64, seed=2)
        return _output_problem(self._predict(VOCAB_C, images), images, len(VOCAB_C))

    def _vocabulary_names(self) -> str | None:
        images = _images(1, 64, 64, seed=3)
        first = self._predict(VOCAB_A, images).float().cpu()
        second = self._predict(VOCAB_B, images).float().cpu()
        if first.shape == second.shape and torch.equal(first, second):
            return "scores are identical for two different vocabularies: set_vocabulary is ignored"
        return None

    def _determinism(self) -> str | None:
        images = _images(2, 64, 64, seed=4)
        first = self._predict(VOCAB_A, images).float().cpu()
        second = self._predict(VOCAB_A, images).float().cpu()
        if first.shape != second.shape or not torch.allclose(first, second, rtol=1e-4, atol=1e-5):
            diff = (first - second).abs().max().item() if first.shape == second.shape else "shape"
            return f"two calls on the same input differ (max difference {diff})"
        return None

    def _input_untouched(self) -> str | None:
        images = _images(1, 64, 64, seed=5).to(self.device)
        copy = images.clone()
        self._predict(VOCAB_A, images)
        if not torch.equal(images, copy):
            return "predict modified its input tensor in place"
        return None


def validate_adapter(adapter: Adapter, device: torch.device) -> list[Check]:
    """Every contract check's outcome for an adapter whose ``load`` has been called."""
    return AdapterValidator(adapter, device).run()
