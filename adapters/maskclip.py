"""MaskCLIP (Zhou, Loy, Dai, ECCV 2022, "Extract Free Dense Labels from CLIP"), training-free.

Followed from chongzhou96/MaskCLIP, as read in its public forks (volgachen/MaskCLIP and others;
upstream itself was not at hand): ``mmseg/models/backbones/vit.py``,
``mmseg/models/decode_heads/maskclip_head.py``, ``configs/_base_/models/maskclip_vit16.py``,
``configs/maskclip/*.py``, ``tools/maskclip_utils/prompt_engineering.py``.

- Image tower: OpenAI CLIP ViT-B/16 (``backbone="vit-b"``: open_clip ``ViT-B-16``/``openai``,
  MaskCLIP's ViT) or ViT-L/14@336 (``"vit-l"``: ``ViT-L-14-336``/``openai``, not in MaskCLIP).
  ``ln_pre``, then blocks 1..L-1 as usual. Last block, attention skipped (q, k unused):
  ``v = in_proj_v(ln_1(x))``, ``t = x + out_proj(v)`` (each token keeps its own residual),
  ``t = t + MLP(ln_2(t))``; then ``ln_post`` and ``proj`` on every token; CLS dropped
  (``dense="maskclip"``). ``dense="value"`` drops that residual and MLP, like the "MaskCLIP"
  of SegEarth-OV's code (``model_type='MaskCLIP'``, ``ignore_residual=True``).
- Positional embeddings: bicubic resize (``align_corners=False``) from the pretrained grid
  (14x14 for B/16, 24x24 for L/14@336) to the input's grid. Sides that are not multiples of
  the patch are zero-padded at the bottom/right (mmseg "corner" padding); the padded part of
  the scores is cropped (MaskCLIP instead stretches the padded grid over the image).
- ``numerics="maskclip"`` (default) runs the image tower as MaskCLIP's mmseg port does, exact
  GELU and LayerNorm eps 1e-6 (``act_cfg=dict(type='GELU')``, ``norm_cfg=dict(type='LN',
  eps=1e-6)``); ``numerics="clip"`` keeps CLIP's QuickGELU and eps 1e-5. Text tower: CLIP's.
- Text: per name, the 85 MaskCLIP templates (the 80 OpenAI ImageNet ones + 5 "... in the
  scene."); each prompt embedding L2-normalised, averaged, re-normalised.
- Scores: cosine of L2-normalised pixel features and text embeddings, no temperature; a class
  scores the max over its synonyms (DESIGN's default; MaskCLIP has none). Key smoothing and
  prompt denoising (off in the released configs) and MaskCLIP+ are not implemented.
- Pixels: OpenAI CLIP mean/std (MaskCLIP's dataset configs were not found; unverified).
- Geometry: MaskCLIP's configs run the whole image once (``test_cfg mode='whole'``) at the
  dataset's test scale: ``inference="whole"``, after resizing, aspect kept, to ``long_side``.
  The default ``inference="slide"`` (224 windows, stride 112, after resizing the long side to
  448) is SegEarth-OV's protocol on remote-sensing data, under which training-free baselines
  such as MaskCLIP are usually compared there. ``long_side=None`` keeps the native size.

Tags are downloaded by open_clip into ``$OVRSISBENCH_WEIGHTS`` (default ``~/.cache/ovrsisbench``);
a ``weights`` path overrides ``pretrained``. ``backbone="tiny"`` builds ``TINY_VIT_CONFIG`` with
random weights seeded by ``seed`` (``pretrained`` ignored); ``weights_sha256`` is then the
SHA-256 of that random state dict, otherwise that of the checkpoint file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ovrsisbench.adapter import PromptAdapter, weights_cache
from ovrsisbench.adapters.weights import weights_error
from ovrsisbench.errors import UserError
from ovrsisbench.inference import (
    long_side_size,
    normalize,
    resize_to,
    slide_inference,
    whole_inference,
)
from ovrsisbench.io import file_sha256, state_dict_sha256
from ovrsisbench.models.common.dense_clip import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    TINY_VIT_CONFIG,
    DenseCLIP,
    build_clip,
    resolve_pretrained,
)
from ovrsisbench.models.common.text import TEMPLATE_SETS, build_text_classifier, get_tokenizer
from ovrsisbench.models.maskclip import MaskCLIP, use_mmseg_numerics

BACKBONES = {"vit-b": "ViT-B-16", "vit-l": "ViT-L-14-336"}
CHOICES = {
    "backbone": (*BACKBONES, "tiny"),
    "dense": ("maskclip", "value"),
    "numerics": ("maskclip", "clip"),
    "inference": ("slide", "whole"),
    "templates": tuple(TEMPLATE_SETS),
}


class MaskCLIPAdapter(PromptAdapter):
    """Training-free MaskCLIP on an OpenAI CLIP ViT (see the module docstring)."""

    name = "maskclip"
    description = "MaskCLIP (ECCV 2022): training-free dense CLIP"
    source_url = "https://github.com/chongzhou96/MaskCLIP"
    licence = "this re-implementation: Apache-2.0 (ovrsisbench); OpenAI CLIP weights: MIT"
    demo_options = {"backbone": "tiny"}
    choices = CHOICES
    default_options = {
        "backbone": "vit-b",
        "pretrained": "openai",
        "dense": "maskclip",
        "numerics": "maskclip",
        "inference": "slide",
        "window": 224,
        "stride": 112,
        "long_side": 448,
        "templates": "maskclip",
        "seed": 0,
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        for key in ("window", "stride", "long_side", "seed"):
            value = self.options[key]
            if key == "long_side" and value is None:
                continue
            lowest = 0 if key == "seed" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise UserError(
                    f"maskclip option {key} must be an integer >= {lowest}, got {value!r}"
                )
        if self.options["stride"] > self.options["window"]:
            raise UserError(
                f"maskclip option stride={self.options['stride']} exceeds window="
                f"{self.options['window']}: windows would leave pixels unscored"
            )
        self.network: MaskCLIP | None = None
        self._sha256: str | None = None

    @property
    def arch(self) -> str | dict[str, Any]:
        """The open_clip model name, or the tiny config dict."""
        if self.options["backbone"] == "tiny":
            return TINY_VIT_CONFIG
        return BACKBONES[self.options["backbone"]]

    def _network(self, clip: nn.Module) -> MaskCLIP:
        if self.options["numerics"] == "maskclip":
            use_mmseg_numerics(clip.visual)
        network = MaskCLIP(DenseCLIP(clip), self.options["dense"])
        return network.eval().requires_grad_(False)  # training-free: nothing trains

    def build(self, device: torch.device | str = "cpu") -> MaskCLIP:
        """The bare network with random weights (no downloads); ``meta`` builds no memory."""
        return self._network(build_clip(self.arch, None, device, quick_gelu=True))

    def encoder_modules(self, network: nn.Module) -> dict[str, nn.Module]:
        return {"clip": network.clip}

    def load(self, weights: Path | None, device: torch.device | str) -> None:
        pretrained = weights
        if pretrained is None and self.options["backbone"] != "tiny":
            pretrained = self.options["pretrained"]
        try:
            checkpoint = resolve_pretrained(self.arch, pretrained, weights_cache())
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.options["seed"])
                clip = build_clip(self.arch, checkpoint, "cpu", quick_gelu=True)
        except (ValueError, RuntimeError, OSError) as error:
            raise weights_error(self.name, "weights", pretrained, error) from error
        self._sha256 = file_sha256(checkpoint) if checkpoint else state_dict_sha256(clip)
        self.use_network(self._network(clip).to(device))

    def embed_classes(self) -> None:
        templates = TEMPLATE_SETS[self.options["templates"]]
        tokenizer = get_tokenizer(self.arch)
        classifier = build_text_classifier(self.network.clip, tokenizer, self.classes, templates)
        self.network.set_classifier(classifier)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        if self.network is None or self.classes is None:
            raise RuntimeError("maskclip: call load() and set_vocabulary() before predict()")
        device = self.network.text_embeddings.device
        height, width = images.shape[-2:]
        x = normalize(images.to(device, torch.float32), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        long_side = self.options["long_side"]
        size = long_side_size((height, width), long_side) if long_side else (height, width)
        with torch.inference_mode():
            if self.options["inference"] == "whole":
                scores = whole_inference(x, self.network, size)
            else:
                window, stride = self.options["window"], self.options["stride"]
                k = self.network.num_classes
                scores = slide_inference(resize_to(x, size), self.network, window, stride, k)
                scores = resize_to(scores, (height, width))
        return scores.to(images.device)

    def weights_sha256(self) -> str | None:
        return self._sha256

    def describe(self) -> dict[str, Any]:
        options = self.options
        protocol = {
            "dense": options["dense"],
            "numerics": options["numerics"],
            "inference": options["inference"],
            "long_side": options["long_side"],
            "templates": options["templates"],
            "num_templates": len(TEMPLATE_SETS[options["templates"]]),
            "pixel_mean": list(OPENAI_CLIP_MEAN),
            "pixel_std": list(OPENAI_CLIP_STD),
            "scores": "cosine, max over synonyms",
        }
        if options["inference"] == "slide":
            protocol.update(window=options["window"], stride=options["stride"])
        return protocol
