"""OpenAI CLIP and RemoteCLIP encoders as the Cat-Seg family (RSKT-Seg) runs them.

Both are open_clip ViTs built with QuickGELU (the OpenAI architecture) and random weights
(``pretrained=None``; load weights with ``load_split_from_fused`` / ``load_remoteclip_weights``),
with every attention split into separate q/k/v parameters (``split_attention``), so their state
dicts use RSKT-Seg's key names (``...attn.q_proj_weight`` etc.).

``dense_forward`` is Cat-Seg's dense image encoding (spec rsktseg.md 5.2): blocks ``0..L-2`` run
as usual, the last block is replaced by

    y = LN1(x);  [q | k | v] = y @ cat(Wq, Wk, Wv)^T + in_proj_bias   (fused in-projection)
    t_i = out_proj(v_i) + x_CLS      (the CLS token's block input, broadcast to every token)
    t_i = t_i + MLP(LN2(t_i))

then ``ln_post`` and ``@ proj`` on every token, CLS dropped -> (B, C_out, h, w). There is no
attention mixing; q and k are computed (as in the original, so their weights of the last block
receive an exactly-zero gradient rather than none) and unused. The positional embedding is
resized bicubically (``align_corners=False``) from its pretraining grid to the input grid.
Hook outputs are the raw residual-stream tokens after the given blocks (CLS dropped, before
``ln_post``), as (B, W, h, w) maps.

RemoteCLIP (spec 5.3 and param_counts.md 1.7) contributes only the block 3 and 7 hook outputs
of its image tower, so ``build_remoteclip`` builds just the first ``depth`` blocks (8 by
default) and nothing after them; the checkpoint keys it leaves out are listed by
``remoteclip_unused_keys`` so that a loader can report them as explicitly unused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import open_clip
import torch
from torch import Tensor, nn

from .catseg_head import NUM_ROTATIONS
from .checkpoint import CheckpointMismatchError, load_checkpoint
from .dense_clip import build_clip, run_blocks, tokens_to_map
from .split_attention import SplitQKVAttention, split_fused_state_dict, split_qkv

#: open_clip configs of the OpenAI CLIP models RSKT-Seg uses (QuickGELU, as OpenAI trained them).
CATSEG_CLIP_ARCHS = {"ViT-B/16": "ViT-B-16-quickgelu", "ViT-L/14@336px": "ViT-L-14-336-quickgelu"}

#: open_clip names of the released variants' CLIP (for tokenizers and pretrained tags).
CLIP_NAMES = {"vit-b": "ViT-B-16", "vit-l": "ViT-L-14-336"}

#: The architecture of RemoteCLIP-ViT-B-32 as the official RSKT-Seg code builds it.
REMOTECLIP_ARCH = "ViT-B-32-quickgelu"

#: RemoteCLIP blocks (0-based) whose outputs RSKT-Seg reads.
REMOTECLIP_HOOKS = (3, 7)

#: A tiny random OpenAI-style CLIP for tests: ViT 4x32 (patch 16 at 64 px -> 4x4 grid), text 2x32.
TINY_CATSEG_CONFIG: dict[str, Any] = {
    "embed_dim": 24,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


# -- building ---------------------------------------------------------------------------------
def build_catseg_clip(
    arch: str | dict[str, Any] = "ViT-B-16-quickgelu", device: torch.device | str = "cpu"
) -> open_clip.CLIP:
    """A random OpenAI-architecture open_clip CLIP (QuickGELU forced) with split q/k/v.

    ``arch``: an open_clip model name (``CATSEG_CLIP_ARCHS`` maps RSKT-Seg's names), or a
    config dict. ``device="meta"`` builds without memory (for counting and key checks).
    """
    arch = CATSEG_CLIP_ARCHS.get(arch, arch) if isinstance(arch, str) else arch
    return split_qkv(build_clip(arch, pretrained=None, device=device, quick_gelu=True))


class RemoteCLIPVision(nn.Module):
    """The first ``depth`` blocks of an open_clip CLIP image tower under the attribute
    ``visual`` (state-dict keys ``visual.conv1.weight`` ... as in the checkpoint); the later
    blocks, ``ln_post``, ``proj`` and the whole text tower are not built."""

    def __init__(self, visual: nn.Module, depth: int, unused_keys: dict[str, tuple[int, ...]]):
        super().__init__()
        self.visual = visual
        self.depth = depth
        #: Checkpoint keys (split q/k/v names) this model does not hold, with their shapes.
        self.unused_keys = unused_keys


def _truncate_visual(visual: nn.Module, depth: int) -> nn.Module:
    blocks = visual.transformer.resblocks
    if not 1 <= depth <= len(blocks):
        raise ValueError(f"depth must be in 1..{len(blocks)}, got {depth}")
    visual.transformer.resblocks = nn.ModuleList(list(blocks)[:depth])
    visual.transformer.layers = depth
    visual.ln_post = nn.Identity()
    visual.proj = None
    return visual


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def remoteclip_unused_keys(
    depth: int = 8, arch: str | dict[str, Any] = REMOTECLIP_ARCH, fused: bool = False
) -> dict[str, tuple[int, ...]]:
    """Keys (and shapes) of the full CLIP checkpoint that ``build_remoteclip(depth)`` does not
    build: the text tower and ``logit_scale``, image blocks ``depth..L-1``, ``visual.ln_post.*``
    and ``visual.proj``. Split q/k/v names (as in an RSKT-Seg checkpoint), or with
    ``fused=True`` the open_clip / OpenAI names (``...attn.in_proj_weight``)."""
    full = build_clip(arch, device="meta", quick_gelu=True)
    if not fused:
        split_qkv(full)
    shapes = _shapes(full)
    built = {f"visual.{key}" for key in _truncate_visual(full.visual, depth).state_dict()}
    return {key: shape for key, shape in shapes.items() if key not in built}


def build_remoteclip(
    depth: int = 8,
    arch: str | dict[str, Any] = REMOTECLIP_ARCH,
    device: torch.device | str = "cpu",
    quick_gelu: bool = True,
) -> RemoteCLIPVision:
    """RemoteCLIP's image tower as RSKT-Seg uses it: OpenAI ViT-B/32 (QuickGELU, as the official
    code builds it; ``quick_gelu=False``: open_clip's GELU, as RemoteCLIP's own loader), random
    weights, split q/k/v, only blocks ``0..depth-1`` (hooks 3 and 7 need 8). Its
    ``unused_keys`` lists the checkpoint keys not built (see ``remoteclip_unused_keys``)."""
    unused = remoteclip_unused_keys(depth, arch)
    clip = build_clip(arch, device=device, quick_gelu=quick_gelu)
    visual = split_qkv(_truncate_visual(clip.visual, depth))
    return RemoteCLIPVision(visual, depth, unused).eval()


def load_remoteclip_weights(model: RemoteCLIPVision, state: Mapping[str, Tensor]) -> list[str]:
    """Load a full RemoteCLIP state dict (open_clip fused or RSKT-Seg split names) into the
    truncated ``model``; every key must be either built or in ``model.unused_keys`` (then it is
    dropped). Strict otherwise (``CheckpointMismatchError``). Returns the dropped keys."""
    state = split_fused_state_dict(state)
    built = model.state_dict()
    dropped = [key for key in state if key not in built and key in model.unused_keys]
    bad_shapes = [
        f"{key} {tuple(state[key].shape)} != {model.unused_keys[key]}"
        for key in dropped
        if tuple(state[key].shape) != model.unused_keys[key]
    ]
    if bad_shapes:
        raise CheckpointMismatchError(
            "unused RemoteCLIP keys of the wrong shape: " + ", ".join(bad_shapes)
        )
    load_checkpoint(model, {key: value for key, value in state.items() if key not in dropped})
    return dropped


# -- forward ----------------------------------------------------------------------------------
def _visual(model: nn.Module) -> nn.Module:
    visual = getattr(model, "visual", model)
    if not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
        raise ValueError("expected an open_clip CLIP ViT (or its VisionTransformer)")
    return visual


def catseg_dense_block(block: nn.Module, x: Tensor) -> Tensor:
    """Cat-Seg's dense replacement of the last block on batch-first tokens (B, N, W)."""
    attn = block.attn
    width = x.shape[-1]
    weight = attn.fused_weight() if isinstance(attn, SplitQKVAttention) else attn.in_proj_weight
    qkv = nn.functional.linear(block.ln_1(x), weight, attn.in_proj_bias)
    token = attn.out_proj(qkv[..., 2 * width :]) + x[:, :1]
    return token + block.mlp(block.ln_2(token))


def dense_forward(
    clip: nn.Module, images: Tensor, hooks: Sequence[int] = (3, 7)
) -> tuple[Tensor, list[Tensor]]:
    """Cat-Seg dense features of CLIP-normalised ``images`` (B, 3, H, W).

    Returns ``(dense, maps)``: ``dense`` (B, C_out, H/p, W/p) (``C_out`` = ``visual.proj``'s
    output width: 512 for ViT-B/16, 768 for ViT-L/14) and one raw residual-stream map
    (B, W, H/p, W/p) per entry of ``hooks`` (0-based block indices below the last block).
    ``clip`` is a split open_clip CLIP or its image tower.
    """
    visual = _visual(clip)
    last = len(visual.transformer.resblocks) - 1
    x, grid, maps = run_blocks(visual, images, tuple(hooks), last, last)
    x = catseg_dense_block(visual.transformer.resblocks[-1], x)
    x = visual.ln_post(x) @ visual.proj
    return tokens_to_map(x, grid), maps


def rotated_dense_forward(
    clip: nn.Module, images: Tensor, hooks: Sequence[int] = (3, 7), batched: bool = True
) -> tuple[list[Tensor], list[Tensor]]:
    """``dense_forward`` of ``images`` and of its three quarter-turns (``rot90(k)``, k = 1..3).

    Returns the four dense maps (each (B, C_out, h, w), k order, not rotated back) and the hooked
    maps of the unrotated pass. ``batched``: one forward of the 4B images (the same outputs as
    four passes, faster); otherwise four passes, as the original code runs them.
    """
    rotations = [torch.rot90(images, k, dims=(2, 3)) for k in range(NUM_ROTATIONS)]
    if batched:
        dense, blocks = dense_forward(clip, torch.cat(rotations), hooks)
        batch = images.shape[0]
        return list(dense.split(batch)), [block[:batch] for block in blocks]
    passes = [dense_forward(clip, rotated, hooks) for rotated in rotations]
    return [dense for dense, _ in passes], passes[0][1]


def squash(images: Tensor, size: int) -> Tensor:
    """Bilinear resize (align_corners=False) of (B, C, H, W) to ``size`` x ``size``: how the
    Cat-Seg family feeds its encoders (aspect ratio not kept)."""
    return nn.functional.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False
    )


def remote_hooks(
    remote: nn.Module, images: Tensor, hooks: Sequence[int] = REMOTECLIP_HOOKS
) -> list[Tensor]:
    """Raw residual-stream maps (B, W, H/p, W/p) after ``hooks`` of RemoteCLIP's image tower
    (``RemoteCLIPVision``, or any open_clip ViT); runs only blocks ``0..max(hooks)``. For
    RSKT-Seg: 768x768 input -> two (B, 768, 24, 24) maps."""
    visual = _visual(remote)
    depth = len(visual.transformer.resblocks)
    return run_blocks(visual, images, tuple(hooks), depth, max(hooks, default=-1) + 1)[2]


def encode_text(clip: open_clip.CLIP, tokens: Tensor) -> Tensor:
    """Unnormalised text embeddings (T, D) of token ids (T, context_length): token + positional
    embedding, the causal text transformer, ``ln_final``, the EOT token (highest id) of each
    row, ``@ text_projection`` — CLIP's ``encode_text``, run on the split attention."""
    x = clip.token_embedding(tokens) + clip.positional_embedding
    x = clip.transformer(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = clip.text_projection
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection
