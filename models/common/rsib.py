"""The DINO "RSIB" image encoder of GSNet / RSKT-Seg (DINO v1 ViT-B/8) on timm.

Architecture (spec rsktseg.md 3): patch 8, width 768, depth 12, 12 heads, qkv bias, LayerNorm
eps 1e-6, exact GELU, a class token, built for 224 px (``pos_embed`` [1, 785, 768] = 28x28 + 1)
and no head. timm's ``VisionTransformer`` with these settings and ``num_classes=0`` has exactly
DINO's state-dict keys (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
``blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2.*``, ``norm.*``): its ``fc_norm``
and ``head`` are ``nn.Identity`` and hold no parameters.

``rsib_intermediate`` returns DINO's ``get_intermediate_layers``: the output of each requested
block passed through the final ``norm``, CLS dropped, as (B, 768, H/8, W/8) maps.

Positional embedding. DINO v1 resizes the 28x28 grid bicubically (``align_corners=False``) with a
*scale factor*, not a target size: ``scale = (g + 0.1) / 28`` per side for a g-token side (the
+0.1 makes ``floor(28 * scale) == g`` despite rounding). GSNet/RSKT-Seg's copy hard-codes
``scale_factor = 1.717857142857143`` (= 48.1 / 28, a 48x48 grid from 384 px). PyTorch maps
output to input coordinates with ``1 / scale`` when a scale factor is given, which differs
slightly from ``size=(48, 48)`` (ratio 28/48), so for parity the scale factor is used:
``rsib_pos_embed`` applies ``(g + 0.1) / 28`` per side, which for g = 48 is exactly the
hard-coded constant (``RSIB_SCALE_FACTOR``), and for other grids is what DINO v1 itself does.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from .checkpoint import load_checkpoint, read_weights_file

#: DINO v1 ``vit_base(patch_size=8, num_classes=0)``.
RSIB_CONFIG: dict[str, Any] = {
    "img_size": 224,
    "patch_size": 8,
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
}

#: A tiny RSIB for tests: same 224 px / patch 8 (28x28 positional grid), width 32, depth 4.
TINY_RSIB_CONFIG: dict[str, Any] = {**RSIB_CONFIG, "embed_dim": 32, "depth": 4, "num_heads": 2}

#: The RSIB weights file (GSNet's release, used by GSNet and RSKT-Seg) and where to get it.
RSIB_FILE = "RSIB.pth"
RSIB_SOURCE = (
    "Google Drive id 1kH0wDM_Hl4sEQJG8JjILCo0RTx65X7zV (GSNet's 'Specialist RSI Backbone')"
)

#: The bicubic scale factor hard-coded in GSNet/RSKT-Seg's DINO copy (48.1 / 28: 28 -> 48).
RSIB_SCALE_FACTOR = 1.717857142857143

#: The DINO blocks RSKT-Seg reads (0-based).
RSIB_INDICES = (3, 7, 11)

#: Prefixes stripped from checkpoint keys (DDP and DINO's multi-crop wrapper).
RSIB_STRIP_PREFIXES = ("module.", "backbone.")

#: The one class besides tensors a DINO training checkpoint pickles: its run's arguments.
DINO_ALLOWED_GLOBALS = (argparse.Namespace,)

#: Keys of DINO's projection head in a training checkpoint; the backbone cannot hold them.
DINO_HEAD_PREFIX = "head."


def build_rsib(
    config: Mapping[str, Any] | None = None, device: torch.device | str = "cpu"
) -> nn.Module:
    """A random DINO v1 ViT (``RSIB_CONFIG`` by default) as a timm ``VisionTransformer`` with no
    head; ``device="meta"`` builds without memory."""
    kwargs = {**(RSIB_CONFIG if config is None else config)}
    kwargs.update(num_classes=0, class_token=True, global_pool="token")
    kwargs.setdefault("norm_layer", partial(nn.LayerNorm, eps=1e-6))
    with torch.device(device):
        model = VisionTransformer(**kwargs)
    return model.eval()


def rsib_pos_embed(pos_embed: Tensor, grid: Sequence[int]) -> Tensor:
    """DINO v1's positional embedding (1, 1 + N, C) for a (gh, gw) patch grid: unchanged when
    the grid is the stored square one, else bicubic with ``scale_factor = (g + 0.1) / sqrt(N)``
    per side (see the module docstring); CLS entry kept."""
    side = math.isqrt(pos_embed.shape[1] - 1)
    if side * side != pos_embed.shape[1] - 1:
        raise ValueError(f"positional embedding {tuple(pos_embed.shape)} is not a square grid")
    gh, gw = grid
    if (gh, gw) == (side, side):
        return pos_embed
    scale = tuple(RSIB_SCALE_FACTOR if (g, side) == (48, 28) else (g + 0.1) / side for g in grid)
    patch = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, scale_factor=scale, mode="bicubic", align_corners=False)
    if tuple(patch.shape[-2:]) != (gh, gw):
        raise AssertionError(f"interpolated grid {tuple(patch.shape[-2:])} != {(gh, gw)}")
    return torch.cat([pos_embed[:, :1], patch.flatten(2).transpose(1, 2)], dim=1)


def rsib_intermediate(
    model: nn.Module, images: Tensor, indices: Sequence[int] = RSIB_INDICES
) -> list[Tensor]:
    """DINO ``get_intermediate_layers`` outputs of ``indices`` (0-based blocks): each block output
    through the final ``norm``, CLS dropped, as (B, C, H/p, W/p) maps; runs blocks up to
    ``max(indices)`` only. RSKT-Seg: 384x384 input -> three (B, 768, 48, 48) maps."""
    indices = tuple(indices)
    for index in indices:
        if not 0 <= index < len(model.blocks):
            raise ValueError(f"block index {index} is outside 0..{len(model.blocks) - 1}")
    proj = model.patch_embed.proj
    ph, pw = proj.stride
    if images.shape[-2] % ph or images.shape[-1] % pw:
        raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of {ph}x{pw}")
    x = proj(images.to(proj.weight.dtype))
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = model.pos_drop(x + rsib_pos_embed(model.pos_embed, grid))
    saved: dict[int, Tensor] = {}
    for index, block in enumerate(model.blocks[: max(indices, default=-1) + 1]):
        x = block(x)
        if index in indices:
            out = model.norm(x)[:, 1:]
            saved[index] = out.transpose(1, 2).reshape(out.shape[0], -1, *grid)
    return [saved[index] for index in indices]


def rsib_state_from_checkpoint(
    path_or_state: str | Path | Mapping[str, Any],
) -> tuple[dict[str, Tensor], list[str]]:
    """The backbone state dict of an RSIB/DINO checkpoint, as RSKT-Seg's ``BuildRSIB`` reads it:
    the ``teacher`` entry if present, ``module.`` and ``backbone.`` prefixes stripped. DINO's
    projection-head keys (``head.*``, present in DINO training checkpoints; the official
    ``strict=False`` load drops them silently) are removed and returned as the second item."""
    state = path_or_state
    if isinstance(path_or_state, (str, Path)):
        state = read_weights_file(path_or_state, allowed_globals=DINO_ALLOWED_GLOBALS)
    if not isinstance(state, Mapping):
        raise ValueError("the RSIB checkpoint does not hold a state dict")
    if isinstance(state.get("teacher"), Mapping):
        state = state["teacher"]
    cleaned: dict[str, Tensor] = {}
    for key, value in state.items():
        while key.startswith(RSIB_STRIP_PREFIXES):
            key = key.removeprefix("module.").removeprefix("backbone.")
        cleaned[key] = value
    head = [key for key in cleaned if key.startswith(DINO_HEAD_PREFIX)]
    return {key: value for key, value in cleaned.items() if key not in head}, head


def load_rsib_checkpoint(
    path_or_state: str | Path | Mapping[str, Any],
    model: nn.Module | None = None,
) -> nn.Module:
    """Load an RSIB checkpoint (file or dict; see ``rsib_state_from_checkpoint``) STRICTLY into
    ``model`` (default: a new ``build_rsib()``); raises ``CheckpointMismatchError`` naming every
    missing, unexpected or mis-shaped key. Returns the model (eval mode, fp32).

    Files are read by ``read_weights_file`` (``weights_only``; the ``argparse.Namespace`` that
    DINO training checkpoints also hold is the one class allowed).
    """
    state, _ = rsib_state_from_checkpoint(path_or_state)
    model = build_rsib() if model is None else model
    floats = {
        key: value.float() if isinstance(value, Tensor) and value.is_floating_point() else value
        for key, value in state.items()
    }
    load_checkpoint(model, floats)
    return model.float().eval()
