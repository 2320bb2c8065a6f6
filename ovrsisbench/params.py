"""Parameter counts of a network, overall and per group (pretrained encoders vs head)."""

from __future__ import annotations

from typing import Any

import torch

from ovrsisbench.adapter import ENCODER_GROUPS, Adapter


def _count(parameters: list[torch.nn.Parameter]) -> dict[str, int]:
    return {
        "total": sum(p.numel() for p in parameters),
        "trainable": sum(p.numel() for p in parameters if p.requires_grad),
    }


def count_parameters(
    network: torch.nn.Module, encoders: dict[str, torch.nn.Module]
) -> dict[str, Any]:
    """``{"total", "trainable", "groups": {group: {"total", "trainable"}}}``.

    ``encoders`` maps group names (clip, remoteclip, dino) to submodules of ``network``;
    every parameter outside them belongs to ``head``. Shared parameters count once.
    """
    unknown = sorted(set(encoders) - set(ENCODER_GROUPS))
    if unknown:
        raise ValueError(f"unknown encoder groups {unknown}; use {', '.join(ENCODER_GROUPS)}")
    claimed: set[int] = set()
    groups: dict[str, dict[str, int]] = {}
    for group in ENCODER_GROUPS:
        if group in encoders:
            params = [p for p in encoders[group].parameters() if id(p) not in claimed]
            claimed.update(id(p) for p in params)
            groups[group] = _count(params)
    groups["head"] = _count([p for p in network.parameters() if id(p) not in claimed])
    return {**_count(list(network.parameters())), "groups": groups}


def adapter_parameters(adapter: Adapter, device: torch.device | str = "meta") -> dict[str, Any]:
    """Build ``adapter``'s network on ``device`` (meta: no memory, no weights) and count it."""
    network = adapter.build(device)
    return count_parameters(network, adapter.encoder_modules(network))
