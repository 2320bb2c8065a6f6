"""SED's encoder: an open_clip CLIP with a timm ConvNeXt image tower, read densely, and its text
embeddings per template (spec ``baselines.md`` 6).

- Building: the released variants are open_clip's ``convnext_base_w_320`` and
  ``convnext_large_d_320`` configs (``RELEASED``), as SED's bundled open_clip builds them
  (``open_clip/src/open_clip/model_configs/convnext_large_d_320.json``: head dropout 0.1 for L,
  which open_clip 3.3's copy of that config has at 0). The ``tiny`` config (tests and the demo)
  keeps open_clip's ``TimmModel`` layout (``visual.trunk``, ``visual.head.proj``) around a small
  timm ``ConvNeXt``.
- Dense features (SED ``open_clip/src/open_clip/timm_model.py`` ``forward`` and
  ``visual_prediction_forward_convnext``): stem and the four stages give res2..res5 (strides
  4..32); after ``norm_pre`` every pixel goes alone, as a 1x1 map, through the trunk's head (with
  open_clip's ``reset_classifier(0)``: average pool of 1x1, LayerNorm, flatten) and open_clip's
  projection head (B: dropout + linear 1024 -> 640; L: MLP 1536 -> 1536 -> 768). timm >= 0.9
  replaced the trunk's head ``Sequential`` by ``NormMlpClassifierHead``; called on the 1x1 map it
  does the same thing, and its keys (``head.norm.*``) did not change.
- Text (SED ``sed/modeling/transformer/sed_predictor.py`` ``class_embeddings``): per class and
  template, the L2-normalised embedding of each synonym, averaged over the synonyms and
  normalised again when there are several -> (T, P, C), the P templates kept apart.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from timm.models.convnext import ConvNeXt
from torch import Tensor, nn

#: open_clip model name and pretrained tag of SED's two released variants
#: (``sed_predictor.py``: ``Convnext-B`` / ``Convnext-L``).
RELEASED: dict[str, tuple[str, str]] = {
    "convnext-b": ("convnext_base_w_320", "laion_aesthetic_s13b_b82k"),
    "convnext-l": ("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup"),
}
#: Where SED's bundled open_clip configs differ from open_clip 3.3's (vision_cfg entries).
BUNDLED_VISION_CFG: dict[str, dict[str, Any]] = {"convnext_large_d_320": {"timm_drop": 0.1}}

#: A tiny random ConvNeXt CLIP for tests and the demo: ConvNeXt 16/32/64/128 with one block per
#: stage, linear head 128 -> 32, text 2 x 32.
TINY_SED_CLIP: dict[str, Any] = {
    "embed_dim": 32,
    "convnext": {"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
#: The stand-in image tower open_clip builds before the tiny ConvNeXt replaces it.
_PLACEHOLDER_VISION = {
    "layers": 1,
    "width": 16,
    "head_width": 16,
    "patch_size": 32,
    "image_size": 32,
}


class ConvNeXtTower(nn.Module):
    """open_clip's ``TimmModel`` with ``timm_pool ""`` and ``timm_proj "linear"`` around a given
    timm ConvNeXt ``trunk``: the trunk's classifier removed, ``head`` = dropout + bias-free
    linear projection to ``embed_dim``."""

    def __init__(self, trunk: ConvNeXt, embed_dim: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.trunk.reset_classifier(0)
        self.head = nn.Sequential(
            OrderedDict(
                drop=nn.Dropout(0.0), proj=nn.Linear(trunk.num_features, embed_dim, bias=False)
            )
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.trunk(images))


def sed_clip_config(arch: str) -> dict[str, Any]:
    """The open_clip config of a released ConvNeXt CLIP as SED's bundled open_clip has it."""
    config = open_clip.get_model_config(arch)
    if config is None or "timm_model_name" not in config.get("vision_cfg", {}):
        raise ValueError(f"'{arch}' is not an open_clip ConvNeXt CLIP")
    config = copy.deepcopy(config)
    config["vision_cfg"].update(BUNDLED_VISION_CFG.get(arch, {}))
    return config


def build_sed_clip(
    arch: str | dict[str, Any], device: torch.device | str = "cpu"
) -> open_clip.CLIP:
    """A random ConvNeXt CLIP: a released open_clip name (``RELEASED``) or a tiny config dict
    (``TINY_SED_CLIP``). ``device="meta"`` builds without memory."""
    with torch.device(device):
        if isinstance(arch, str):
            return open_clip.CLIP(**sed_clip_config(arch))
        clip = open_clip.CLIP(arch["embed_dim"], _PLACEHOLDER_VISION, arch["text_cfg"])
        clip.visual = ConvNeXtTower(ConvNeXt(**arch["convnext"]), arch["embed_dim"])
        return clip


def stage_channels(visual: nn.Module) -> list[int]:
    """Output channels of the trunk's four stages (res2..res5)."""
    return [info["num_chs"] for info in visual.trunk.feature_info]


def dense_features(visual: nn.Module, images: Tensor) -> tuple[list[Tensor], Tensor]:
    """The four stage outputs [res2, res3, res4, res5] of CLIP-normalised ``images`` and the
    dense CLIP embedding (B, D, H/32, W/32), the CLIP head applied to every pixel."""
    trunk = visual.trunk
    x = trunk.stem(images)
    stages = []
    for stage in trunk.stages:
        x = stage(x)
        stages.append(x)
    x = trunk.norm_pre(x)
    batch, channels, height, width = x.shape
    pixels = x.permute(0, 2, 3, 1).reshape(-1, channels, 1, 1)  # the original's fake 2D input
    embedded = visual.head(trunk.head(pixels))
    dense = embedded.view(batch, height, width, -1).permute(0, 3, 1, 2)
    return stages, dense


def template_embeddings(
    encode: Callable[[Tensor], Tensor],
    tokenizer: Callable[[list[str]], Tensor],
    classes: Sequence[Sequence[str]],
    templates: Sequence[str],
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
) -> Tensor:
    """Unit text embeddings (T, P, C) of ``classes`` (synonyms per class) in the P
    ``templates``, synonyms averaged per template (see the module docstring). ``encode`` maps
    token ids to unnormalised embeddings."""
    prompts = [t.format(name) for names in classes for t in templates for name in names]
    embedded = torch.cat(
        [
            encode(tokenizer(prompts[start : start + batch_size]).to(device))
            for start in range(0, len(prompts), batch_size)
        ]
    )
    embedded = F.normalize(embedded.float(), dim=-1)
    per_class, start = [], 0
    for names in classes:
        count = len(templates) * len(names)
        rows = embedded[start : start + count].view(len(templates), len(names), -1)
        start += count
        per_class.append(F.normalize(rows.mean(dim=1), dim=-1) if len(names) > 1 else rows[:, 0])
    return torch.stack(per_class)
