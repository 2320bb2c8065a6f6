"""What the built-in adapters share about weights: reading a checkpoint file, one wording for
the files that cannot be loaded, telling the backbone from a checkpoint, and the order in which a
trainable adapter's ``load`` looks for weights (a checkpoint, the pretrained encoders with
``init=pretrained``, or the seeded tiny network)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar, TypeVar

import torch
from torch import Tensor, nn

from ovrsisbench.adapter import PromptAdapter
from ovrsisbench.errors import UserError
from ovrsisbench.io import state_dict_sha256
from ovrsisbench.models.common.checkpoint import (
    CheckpointMismatchError,
    CheckpointReadError,
    OriginalKeys,
    read_weights_file,
)

T = TypeVar("T")

#: CLIP image-tower width of the released ViT variants, to read the backbone off a checkpoint.
BACKBONE_OF_WIDTH = {768: "vit-b", 1024: "vit-l"}
#: The CLIP class embedding in the Cat-Seg family's checkpoints (detectron2 names).
CLASS_EMBEDDING_KEY = "sem_seg_head.predictor.clip_model.visual.class_embedding"


def weights_error(name: str, what: str, source: Path | str, error: Exception) -> UserError:
    """The UserError for ``error``, raised reading or loading ``source`` (a weights file or an
    open_clip tag) for ``what``: ``"{name}: cannot load {what}: {source}: {cause}"`` (a
    ``CheckpointReadError`` already starts with the file's path)."""
    where = "" if isinstance(error, CheckpointReadError) else f"{source}: "
    return UserError(f"{name}: cannot load {what}: {where}{error}")


def read_checkpoint(path: Path, name: str, keys: OriginalKeys) -> dict[str, Tensor]:
    """The state dict, in original key names (see ``OriginalKeys.unwrap``), of a weights file
    (``read_weights_file``): a UserError naming ``name`` (the adapter's) and the file if it
    cannot be read."""
    try:
        return dict(keys.unwrap(read_weights_file(path)))
    except CheckpointReadError as error:
        raise weights_error(name, "the weights", path, error) from None


def checkpoint_backbone(
    name: str,
    kind: str,
    state: Mapping[str, Tensor],
    path: Path,
    given: str | None,
    key: str = CLASS_EMBEDDING_KEY,
    backbones: Mapping[int, str] = BACKBONE_OF_WIDTH,
) -> str:
    """The backbone of a checkpoint, read from the last dimension of its ``key`` entry
    (``backbones``: width -> backbone), unless ``given`` (the ``backbone`` option) names one
    (``tiny`` included); both must agree. ``name`` (the adapter's) and ``kind`` (e.g. "an
    RSKT-Seg") word the errors."""
    if key not in state:
        raise UserError(f"{name}: {path} is not {kind} checkpoint (no {key})")
    width = state[key].shape[-1]
    found = backbones.get(width)
    backbone = given or found
    if backbone is None:
        known = ", ".join(f"{width} ({backbone})" for width, backbone in backbones.items())
        raise UserError(
            f"{name}: {path} has {key} of width {width}, not a released backbone's ({known}); "
            "name the backbone with -o backbone=..."
        )
    if found is not None and backbone != found:
        raise UserError(f"{name}: {path} is backbone={found}, but backbone={backbone} given")
    return backbone


class CheckpointAdapter(PromptAdapter):
    """An adapter whose network comes from a checkpoint file, from its pretrained encoders
    (option ``init=pretrained``: the start of training) or, with ``backbone=tiny``, from
    random weights seeded by the ``seed`` option. Subclasses implement the three steps."""

    #: What ``load`` says when a full-size backbone has neither weights nor ``init=pretrained``.
    no_weights_message: ClassVar[str] = (
        "needs a trained checkpoint: --weights FILE (the authors' release or one trained with "
        "ovrsisbench), or -o init=pretrained to start training from the pretrained encoders; "
        "-o backbone=tiny runs a small random model instead"
    )
    _sha256: str | None = None

    def load(self, weights: Path | None, device: torch.device | str) -> None:
        if weights is not None:
            network = self._from_checkpoint(Path(weights))  # sets _sha256 (the file's)
        elif self.options["init"] == "pretrained":
            network = self._pretrained()
            self._sha256 = state_dict_sha256(network)
        elif self.options["backbone"] == "tiny":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.options["seed"])
                network = self._tiny_network()
            self._sha256 = state_dict_sha256(network)
        else:
            raise UserError(f"{self.name} {self.no_weights_message}")
        self.use_network(network.to(device).eval())

    def _from_checkpoint(self, path: Path) -> nn.Module:
        """The network with the weights of ``path``; sets ``_sha256`` (the file's, or a
        combination when other files join it)."""
        raise NotImplementedError

    def _pretrained(self) -> nn.Module:
        """The network with its pretrained encoders, the new parts random."""
        raise NotImplementedError

    def _tiny_network(self) -> nn.Module:
        """The tiny network (called with torch's RNG seeded by ``seed``)."""
        raise NotImplementedError

    def strict_load(self, load: Callable[[], T], path: Path, backbone: str) -> T:
        """``load()``: a strict load of ``path``'s weights; a mismatch becomes a UserError
        naming the file and the backbone."""
        try:
            return load()
        except CheckpointMismatchError as error:
            raise UserError(f"{self.name}: {path} does not fit {backbone}: {error}") from None

    def training_network(self, classes: list[list[str]]) -> nn.Module:
        """The loaded network under its training rule (``set_trainable``), for a recipe on
        ``classes`` (every class needs a prompt name)."""
        if self.network is None:
            raise RuntimeError(f"{self.name}: call load() before training_recipe()")
        if not classes or any(not names for names in classes):
            raise UserError(f"{self.name}: every training class needs at least one prompt name")
        self.network.set_trainable()
        return self.network

    def weights_sha256(self) -> str | None:
        return self._sha256
