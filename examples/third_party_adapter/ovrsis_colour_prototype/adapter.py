"""A training-free colour-prototype baseline: the reference example of a third-party adapter.

Every class gets one colour prototype per prompt name, looked up in a small keyword table
(``tree`` -> green, ``water`` -> blue, ...; a name with no known word gets a colour derived from
a hash of the name, so the vocabulary always matters). A pixel scores each prototype by its
squared RGB distance, ``-distance / temperature``; a class takes its best synonym per pixel,
and a softmax over the classes turns the scores into probabilities. It knows nothing about
texture or shape: it is a floor that any real model should beat, not a model of its own.

The adapter contract (``ovrsisbench.adapter.Adapter``), as implemented here:

- ``name``: the name ``ovrsisbench run --model NAME`` uses (equal to the entry-point name).
- ``default_options``: every option and its default. The base ``__init__`` rejects unknown
  options, fills in the defaults and stores ``self.options``; check the values yourself and
  raise ``ovrsisbench.errors.UserError`` for a bad one (shown as one line, no traceback). Every
  option is recorded in each result, so results with other options never mix.
- ``load(weights, device)``: build the model on ``device``; ``weights`` is the ``--weights``
  path, or None for the adapter's default weights. This adapter has none and refuses a path.
- ``set_vocabulary(classes)``: the classes to score, one list of prompt names (synonyms) per
  class, in order. It is called again for every dataset, possibly with another size.
- ``predict(images)``: (B, 3, H, W) float RGB in [0, 1] -> (B, K, H, W) float scores at the
  input resolution, K = ``len(classes)``; the harness takes the argmax over K. It must be
  deterministic, finite and leave ``images`` unchanged.
- ``version``, ``source_url``, ``licence``: left unset on purpose, so that ovrsisbench reads them
  from this package's metadata (``pyproject.toml``: version, ``[project.urls]``, licence).
- Optional: ``describe()`` (inference facts recorded with each result), ``weights_sha256()``
  (None here: no weights), ``network`` (an ``nn.Module`` whose parameters are counted).

The package registers the class in the entry-point group ``ovrsisbench.adapters`` (see
``pyproject.toml``); ``ovrsisbench adapters validate colour-prototype`` checks the contract.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import torch
from ovrsisbench.adapter import Adapter
from ovrsisbench.errors import UserError

#: Prototype colours (RGB in [0, 1]) and the words that select them.
PROTOTYPES: dict[tuple[float, float, float], tuple[str, ...]] = {
    (0.25, 0.45, 0.20): ("tree", "grass", "vegetation", "forest", "agriculture", "field", "crop"),
    (0.15, 0.30, 0.55): ("water", "river", "sea", "lake", "pond"),
    (0.50, 0.50, 0.50): ("road", "pavement", "impervious", "parking", "street", "highway"),
    (0.65, 0.35, 0.28): ("building", "roof", "house"),
    (0.90, 0.88, 0.80): ("car", "vehicle", "truck"),
    (0.72, 0.62, 0.45): ("soil", "bare", "barren", "sand"),
    (0.42, 0.40, 0.37): ("background", "clutter"),
}
KEYWORDS: dict[str, tuple[float, float, float]] = {
    word: colour for colour, words in PROTOTYPES.items() for word in words
}


def name_colour(name: str) -> tuple[float, float, float]:
    """The prototype of one prompt name: its first known word (a plural's singular counts),
    else three bytes of the name's SHA-256."""
    for word in re.findall(r"[a-z]+", name.lower()):
        for form in (word, word.removesuffix("s")):
            if form in KEYWORDS:
                return KEYWORDS[form]
    digest = hashlib.sha256(name.encode()).digest()
    return (digest[0] / 255, digest[1] / 255, digest[2] / 255)


class ColourPrototypeAdapter(Adapter):
    """Training-free baseline: each pixel's RGB distance to a colour chosen per class name."""

    name = "colour-prototype"
    default_options = {"temperature": 0.1}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        temperature = self.options["temperature"]
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not math.isfinite(temperature)
            or temperature <= 0
        ):
            raise UserError(
                f"{self.name} option temperature must be a number > 0, got {temperature!r}"
            )
        self.device = torch.device("cpu")
        self.prototypes: list[torch.Tensor] | None = None  # per class: (synonyms, 3)

    def load(self, weights: Path | None, device: torch.device | str) -> None:
        if weights is not None:
            raise UserError(f"{self.name} has no weights: run it without --weights ({weights})")
        self.device = torch.device(device)

    def set_vocabulary(self, classes: list[list[str]]) -> None:
        if not classes or any(not names for names in classes):
            raise UserError(f"{self.name}: every class needs at least one prompt name")
        self.prototypes = [
            torch.tensor([name_colour(name) for name in names], device=self.device)
            for names in classes
        ]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        if self.prototypes is None:
            raise RuntimeError(f"{self.name}: call set_vocabulary() before predict()")
        pixels = images.to(self.device, torch.float32)  # a copy or the input: never written
        class_scores = []
        for synonyms in self.prototypes:
            distances = [
                (pixels - colour.view(1, 3, 1, 1)).square().sum(dim=1) for colour in synonyms
            ]  # each (B, H, W)
            class_scores.append(torch.stack(distances).amin(dim=0))  # best synonym per pixel
        scores = -torch.stack(class_scores, dim=1) / self.options["temperature"]  # (B, K, H, W)
        return scores.softmax(dim=1).to(images.device)

    def describe(self) -> dict[str, Any]:
        return {
            "scores": "softmax over classes of -squared RGB distance / temperature, "
            "best synonym per pixel",
            "prototypes": "keyword table, else a SHA-256 colour of the prompt name",
        }
