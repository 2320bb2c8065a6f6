"""Cat-Seg (Cho et al., CVPR 2024) with its official evaluation protocol (cvlab-kaist/CAT-Seg).

- Network: ``ovrsisbench.models.catseg`` (dense-CLIP cosine cost, two CAT-Seg aggregation
  layers, the two-stage upsampling decoder), ``backbone`` ``vit-b`` (CLIP ViT-B/16 @384, hooks
  3 and 7), ``vit-l`` (ViT-L/14 @336, hooks 7 and 15) or ``tiny`` (random, small: tests and the
  demo).
- Weights: the authors' released checkpoint (``model_base.pth`` / ``model_large.pth``, or any
  checkpoint in its key names, e.g. trained by ``ovrsisbench train``) holds every weight;
  the backbone is read from it. ``init=pretrained`` (training from scratch): OpenAI CLIP from
  open_clip's ``clip_weights`` tag or a file, the new modules random.
- Inference (``ovrsisbench.adapters.catseg_family``): ``slide`` (default; the official
  evaluation, ``TEST.SLIDING_WINDOW True``) or ``whole``; the class aggregation pools by
  ``eval_pooling`` (1: ``POOLING_SIZES [1,1]`` of the official ``eval.sh``; the in-training
  evaluation keeps the training pooling, 2) while training always pools by 2.
- Text: the first name of each class in ``A photo of a {} in the scene`` (``single``).
- Training: the family's recipe with Cat-Seg's schedule (``configs/vitb_384.yaml``: 80k
  iterations, batch 4, AdamW 2e-4, CLIP x0.01, weight decay 1e-4, clip 0.01, crop 384).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ovrsisbench.adapter import weights_cache
from ovrsisbench.adapters.catseg_family import (
    COMMON_CHOICES,
    COMMON_OPTIONS,
    SOLVER_DEFAULTS,
    CatSegFamilyAdapter,
    CatSegFamilyLoss,
)
from ovrsisbench.adapters.weights import checkpoint_backbone, read_checkpoint
from ovrsisbench.errors import UserError
from ovrsisbench.io import file_sha256
from ovrsisbench.models.catseg.checkpoint import KEYS
from ovrsisbench.models.catseg.model import CONFIGS, CatSeg, CatSegConfig
from ovrsisbench.models.common.catseg_clip import CLIP_NAMES
from ovrsisbench.models.common.dense_clip import read_clip_state_dict, resolve_pretrained
from ovrsisbench.models.common.split_attention import load_split_from_fused

#: Cat-Seg's schedule (configs/config.yaml, vitb_384.yaml, vitl_336.yaml).
TRAINING_DEFAULTS = {**SOLVER_DEFAULTS, "max_iters": 80_000, "batch_size": 4}


class CatSegLoss(CatSegFamilyLoss):
    """The family's loss with the training pooling set first (an evaluation in between may
    have switched the network to ``eval_pooling``)."""

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        self.network.set_pooling(self.network.config.pooling_size)
        return super().__call__(images, labels)


class CatSegAdapter(CatSegFamilyAdapter):
    """Cat-Seg (see the module docstring)."""

    name = "catseg"
    description = "Cat-Seg (CVPR 2024): CLIP cost volume, spatial and class aggregation"
    source_url = "https://github.com/cvlab-kaist/CAT-Seg"
    licence = (
        "this re-implementation: Apache-2.0 (ovrsisbench); the original code: MIT; released "
        "weights: as the original repository states"
    )
    # the demo's tiny model sees the whole image: one view instead of the sliding window's five
    # at 640 px keeps the demo fast (the sliding window has its own tests)
    demo_options = {"backbone": "tiny", "inference": "whole"}
    choices = {**COMMON_CHOICES, "backbone": (None, *CONFIGS)}
    training_defaults = TRAINING_DEFAULTS
    default_options = {
        "backbone": None,  # from the checkpoint (vit-b without one)
        "inference": "slide",
        "eval_pooling": 1,  # POOLING_SIZES at evaluation (eval.sh: [1,1]; training: [2,2])
        **COMMON_OPTIONS,
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        pooling = self.options["eval_pooling"]
        if isinstance(pooling, bool) or not isinstance(pooling, int) or pooling < 1:
            raise UserError(
                f"{self.name} option eval_pooling must be a positive integer, got {pooling!r}"
            )

    # -- building --------------------------------------------------------------------------
    def _network(self, config: CatSegConfig, device: torch.device | str) -> CatSeg:
        return CatSeg(config, device=device)

    def _config(self, backbone: str) -> CatSegConfig:
        return CONFIGS[backbone]

    def build(self, device: torch.device | str = "cpu") -> CatSeg:
        """The bare network (random weights; ``meta``: no memory) for the chosen backbone."""
        return self._network(self._config(self.options["backbone"] or "vit-b"), device)

    def encoder_modules(self, network: nn.Module) -> dict[str, nn.Module]:
        return {"clip": network.clip}

    def _pretrained(self) -> CatSeg:
        """OpenAI CLIP from its open_clip tag or a file, the new modules random."""
        backbone = self.options["backbone"] or "vit-b"
        network = self._network(self._config(backbone), "cpu")
        try:
            clip_file = resolve_pretrained(
                CLIP_NAMES.get(backbone, network.config.clip_arch),
                self.options["clip_weights"],
                weights_cache(),
            )
            load_split_from_fused(network.clip, read_clip_state_dict(clip_file))
        except Exception as error:  # unreadable, unknown or mismatching files: name the cause
            raise UserError(f"{self.name}: cannot load the pretrained CLIP: {error}") from error
        network.set_trainable()
        return network

    no_weights_message = (
        "needs a trained checkpoint: --weights FILE (the authors' release or one trained with "
        "ovrsisbench), or -o init=pretrained to start training from CLIP; -o backbone=tiny runs "
        "a small random model instead"
    )

    def _tiny_network(self) -> CatSeg:
        return self._network(self._config("tiny"), "cpu")

    def _from_checkpoint(self, path: Path) -> CatSeg:
        state = read_checkpoint(path, self.name, KEYS)
        backbone = checkpoint_backbone(
            self.name, "a Cat-Seg-format", state, path, self.options["backbone"]
        )
        network = self._network(self._config(backbone), "cpu")
        self.strict_load(lambda: KEYS.load(network, state), path, backbone)
        self._sha256 = file_sha256(path)
        return network

    # -- inference and training -----------------------------------------------------------------
    def prepare_inference(self) -> None:
        pooling = self.options["eval_pooling"]
        self.network.set_pooling((pooling, pooling))

    def loss_class(self) -> type[CatSegFamilyLoss]:
        return CatSegLoss

    def describe(self) -> dict[str, Any]:
        pooling = self.options["eval_pooling"]
        return {**super().describe(), "pooling": [pooling, pooling]}
