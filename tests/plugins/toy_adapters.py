"""Small adapters for tests and benchmarks, loaded as ``toy_adapters:ClassName``.

They stand in for third-party adapters: importable only through a module:Class string.
"""

from __future__ import annotations

import hashlib
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovrsisbench.adapter import Adapter, TrainingRecipe
from ovrsisbench.io import file_sha256, state_dict_sha256


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


class OwnProtocolAdapter(ColourAdapter):
    """Colour scores, evaluated on the demo protocol unless ``run`` names another."""

    name = "own-protocol"
    default_protocol = "demo"


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


class BatchMixingAdapter(ColourAdapter):
    """Scores that depend on the other images of the batch (as batch statistics or
    batch-dependent kernels can): a different grouping changes the predictions."""

    name = "batch-mixing"

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        scores = super().predict(images)
        return scores + 2.0 * scores.mean(dim=0, keepdim=True).roll(1, dims=1)


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


# -- a trainable toy -----------------------------------------------------------------------------
def _name_embedding(names: list[str], dim: int) -> torch.Tensor:
    """A fixed unit vector per class: the mean of one hash-seeded vector per prompt name."""
    vectors = []
    for name in names:
        seed = int(hashlib.sha256(name.encode()).hexdigest()[:16], 16)
        vectors.append(torch.from_numpy(np.random.default_rng(seed).standard_normal(dim)))
    mean = torch.stack(vectors).mean(0).float()
    return mean / mean.norm()


class _ToyNet(torch.nn.Module):
    """Two 3x3 convolutions, a GroupNorm and a 1x1 projection to ``dim`` features per pixel."""

    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, width, 3, padding=1)
        self.norm = torch.nn.GroupNorm(4, width)
        self.conv2 = torch.nn.Conv2d(width, width, 3, padding=1)
        self.proj = torch.nn.Conv2d(width, dim, 1)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) on the 0-255 scale -> (B, dim, H, W) features."""
        x = (images - 128.0) / 64.0
        x = torch.relu(self.norm(self.conv1(x)))
        return self.proj(torch.relu(self.conv2(x)))


class ToyTrainable(Adapter):
    """A tiny trainable conv net scoring fixed name embeddings (tests the generic trainer)."""

    name = "toy-trainable"
    trainable = True
    default_options = {"size": 32, "width": 16, "dim": 16, "head_lr_mult": 1.0}
    text: torch.Tensor | None = None

    def load(self, weights: Path | None, device: torch.device | str) -> None:
        self.device = torch.device(device)
        network = _ToyNet(self.options["width"], self.options["dim"])
        self.weights_file = weights
        if weights is not None:
            from safetensors.torch import load_file

            network.load_state_dict(load_file(str(weights)))
        self.network = network.to(self.device)

    def set_vocabulary(self, classes: list[list[str]]) -> None:
        dim = self.options["dim"]
        self.text = torch.stack([_name_embedding(names, dim) for names in classes])

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) on the 0-255 scale -> (B, K, H, W) class logits."""
        features = self.network(images)
        text = self.text.to(features.device, features.dtype)
        return torch.einsum("bdhw,kd->bkhw", features, text) * self.network.logit_scale.exp()

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images * 255.0).float()

    def weights_sha256(self) -> str | None:
        if self.weights_file is not None:
            return file_sha256(Path(self.weights_file))
        return state_dict_sha256(self.network)

    def training_recipe(self, classes: list[list[str]]) -> TrainingRecipe:
        self.set_vocabulary(classes)
        net = self.network
        head = [net.proj.weight, net.proj.bias, net.logit_scale]
        norm = list(net.norm.parameters())
        body = [p for p in net.parameters() if all(p is not q for q in head + norm)]
        groups = [
            {"params": body, "lr_mult": 1.0, "weight_decay": 1e-4, "name": "body"},
            {"params": norm, "lr_mult": 1.0, "weight_decay": 0.0, "name": "norm"},
            {"params": head, "lr_mult": self.options["head_lr_mult"], "weight_decay": 1e-4,
             "name": "head"},
        ]  # fmt: skip
        return TrainingRecipe(
            module=net,
            param_groups=groups,
            loss=self.loss,
            transform=partial(crop_flip, size=self.options["size"]),
            defaults={
                "lr": 1e-2,
                "weight_decay": 1e-4,
                "max_iters": 40,
                "batch_size": 8,
                "clip_norm": 1.0,
                "warmup_iters": 0,
            },
        )

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy summed over labelled pixels, divided by all pixels (ignored ones count
        zero), so equal micro-batches accumulate to exactly the full batch's loss."""
        logits = self.logits(images).float()
        summed = F.cross_entropy(logits, labels, ignore_index=255, reduction="sum")
        return summed / labels.numel()


def crop_flip(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pad (image 128, label 255) to at least ``size``, random ``size`` crop, random h-flip."""
    height, width = label.shape
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=128)
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=255)
        height, width = label.shape
    y = int(rng.integers(0, height - size + 1))
    x = int(rng.integers(0, width - size + 1))
    image, label = image[y : y + size, x : x + size], label[y : y + size, x : x + size]
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)
