"""Training checkpoints on disk: safetensors for tensors, JSON for the rest, every file checked
against the SHA-256 its JSON records; never pickle.

Files of iteration ``i`` in the output folder::

    checkpoint-<i:07d>.safetensors        the network's state dict
    checkpoint-<i:07d>.json               config (written last: its presence marks the set done)
    checkpoint-<i:07d>.state.safetensors  optimizer state tensors ("optimizer.<id>.<name>")
    checkpoint-<i:07d>.state.json         param groups, scalars, the trainer's progress, checksum
    final.safetensors, final.json         the trained network and its config, at the end
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from ovrsisbench.errors import UserError
from ovrsisbench.io import atomic_write_bytes, atomic_write_text

CHECKPOINT_FORMAT = "ovrsisbench.train-checkpoint/1"
FINAL = "final"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{7})\.json$")


def checkpoint_stem(iteration: int) -> str:
    return f"checkpoint-{iteration:07d}"


def latest_checkpoint(out: Path) -> tuple[int, Path] | None:
    """(iteration, config JSON path) of the newest complete checkpoint in ``out``, if any."""
    if not Path(out).is_dir():
        return None
    found = [
        (int(m.group(1)), p) for p in Path(out).iterdir() if (m := _CHECKPOINT_RE.match(p.name))
    ]
    return max(found) if found else None


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    # own CPU copies: safetensors refuses tensors that share memory (tied weights)
    return save({k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()})


def _json_text(value: Any) -> str:
    return json.dumps(value, indent=2, default=str) + "\n"


def read_json(path: Path) -> dict[str, Any]:
    """A checkpoint JSON object; UserError naming ``path`` if it is missing or corrupted."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing (the checkpoint is incomplete)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: corrupted checkpoint file ({_one_line(error)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: corrupted checkpoint file (not a JSON object)")
    return data


def read_tensors(path: Path, sha256: Any, record: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (CPU); UserError naming ``path`` if it is missing,
    unreadable or differs from ``sha256``, the checksum that the JSON file ``record`` holds
    (naming ``record`` if it holds none)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: missing (the checkpoint is incomplete)") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read checkpoint file ({_one_line(error)})") from None
    if not isinstance(sha256, str):
        raise UserError(f"{record}: corrupted checkpoint file (no SHA-256 of {path.name})")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise UserError(f"{path}: corrupted checkpoint file (its SHA-256 differs from the record)")
    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise UserError(f"{path}: corrupted checkpoint file ({_one_line(error)})") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _optimizer_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer's state: tensors keyed ``optimizer.<param id>.<name>``, and the rest."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{name}"] = value
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "state": scalars}


def _load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict, where: Path
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        prefix, param_id, name = key.split(".", 2)
        if prefix != "optimizer":
            raise UserError(f"{where}: unexpected tensor {key!r}")
        state.setdefault(int(param_id), {})[name] = tensor
    for param_id, entries in info.get("state", {}).items():
        state.setdefault(int(param_id), {}).update(entries)
    groups = [dict(group) for group in info["param_groups"]]
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    current = optimizer.param_groups
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in current]:
        raise UserError(f"{where}: its parameter groups differ from the model's recipe")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as error:
        raise UserError(f"{where}: does not fit the optimizer ({_one_line(error)})") from None


def write_checkpoint(
    out: Path,
    iteration: int,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    progress: dict[str, Any],
    final: bool,
) -> None:
    """Write checkpoint ``iteration`` of ``module`` and ``optimizer`` into ``out`` (the state
    first, the config JSON last, each file atomically), then delete older checkpoints; with
    ``final`` also final.safetensors + final.json. ``config`` gets the format, iteration and
    the network file's checksum; ``progress`` (JSON) is stored with the optimizer state."""
    stem = out / checkpoint_stem(iteration)
    tensors, info = _optimizer_files(optimizer)
    state_bytes = _tensor_bytes(tensors)
    model_bytes = _tensor_bytes(module.state_dict())
    atomic_write_bytes(Path(f"{stem}.state.safetensors"), state_bytes)
    state = {
        "format": CHECKPOINT_FORMAT,
        "iteration": iteration,
        "sha256": hashlib.sha256(state_bytes).hexdigest(),
        "optimizer": info,
        "progress": progress,
    }
    atomic_write_text(Path(f"{stem}.state.json"), _json_text(state))
    atomic_write_bytes(stem.with_suffix(".safetensors"), model_bytes)
    config = {
        "format": CHECKPOINT_FORMAT,
        "iteration": iteration,
        **config,
        "model_file": {"sha256": hashlib.sha256(model_bytes).hexdigest()},
    }
    atomic_write_text(stem.with_suffix(".json"), _json_text(config))
    for path in out.glob("checkpoint-*"):
        if not path.name.startswith(stem.name + "."):
            path.unlink(missing_ok=True)
    if final:
        atomic_write_bytes(out / f"{FINAL}.safetensors", model_bytes)
        atomic_write_text(out / f"{FINAL}.json", _json_text(config))


def load_checkpoint(
    config_path: Path,
    config: dict[str, Any],
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    """Load the checkpoint whose config (read from ``config_path``) is ``config`` into
    ``module`` and ``optimizer``; return its stored progress. UserError naming the file at
    fault if anything is missing, damaged or does not fit."""
    iteration = config.get("iteration")
    if config.get("format") != CHECKPOINT_FORMAT or not isinstance(iteration, int):
        raise UserError(f"{config_path}: not a checkpoint of this trainer")
    stem = config_path.parent / checkpoint_stem(iteration)
    if stem.with_suffix(".json") != config_path:
        raise UserError(f"{config_path}: holds iteration {iteration}, not its own")
    model_sha = (config.get("model_file") or {}).get("sha256")
    tensors = read_tensors(stem.with_suffix(".safetensors"), model_sha, config_path)
    try:
        module.load_state_dict(tensors)
    except RuntimeError as error:
        raise UserError(
            f"{stem}.safetensors: does not fit the model ({_one_line(error)})"
        ) from None
    state_json = Path(f"{stem}.state.json")
    state = read_json(state_json)
    if state.get("format") != CHECKPOINT_FORMAT or state.get("iteration") != iteration:
        raise UserError(f"{state_json}: not the optimizer state of iteration {iteration}")
    state_tensors = read_tensors(Path(f"{stem}.state.safetensors"), state.get("sha256"), state_json)
    try:
        _load_optimizer(optimizer, state_tensors, state["optimizer"], state_json)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as error:
        raise UserError(f"{state_json}: corrupted checkpoint file ({error!r})") from None
    progress = state.get("progress")
    if not isinstance(progress, dict):
        raise UserError(f"{state_json}: corrupted checkpoint file (no progress)")
    return progress


def weights_origin(path: Path, sha256: str) -> dict[str, Any]:
    """Where the weights file ``path`` (whose hash is ``sha256``) comes from, for result records:
    its file name and, when it is the network file of an ``ovrsisbench train`` checkpoint (the
    JSON beside it names this hash), the training run (its folder's name), its protocol and
    iteration."""
    origin: dict[str, Any] = {"file": Path(path).name}
    try:
        config = json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return origin
    model_file = config.get("model_file") if isinstance(config, dict) else None
    if (
        isinstance(model_file, dict)
        and model_file.get("sha256") == sha256
        and config.get("format") == CHECKPOINT_FORMAT
    ):
        origin["training_run"] = Path(path).resolve().parent.name
        origin["protocol"] = config.get("protocol")
        origin["iteration"] = config.get("iteration")
    return origin
