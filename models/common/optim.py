"""Parameter groups as detectron2's ``build_optimizer`` in the Cat-Seg family's ``train_net.py``
builds them (spec ``rsktseg.md`` 7.2, ``baselines.md`` 1.6): per trainable tensor, an LR
multiplier by the name of the module holding it, and no weight decay for norm layers,
embeddings and relative-position tables."""

from __future__ import annotations

from typing import Any

from torch import nn

#: Module types whose parameters get SOLVER.WEIGHT_DECAY_NORM / WEIGHT_DECAY_EMBED (both 0.0).
NO_DECAY_MODULES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.Embedding,
)
#: Parameter names that get no weight decay either.
NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def detectron2_param_groups(
    network: nn.Module,
    weight_decay: float,
    multipliers: dict[str, float],
    no_decay_names: tuple[str, ...] = NO_DECAY_NAMES,
) -> list[dict[str, Any]]:
    """The trainable parameters of ``network`` in AdamW groups (``params``, ``lr_mult``,
    ``weight_decay``, ``name``): ``lr_mult`` is ``multipliers[prefix]`` for names starting with
    one of its prefixes (e.g. ``{"clip.": 0.01}``, the original's CLIP_MULTIPLIER), else 1.0;
    ``weight_decay`` is 0 for parameters of ``NO_DECAY_MODULES`` or whose name contains one of
    ``no_decay_names``, else ``weight_decay``. Groups are named after the prefix (``clip``) or
    ``new``, with ``_no_decay`` appended; empty ones are left out."""
    groups: dict[str, dict[str, Any]] = {}
    seen: set[int] = set()
    for module_name, module in network.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{name}" if module_name else name
            prefix = next((p for p in multipliers if full_name.startswith(p)), None)
            no_decay = isinstance(module, NO_DECAY_MODULES) or any(
                key in name for key in no_decay_names
            )
            label = (prefix.strip(".") if prefix else "new") + ("_no_decay" if no_decay else "")
            group = groups.setdefault(
                label,
                {
                    "params": [],
                    "lr_mult": multipliers[prefix] if prefix else 1.0,
                    "weight_decay": 0.0 if no_decay else float(weight_decay),
                    "name": label,
                },
            )
            group["params"].append(param)
    return list(groups.values())
