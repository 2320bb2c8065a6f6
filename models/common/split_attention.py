"""Self-attention with separate q/k/v projection weights, for open_clip CLIP models.

The Cat-Seg family (Cat-Seg, GSNet, RSKT-Seg) stores each attention's input projection as
three parameters ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight`` (each [W, W], the
q, k, v chunks of the fused ``in_proj_weight`` along dim 0) while the bias stays fused
(``in_proj_bias`` [3W]) and ``out_proj`` is unchanged. Its "attention" fine-tuning trains only
the q and v weights; with a fused weight a gradient mask would not be enough (AdamW's decoupled
weight decay would still shrink the frozen k rows), so the weight has to be split.

``split_qkv`` swaps every fused ``nn.MultiheadAttention`` of a model for ``SplitQKVAttention``,
an ``nn.MultiheadAttention`` in its separate-projection mode: the forward signature (masks,
``batch_first``, ``need_weights``) is PyTorch's own, so open_clip's blocks call it unchanged.
State dicts then carry ``...attn.q_proj_weight`` etc. instead of ``...attn.in_proj_weight``;
``split_fused_state_dict`` / ``fuse_split_state_dict`` convert between the two layouts.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint

#: Suffix of a fused input-projection weight, and the three split names replacing it.
FUSED_SUFFIX = "attn.in_proj_weight"
SPLIT_SUFFIXES = ("attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight")


class SplitQKVAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (self-attention, equal q/k/v widths) with q, k and v projection
    weights held as three parameters; ``in_proj_bias`` stays one [3W] tensor.

    Parameters in state-dict order: ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``,
    ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``.
    """

    def __init__(self, embed_dim: int, num_heads: int, **kwargs) -> None:
        for name in ("kdim", "vdim"):
            if kwargs.get(name) not in (None, embed_dim):
                raise ValueError(f"{name} must equal embed_dim for a split self-attention")
        super().__init__(embed_dim, num_heads, **kwargs)
        fused = self.in_proj_weight
        # Replacing the registered ``None`` entries keeps their position in ``_parameters``.
        for name, chunk in zip(("q", "k", "v"), fused.detach().chunk(3, dim=0), strict=True):
            setattr(self, f"{name}_proj_weight", nn.Parameter(chunk.clone()))
        self.in_proj_weight = None
        self._qkv_same_embed_dim = False  # PyTorch's separate-projection code path

    @classmethod
    def from_fused(cls, attn: nn.MultiheadAttention) -> SplitQKVAttention:
        """A split copy of a fused self-attention (same weights, device, dtype, flags)."""
        if not attn._qkv_same_embed_dim or attn.in_proj_weight is None:
            raise ValueError("expected a fused nn.MultiheadAttention (one in_proj_weight)")
        weight = attn.in_proj_weight
        split = cls(
            attn.embed_dim,
            attn.num_heads,
            dropout=attn.dropout,
            bias=attn.in_proj_bias is not None,
            add_bias_kv=attn.bias_k is not None,
            add_zero_attn=attn.add_zero_attn,
            batch_first=attn.batch_first,
            device=weight.device,
            dtype=weight.dtype,
        )
        split.load_state_dict(split_fused_state_dict(attn.state_dict()), strict=True)
        for name in ("q", "k", "v"):
            getattr(split, f"{name}_proj_weight").requires_grad_(weight.requires_grad)
        for name, param in attn.named_parameters():
            if name != "in_proj_weight":
                split.get_parameter(name).requires_grad_(param.requires_grad)
        split.train(attn.training)
        return split

    def fused_weight(self) -> Tensor:
        """The equivalent fused ``in_proj_weight`` [3W, W] (a differentiable concatenation)."""
        return torch.cat([self.q_proj_weight, self.k_proj_weight, self.v_proj_weight], dim=0)


def _reject_custom_attention(model: nn.Module) -> None:
    from open_clip.transformer import Attention as OpenClipAttention

    for name, module in model.named_modules():
        if isinstance(module, OpenClipAttention):
            raise ValueError(
                f"'{name}' is open_clip's custom Attention block; only models built from "
                "nn.MultiheadAttention (plain CLIP ViTs) can be split"
            )


def split_qkv(model: nn.Module) -> nn.Module:
    """Replace, in place, every fused ``nn.MultiheadAttention`` of ``model`` (open_clip CLIP:
    image and text towers; or a bare open_clip ``VisionTransformer``/``Transformer``) by a
    ``SplitQKVAttention`` with the same weights. Already split modules are left alone.

    Returns ``model``. Outputs are unchanged (up to float rounding of three matmuls instead of
    one; see ``tests/test_rsktseg_encoders.py``).
    """
    _reject_custom_attention(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.MultiheadAttention and child._qkv_same_embed_dim:
                setattr(parent, name, SplitQKVAttention.from_fused(child))
    return model


# -- state dicts ------------------------------------------------------------------------------
def split_fused_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename every ``...attn.in_proj_weight`` [3W, W] to ``...attn.{q,k,v}_proj_weight`` [W, W]
    (its chunks along dim 0, in q, k, v order); other entries (already split ones included)
    are kept as they are, in order. Also accepts a bare attention's ``in_proj_weight``."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "in_proj_weight" or key.endswith("." + FUSED_SUFFIX):
            stem = key[: -len("in_proj_weight")]
            if value.dim() != 2 or value.shape[0] != 3 * value.shape[1]:
                raise ValueError(f"{key} has shape {tuple(value.shape)}, expected [3W, W]")
            for name, chunk in zip("qkv", value.chunk(3, dim=0), strict=True):
                out[f"{stem}{name}_proj_weight"] = chunk
        else:
            out[key] = value
    return out


def fuse_split_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of ``split_fused_state_dict``: ``in_proj_weight = cat([q, k, v], 0)`` (the
    open_clip / OpenAI layout); raises if a q/k/v triple is incomplete."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "q_proj_weight" or key.endswith("." + SPLIT_SUFFIXES[0]):
            stem = key[: -len("q_proj_weight")]
            parts = [f"{stem}{name}_proj_weight" for name in "qkv"]
            missing = [part for part in parts if part not in state]
            if missing:
                raise ValueError(f"incomplete split attention weights: missing {missing}")
            out[f"{stem}in_proj_weight"] = torch.cat([state[part] for part in parts], dim=0)
        elif key in ("k_proj_weight", "v_proj_weight") or key.endswith(SPLIT_SUFFIXES[1:]):
            stem = key[: -len("k_proj_weight")]
            if f"{stem}q_proj_weight" not in state:
                raise ValueError(f"incomplete split attention weights: missing {stem}q_proj_weight")
        else:
            out[key] = value
    return out


def load_split_from_fused(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Strictly load a fused (open_clip / OpenAI) or already split state dict into a split
    ``model``; raises ``CheckpointMismatchError`` naming missing, unexpected or mis-shaped keys."""
    load_checkpoint(model, split_fused_state_dict(state))


# -- fine-tuning rule -------------------------------------------------------------------------
def set_clip_finetune_attention(model: nn.Module) -> int:
    """Apply RSKT-Seg's ``CLIP_FINETUNE "attention"`` rule (spec 7.1) to a split CLIP.

    A parameter trains iff its name contains ``transformer`` (image and text towers) and it is an
    attention ``q_proj_weight`` or ``v_proj_weight``; everything else of the model (k weights, the
    fused in-projection bias, ``out_proj``, MLPs, LayerNorms, embeddings, positional embeddings,
    ``proj``, ``text_projection``, ``logit_scale``) is frozen. Returns the trainable count.
    """
    names = [name for name, _ in model.named_parameters()]
    if any(name.endswith("in_proj_weight") for name in names):
        raise ValueError("the model still has fused in_proj_weight; call split_qkv first")
    trainable = 0
    for name, param in model.named_parameters():
        train = "transformer" in name and name.endswith(SPLIT_SUFFIXES[::2])
        param.requires_grad_(train)
        trainable += param.numel() if train else 0
    return trainable
