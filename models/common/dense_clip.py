"""Dense (per-patch) features from an open_clip ViT, and building / loading such models strictly.

``DenseCLIP`` wraps an ``open_clip.CLIP`` with a ViT image tower. It runs blocks ``1..L-1`` as
usual and replaces the last block by one of the dense variants in ``DENSE_MODES``; the result
goes through ``ln_post`` and ``proj`` for every token; the patch tokens come back as a
(B, D, h, w) map in the joint image-text space, the CLS token's as a (B, D) vector. Raw
residual-stream tokens of earlier blocks can be returned alongside (the guidance features of the
Cat-Seg family).

Positional embeddings are resized bicubically (``align_corners=False``) from the pretrained grid
to the input's grid (or by the ``resize_pos`` function a ``DenseCLIP`` is given); inputs whose
sides are not multiples of the patch size are zero-padded at the bottom/right (as mmseg's
"corner" patch padding does), so the grid is ``ceil(H/p) x ceil(W/p)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import load_checkpoint, read_weights_file

#: OpenAI CLIP pixel statistics (RGB, for images scaled to [0, 1]).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: A tiny random CLIP (ViT 2x32, text 2x32) for tests and the synthetic demo.
TINY_VIT_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

#: Non-tensor entries of OpenAI's original checkpoints, not parameters of the model.
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")


# -- building and loading ---------------------------------------------------------------------
def model_config(arch: str | dict[str, Any]) -> dict[str, Any]:
    """The open_clip config of ``arch`` (a built-in model name or a config dict), as a copy."""
    config = arch if isinstance(arch, dict) else open_clip.get_model_config(arch)
    if config is None:
        raise ValueError(f"unknown open_clip model '{arch}'")
    config = copy.deepcopy(config)
    unsupported = {"custom_text", "multimodal_cfg"} & set(config)
    unsupported |= {"timm_model_name"} & set(config.get("vision_cfg", {}))
    unsupported |= {"hf_model_name"} & set(config.get("text_cfg", {}))
    if unsupported:
        raise ValueError(f"only plain open_clip CLIP ViTs are supported, not {sorted(unsupported)}")
    return config


def resolve_pretrained(
    arch: str | dict[str, Any], pretrained: str | Path | None, cache_dir: str | Path | None = None
) -> Path | None:
    """The checkpoint file for ``pretrained``: a local file, or an open_clip tag (downloaded by
    open_clip into ``cache_dir``, default its own cache)."""
    if pretrained is None:
        return None
    if Path(pretrained).is_file():
        return Path(pretrained)
    name = arch if isinstance(arch, str) else ""
    tag_config = open_clip.get_pretrained_cfg(name, str(pretrained))
    if not tag_config:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ValueError(
            f"'{pretrained}' is neither a file nor a pretrained tag of {name or 'this config'} "
            f"(tags: {known})"
        )
    cache = None if cache_dir is None else str(cache_dir)
    return Path(open_clip.download_pretrained(tag_config, cache_dir=cache))


def read_clip_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The CLIP state dict in a weights file (read by ``read_weights_file``).

    Accepts open_clip and OpenAI-format state dicts (the same key names; OpenAI's metadata
    entries are dropped), optionally wrapped in ``{"state_dict": ...}`` or ``module.`` prefixed.
    TorchScript archives (OpenAI's original ``.pt`` downloads) are refused: they cannot be read
    with ``weights_only=True``; use the open_clip tag instead, which fetches a plain state dict.
    """
    state = read_weights_file(path)
    if isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return {key: value for key, value in state.items() if key not in OPENAI_METADATA_KEYS}


def build_clip(
    arch: str | dict[str, Any],
    pretrained: str | Path | None = None,
    device: torch.device | str = "cpu",
    quick_gelu: bool | None = None,
) -> open_clip.CLIP:
    """Build an open_clip CLIP ViT, with weights from ``pretrained`` (tag or file) or random.

    ``quick_gelu=None`` takes the setting of the pretrained tag, else of the config (OpenAI
    weights need ``True``). With ``pretrained=None`` the weights are open_clip's random
    initialisation (seed torch's RNG first for reproducibility); ``device="meta"`` builds
    without memory.
    """
    config = model_config(arch)
    if quick_gelu is None and isinstance(arch, str) and pretrained is not None:
        quick_gelu = open_clip.get_pretrained_cfg(arch, str(pretrained)).get("quick_gelu")
    if quick_gelu is not None:
        config["quick_gelu"] = quick_gelu
    if torch.device(device).type == "meta":
        if pretrained is not None:
            raise ValueError("weights cannot be loaded onto the meta device")
        with torch.device("meta"):
            return open_clip.CLIP(**config).eval()
    model = open_clip.CLIP(**config)
    checkpoint = resolve_pretrained(arch, pretrained)
    if checkpoint is not None:
        load_checkpoint(model, read_clip_state_dict(checkpoint))
    return model.to(device).eval()


# -- dense forward ----------------------------------------------------------------------------
def interpolate_pos_embed(pos: Tensor, grid: Sequence[int], size: Sequence[int]) -> Tensor:
    """Resize a (1 + gh*gw, C) positional embedding to a (h, w) grid, bicubic; CLS kept."""
    if tuple(grid) == tuple(size):
        return pos
    patch = pos[1:].reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2).float()
    patch = F.interpolate(patch, size=tuple(size), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], patch.flatten(2)[0].T.to(pos.dtype)])


def run_block(block: nn.Module, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """Apply an open_clip residual block to batch-first tokens, whatever its attention layout,
    with an optional additive attention mask."""
    if block.attn.batch_first:
        return block(x, attn_mask=attn_mask)
    return block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)


def value_path(block: nn.Module, x: Tensor) -> Tensor:
    """``ls_1(out_proj(v))`` with ``v`` the value projection of ``ln_1(x)``: attention skipped."""
    attn = block.attn
    width = x.shape[-1]
    bias = None if attn.in_proj_bias is None else attn.in_proj_bias[2 * width :]
    value = F.linear(block.ln_1(x), attn.in_proj_weight[2 * width :], bias)
    return block.ls_1(attn.out_proj(value))


def _with_mlp(block: nn.Module, x: Tensor) -> Tensor:
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def segearth_attention(block: nn.Module, x: Tensor) -> Tensor:
    """SegEarth-OV's last block (``model_type='SegEarth'``, ``ignore_residual=True``):
    ``out_proj(A @ v)`` per head, ``A = softmax(q q^T s) + softmax(k k^T s) + softmax(v v^T s)``
    with ``s = head_dim ** -0.5`` and q, k, v from ``ln_1(x)``; no residual, no MLP."""
    attn = block.attn
    batch, length, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.reshape(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    scale = (width // heads) ** -0.5
    weights = sum(torch.softmax(a @ a.transpose(-2, -1) * scale, dim=-1) for a in (q, k, v))
    return attn.out_proj((weights @ v).transpose(1, 2).reshape(batch, length, width))


#: Dense replacements of the last block, applied to its input tokens (B, 1 + h*w, C).
DENSE_MODES: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    # MaskCLIP's released code: each token keeps its own residual and the MLP.
    "maskclip": lambda block, x: _with_mlp(block, x + value_path(block, x)),
    # The value path alone, no residual, no MLP (SegEarth-OV code's "MaskCLIP", ignore_residual).
    "value": value_path,
    # Cat-Seg: the CLS token's input is the residual of every token, then the MLP.
    "catseg": lambda block, x: _with_mlp(block, x[:, :1] + value_path(block, x)),
    # SegEarth-OV: q-q, k-k and v-v self-attention summed, no residual, no MLP.
    "segearth": segearth_attention,
}

PosResize = Callable[[Tensor, Sequence[int], Sequence[int]], Tensor]


def embed_tokens(
    visual: nn.Module, images: Tensor, resize_pos: PosResize = interpolate_pos_embed
) -> tuple[Tensor, tuple[int, int]]:
    """Tokens (B, 1 + h*w, C) after ``ln_pre`` of an open_clip ViT image tower, with the CLS
    token and the positional embedding resized to the grid (h, w) by ``resize_pos(pos,
    pretrained grid, grid)``; sides that are not multiples of the patch are zero-padded at the
    bottom/right."""
    ph, pw = visual.patch_size
    images = F.pad(images, (0, -images.shape[-1] % pw, 0, -images.shape[-2] % ph))
    x = visual.conv1(images.to(visual.conv1.weight.dtype))
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    pos = resize_pos(visual.positional_embedding, visual.grid_size, grid)
    x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
    return visual.ln_pre(x), grid


def tokens_to_map(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, 1 + h*w, C) tokens -> (B, C, h, w), CLS dropped."""
    return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


def run_blocks(
    visual: nn.Module,
    images: Tensor,
    blocks: Sequence[int],
    allowed: int,
    stop: int,
    resize_pos: PosResize = interpolate_pos_embed,
) -> tuple[Tensor, tuple[int, int], list[Tensor]]:
    """Run blocks ``0..stop-1`` of an image tower; return the tokens, the grid and the raw
    outputs (B, C, h, w) of ``blocks`` (each must be below ``allowed``)."""
    for index in blocks:
        if not 0 <= index < allowed:
            raise ValueError(f"block index {index} is outside 0..{allowed - 1}")
    x, grid = embed_tokens(visual, images, resize_pos)
    saved = {}
    for index, block in enumerate(visual.transformer.resblocks[:stop]):
        x = run_block(block, x)
        if index in blocks:
            saved[index] = tokens_to_map(x, grid)
    return x, grid, [saved[index] for index in blocks]


@dataclass
class DenseFeatures:
    """Dense last-block features (B, D, h, w), the requested raw block outputs (B, C, h, w) and
    the CLS token's output of the dense last block (B, D), after ``ln_post`` and ``proj``."""

    dense: Tensor
    blocks: list[Tensor]
    cls: Tensor


class DenseCLIP(nn.Module):
    """An open_clip CLIP ViT that yields per-patch features (see the module docstring)."""

    def __init__(
        self, model: open_clip.CLIP, resize_pos: PosResize = interpolate_pos_embed
    ) -> None:
        super().__init__()
        if not hasattr(model.visual, "transformer"):
            raise ValueError("DenseCLIP needs an open_clip ViT image tower")
        self.model = model
        self.resize_pos = resize_pos

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.model.visual.patch_size)

    @property
    def num_blocks(self) -> int:
        return len(self.model.visual.transformer.resblocks)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Unnormalised text embeddings (T, D) of token ids (T, context_length)."""
        return self.model.encode_text(tokens)

    def forward(
        self, images: Tensor, mode: str = "maskclip", blocks: Sequence[int] = ()
    ) -> DenseFeatures:
        """Dense features of CLIP-normalised ``images`` (B, 3, H, W) and raw outputs of ``blocks``
        (0-based indices of blocks before the last)."""
        if mode not in DENSE_MODES:
            raise ValueError(f"unknown dense mode '{mode}' (known: {', '.join(DENSE_MODES)})")
        last = self.num_blocks - 1
        visual = self.model.visual
        x, grid, saved = run_blocks(visual, images, blocks, last, last, self.resize_pos)
        x = visual.ln_post(DENSE_MODES[mode](visual.transformer.resblocks[-1], x)) @ visual.proj
        return DenseFeatures(tokens_to_map(x, grid), saved, x[:, 0])

    def encode_dense(self, images: Tensor, mode: str = "maskclip") -> Tensor:
        """Dense features (B, D, ceil(H/p), ceil(W/p)) of CLIP-normalised ``images``."""
        return self(images, mode).dense

    def intermediate(self, images: Tensor, blocks: Sequence[int]) -> list[Tensor]:
        """Raw residual-stream outputs (B, C, h, w) of ``blocks`` (0-based), CLS dropped."""
        visual = self.model.visual
        stop = max(blocks, default=-1) + 1
        return run_blocks(visual, images, blocks, self.num_blocks, stop, self.resize_pos)[2]
