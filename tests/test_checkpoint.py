"""Weights files are read in one place and loaded by one strict loader
(``ovrsisbench.models.common.checkpoint``): one error vocabulary naming the file, the same through
every adapter, and strict-load messages in the checkpoint's own key names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from ovrsisbench.adapters.weights import CLASS_EMBEDDING_KEY
from ovrsisbench.errors import UserError
from ovrsisbench.models.common.checkpoint import (
    CheckpointMismatchError,
    CheckpointReadError,
    OriginalKeys,
    load_checkpoint,
    read_weights_file,
)
from ovrsisbench.registry import create_adapter

ROOT = Path(__file__).resolve().parents[1]
READER = "models/common/checkpoint.py"


# -- one reader ---------------------------------------------------------------------------------
def _reads_weights(node: ast.AST) -> bool:
    """``torch.load(...)``, ``load_file(...)`` or an import from safetensors."""
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] == "safetensors"
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute):
        torch_load = func.attr == "load" and isinstance(func.value, ast.Name)
        return func.attr == "load_file" or (torch_load and func.value.id == "torch")
    return isinstance(func, ast.Name) and func.id == "load_file"


def test_weights_files_are_read_only_by_the_one_reader():
    readers = {
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for folder in ("adapters", "models")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if _reads_weights(node)
    }
    assert readers, "the reader itself must be found"
    assert {reader.split(":")[0] for reader in readers} == {READER}, sorted(readers)


# -- one error vocabulary -----------------------------------------------------------------------
def _truncated(path: Path) -> None:
    torch.save({"weight": torch.zeros(64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"certainly not a checkpoint " * 8)


def _unsafe_class(path: Path) -> None:
    torch.save({"weight": torch.zeros(1), "where": Path("elsewhere")}, path)


def _a_list(path: Path) -> None:
    torch.save([torch.zeros(1)], path)


#: kind -> (file suffix, how to write it (None: no file), what the message says after the path)
BAD_FILES = {
    "missing": (".pth", None, "does not exist"),
    "truncated": (".pth", _truncated, "unreadable: damaged, or not a file saved by torch.save"),
    "garbage": (".pth", _garbage, "unreadable: damaged, or not a file saved by torch.save"),
    "unsafe class": (".pth", _unsafe_class, "refused by weights_only: it pickles pathlib."),
    "garbage safetensors": (
        ".safetensors",
        _garbage,
        "unreadable: damaged, or not a safetensors file",
    ),
    "a list": (".pth", _a_list, "holds no state dict (a list)"),
}


def _bad_file(folder: Path, kind: str, name: str = "weights") -> tuple[Path, str]:
    suffix, write, says = BAD_FILES[kind]
    path = folder / f"{name}{suffix}"
    if write is not None:
        write(path)
    return path, says


@pytest.mark.parametrize("kind", BAD_FILES)
def test_the_reader_names_the_file_and_what_is_wrong(tmp_path, kind):
    path, says = _bad_file(tmp_path, kind)
    with pytest.raises(CheckpointReadError) as error:
        read_weights_file(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {says}"), message
    assert "\n" not in message


def test_the_reader_reads_both_formats_and_allows_only_the_named_classes(tmp_path):
    from argparse import Namespace

    from safetensors.torch import save_file

    weight = torch.arange(4.0)
    save_file({"weight": weight}, str(tmp_path / "w.safetensors"))
    torch.save({"model": {"weight": weight}, "args": Namespace(arch="vit")}, tmp_path / "w.pth")
    assert torch.equal(read_weights_file(tmp_path / "w.safetensors")["weight"], weight)
    with pytest.raises(CheckpointReadError, match="it pickles argparse.Namespace"):
        read_weights_file(tmp_path / "w.pth")
    checkpoint = read_weights_file(tmp_path / "w.pth", allowed_globals=(Namespace,))
    assert torch.equal(checkpoint["model"]["weight"], weight)


def _rsktseg_weights(path: Path, _: Path) -> None:
    create_adapter("rsktseg").load(path, "cpu")


def _segearth_upsampler(path: Path, _: Path) -> None:
    create_adapter("segearth_ov", backbone="tiny").load(path, "cpu")


def _gsnet_dino(path: Path, folder: Path) -> None:
    """A GSNet checkpoint without DINO weights: they come from the ``rsib_weights`` file."""
    checkpoint = folder / "model_0029999.pth"
    torch.save({"model": {CLASS_EMBEDDING_KEY: torch.zeros(32)}}, checkpoint)
    create_adapter("gsnet", backbone="tiny", rsib_weights=str(path)).load(checkpoint, "cpu")


#: adapter -> how a file reaches its reader (segearth_ov and gsnet check existence themselves).
ADAPTER_READS = {
    "rsktseg": (_rsktseg_weights, BAD_FILES),
    "segearth_ov": (_segearth_upsampler, [kind for kind in BAD_FILES if kind != "missing"]),
    "gsnet": (_gsnet_dino, [kind for kind in BAD_FILES if kind != "missing"]),
}


@pytest.mark.parametrize(
    ("adapter", "kind"),
    [(adapter, kind) for adapter, (_, kinds) in ADAPTER_READS.items() for kind in kinds],
)
def test_adapters_word_a_bad_weights_file_alike_naming_it_once(tmp_path, adapter, kind):
    load, _ = ADAPTER_READS[adapter]
    path, says = _bad_file(tmp_path, kind, name="bad-weights")
    with pytest.raises(UserError) as error:
        load(path, tmp_path)
    message = str(error.value)
    assert message.startswith(f"{adapter}: cannot load "), message
    assert f"{path}: {says}" in message and message.count(str(path)) == 1, message


# -- one strict loader --------------------------------------------------------------------------
class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 2)
        self.register_buffer("scale", torch.ones(3))


#: The original names ``predictor.head.*`` of our ``proj.*``.
ORIGINAL = OriginalKeys((("predictor.head.", "proj."),))


def _original_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {ORIGINAL.to_original(key): value.clone() for key, value in model.state_dict().items()}


def test_the_strict_loader_renames_and_returns_the_unused_keys():
    torch.manual_seed(0)
    source, target = _Head(), _Head()
    state = {**_original_state(source), "criterion.empty_weight": torch.ones(4)}
    assert load_checkpoint(target, state, ORIGINAL, unused=["criterion.empty_weight"]) == [
        "criterion.empty_weight"
    ]
    assert ORIGINAL.load(target, {"model": state}, ["criterion.empty_weight"]) == [
        "criterion.empty_weight"
    ]
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_the_strict_loader_names_bad_keys_as_the_checkpoint_does_and_changes_nothing():
    model = _Head()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    state = _original_state(_Head())
    del state["predictor.head.bias"]
    state["predictor.head.extra"] = torch.zeros(1)
    state["predictor.head.weight"] = torch.zeros(3, 4)
    state["scale"] = 3
    expected = (
        "missing keys: predictor.head.bias; unexpected keys: predictor.head.extra; "
        "shape mismatches (checkpoint != model): predictor.head.weight (3, 4) != (2, 4), "
        "scale int != (3,)"
    )
    for load in (
        lambda: load_checkpoint(model, state, ORIGINAL),
        lambda: ORIGINAL.load(model, {"model": state}),
    ):
        with pytest.raises(CheckpointMismatchError) as error:
            load()
        assert str(error.value) == expected
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_the_strict_loader_lists_at_most_eight_keys_and_counts_the_rest():
    """Also without renames (CLIP, RSIB, SimFeatUp files): every list is cut the same way."""
    state = {**_Head().state_dict(), **{f"extra.{i:02d}": torch.zeros(1) for i in range(12)}}
    with pytest.raises(CheckpointMismatchError) as error:
        load_checkpoint(_Head(), state)
    shown = ", ".join(f"extra.{i:02d}" for i in range(8))
    assert str(error.value) == f"unexpected keys: {shown}, ... (12 in all)"
