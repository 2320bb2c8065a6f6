"""Small adapters for tests and benchmarks, loaded as ``toy_adapters:ClassName``.

They stand in for third-party adapters: importable only through a module:Class string.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch

from ovrsisbench.adapter import Adapter


def _name_weight(name: str) -> float:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


class ColourAdapter(Adapter):
    """Deterministic scores from pixel colours, weighted by a hash of each class's names."""

    name = "colour"
    default_options = {"gain": 1.0}

    def load(self, weights: Path | None, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.network = torch.nn.Conv2d(3, 3, 1)

    def set_vocabulary(self, classes: list[list[str]]) -> None:
        self.weights = torch.tensor([max(_name_weight(n) for n in names) for names in classes])

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        k = len(self.weights)
        channels = images[:, torch.arange(k) % 3]  # (B,K,H,W)
        phase = self.weights.to(images.device).view(1, k, 1, 1)
        return torch.cos(6.0 * channels * self.options["gain"] + 6.28 * phase)


class NoopAdapter(ColourAdapter):
    """Returns constant scores without computing anything (measures harness overhead)."""

    name = "noop"

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        return torch.zeros((1, len(self.weights), 1, 1), device=images.device).expand(b, -1, h, w)


class WrongShapeAdapter(ColourAdapter):
    """Breaks the contract: half-resolution output."""

    name = "wrong-shape"

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return super().predict(images)[..., ::2, ::2]


class NaNAdapter(ColourAdapter):
    """Breaks the contract: NaN scores."""

    name = "nan"

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return super().predict(images) * float("nan")


class DeafAdapter(ColourAdapter):
    """Breaks the contract: ignores the vocabulary's names."""

    name = "deaf"

    def set_vocabulary(self, classes: list[list[str]]) -> None:
        self.weights = torch.linspace(0, 1, len(classes))


class FailingAdapter(ColourAdapter):
    """Raises inside predict for images wider than 60 pixels."""

    name = "failing"

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] > 60:
            raise RuntimeError("simulated adapter failure")
        return super().predict(images)


class SlowAdapter(ColourAdapter):
    """Takes a while per batch, so a test can kill a run half-way."""

    name = "slow"

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        time.sleep(0.15)
        return super().predict(images)


class UnloadableAdapter(Adapter):
    """Breaks the contract: implements nothing."""

    name = "unloadable"


class PickyAdapter(ColourAdapter):
    """Its constructor fails the way a third-party bug would."""

    name = "picky"

    def __init__(self, **options):
        raise TypeError("needs a config file")
