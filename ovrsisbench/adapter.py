"""The adapter contract every model implements (``ovrsisbench.registry`` finds them by name)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ovrsisbench.errors import UserError
from ovrsisbench.io import file_sha256

if TYPE_CHECKING:
    from ovrsisbench.protocol import BackgroundRule

ENCODER_GROUPS = ("clip", "remoteclip", "dino")


@dataclass
class TrainingRecipe:
    """What a trainable adapter hands the generic trainer (``ovrsisbench.train``).

    ``loss(images, labels)`` runs the forward itself on float images (B, 3, S, S) on the 0-255
    scale and int64 labels (B, S, S) of scored class ids (255 = ignore), returning a scalar;
    ``transform(image, label, rng)`` is the train-time augmentation of one uint8 (H, W, 3) image
    and (H, W) label to a fixed size S, deterministic given ``rng``; ``param_groups`` are dicts
    with ``params``, ``lr_mult``, ``weight_decay`` and ``name``; ``defaults`` holds the recipe's
    ``lr``, ``weight_decay``, ``max_iters``, ``batch_size``, ``clip_norm`` and ``warmup_iters``.
    """

    module: torch.nn.Module
    param_groups: list[dict[str, Any]]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    transform: Callable[..., tuple[Any, Any]]
    defaults: dict[str, Any]


@dataclass(frozen=True)
class DemoTraining:
    """How ``ovrsisbench demo`` trains a trainable adapter's tiny model: adapter ``options``
    added to ``demo_options`` and ``settings`` (``TrainSettings`` fields) replacing the
    recipe's defaults, because the recipe is made for pretrained encoders and 30k iterations;
    ``reason`` says why, in the demo's output."""

    options: dict[str, Any]
    settings: dict[str, Any]
    reason: str


class Adapter:
    """Base class of all models evaluated by the harness.

    Subclasses set ``name`` and implement ``load``, ``set_vocabulary`` and ``predict``.
    To support ``adapters info`` they also implement ``build`` (the bare network) and,
    when the network holds pretrained encoders, ``encoder_modules``.
    """

    name: ClassVar[str] = ""
    #: One line for ``adapters list`` (else the first line of the class docstring).
    description: ClassVar[str] = ""
    trainable: ClassVar[bool] = False
    #: Provenance shown in submissions (``ovrsisbench submit``): the adapter's version, where the
    #: model comes from (code or paper URL) and the licence of its code and weights. Unset, an
    #: entry-point adapter takes them from its distribution's metadata.
    version: ClassVar[str | None] = None
    source_url: ClassVar[str | None] = None
    licence: ClassVar[str | None] = None
    #: Option names and defaults accepted by ``__init__``; recorded in every result.
    default_options: ClassVar[dict[str, Any]] = {}
    #: Options that only shape training (crop size, loss...): left out of result records, where
    #: the trained weights' hash already stands for them, so that they never split a row.
    training_options: ClassVar[tuple[str, ...]] = ()
    #: Allowed values of options with a fixed set of values (checked by ``__init__``).
    choices: ClassVar[dict[str, tuple]] = {}
    #: The protocol ``ovrsisbench run`` evaluates when none is given: the model's own settings
    #: where it has some (segearth_ov: ``segearth``), else OVRSISBench V1 trained on DLRSD.
    default_protocol: ClassVar[str] = "dlrsd"
    #: Options that make a tiny random model for ``ovrsisbench demo``; None = not in the demo.
    demo_options: ClassVar[dict[str, Any] | None] = None
    #: How the demo trains the tiny model (trainable adapters); None = evaluated untrained only.
    demo_training: ClassVar[DemoTraining | None] = None
    #: The network built by ``load`` (used for parameter counts); None until loaded.
    network: torch.nn.Module | None = None

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.default_options))
        if unknown:
            known = ", ".join(sorted(self.default_options)) or "none"
            raise UserError(
                f"adapter '{self.name}' has no option {', '.join(unknown)} (known: {known})"
            )
        self.options: dict[str, Any] = _json_values(self.name, {**self.default_options, **options})
        for key, allowed in self.choices.items():
            if self.options[key] not in allowed:
                known = ", ".join(str(value) for value in allowed)
                raise UserError(f"{self.name} option {key}={self.options[key]!r} (choose: {known})")

    def evaluation_options(self) -> dict[str, Any]:
        """The options that decide a result: every option but the ``training_options``."""
        return {k: v for k, v in self.options.items() if k not in self.training_options}

    # -- the evaluation contract -------------------------------------------------------------
    def load(self, weights: Path | None, device: torch.device | str) -> None:
        """Build the model, load ``weights`` (or the adapter's default weights) onto ``device``."""
        raise NotImplementedError

    def set_vocabulary(self, classes: list[list[str]]) -> None:
        """Set the classes to score: one list of prompt names (synonyms) per class."""
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Map (B,3,H,W) float RGB in [0,1] to (B,K,H,W) float scores at the input resolution."""
        raise NotImplementedError

    #: Whether ``set_background`` applies a vocabulary's rejection rule (recorded per result).
    applies_background: ClassVar[bool] = False

    def set_background(self, rule: BackgroundRule | None) -> None:
        """Apply ``rule`` (None: none) to the scores of the vocabulary set last; called by the
        evaluator after every ``set_vocabulary``, which clears the rule of an adapter that
        applies one. The default ignores it (``applies_background``)."""

    # -- introspection ------------------------------------------------------------------------
    def build(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """Build the bare network (random or empty weights) on ``device``; ``meta`` must work."""
        raise NotImplementedError(f"adapter '{self.name}' does not expose its network")

    def encoder_modules(self, network: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """The pretrained encoders inside ``network``, keyed by group (clip, remoteclip, dino)."""
        return {}

    def training_recipe(self, classes: list[list[str]]) -> TrainingRecipe:
        """After ``load``: what the trainer needs to train on ``classes`` (one list of prompt
        names per scored class, in label-id order). Only for ``trainable`` adapters."""
        raise NotImplementedError(f"adapter '{self.name}' is not trainable")

    #: The weights file given to ``load`` by the harness (``registry.load_adapter``), if any.
    weights_file: Path | None = None

    def weights_sha256(self) -> str | None:
        """SHA-256 identifying the loaded weights, the one hash results are keyed by (None
        without weights). It must cover every file the weights come from: adapters whose
        weights are more than the file given to ``load`` (a separate encoder file, one named by
        an option) override this; the default is the SHA-256 of ``weights_file``."""
        return None if self.weights_file is None else file_sha256(self.weights_file)

    def describe(self) -> dict[str, Any]:
        """Inference protocol facts recorded with every result (resize, windows, templates...)."""
        return {}


class PromptAdapter(Adapter):
    """An adapter that embeds the class names with its network's text encoder: the vocabulary
    may be set before or after ``load``; ``embed_classes`` runs once both are there."""

    classes: list[list[str]] | None = None

    def set_vocabulary(self, classes: list[list[str]]) -> None:
        if not classes or any(not names for names in classes):
            raise UserError(f"{self.name}: every class needs at least one prompt name")
        self.classes = [list(names) for names in classes]
        if self.network is not None:
            self.embed_classes()

    def use_network(self, network: torch.nn.Module) -> None:
        """Adopt the loaded ``network`` (called by ``load``), embedding the classes if set."""
        self.network = network
        if self.classes is not None:
            self.embed_classes()

    def embed_classes(self) -> None:
        """Embed ``self.classes`` with ``self.network`` (both are set)."""
        raise NotImplementedError


def check_number_option(
    adapter: str, key: str, value: Any, minimum: float | None = None, integer: bool = False
) -> None:
    """A UserError unless option ``key`` of ``adapter`` is a number (an integer with
    ``integer``; never a boolean) and, when ``minimum`` is given, at least ``minimum``."""
    kinds = (int,) if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or (minimum is not None and value < minimum)
    ):
        what = "an integer" if integer else "a number"
        bound = "" if minimum is None else f" >= {minimum}"
        raise UserError(f"{adapter} option {key} must be {what}{bound}, got {value!r}")


def _json_values(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Options as they will read back from a result record (tuples become lists)."""
    try:
        return json.loads(json.dumps(options, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise UserError(
            f"adapter '{name}' options must be JSON values (text, numbers, true/false, null, "
            f"lists): {error}"
        ) from None


def weights_cache() -> Path:
    """Where weights are looked for and downloaded: ``$OVRSISBENCH_WEIGHTS`` or
    ``~/.cache/ovrsisbench``."""
    return Path(os.environ.get("OVRSISBENCH_WEIGHTS", Path.home() / ".cache" / "ovrsisbench"))
