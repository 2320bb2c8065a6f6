"""SED (Xie et al., CVPR 2024, "SED: A Simple Encoder-Decoder for Open-Vocabulary Semantic
Segmentation") with its official evaluation protocol (xb534/SED; spec ``baselines.md`` 6, 9, 10).

- Network: ``ovrsisbench.models.sed`` (ConvNeXt CLIP read densely, cosine cost per template,
  the gradual-fusion decoder); ``backbone`` ``convnext-b`` (open_clip ``convnext_base_w_320``),
  ``convnext-l`` (``convnext_large_d_320``) or ``tiny`` (random, small: tests and the demo).
- Weights: SED's released checkpoint (detectron2 ``.pth`` with ``model``, or one trained with
  ovrsisbench, safetensors) holds every weight, text tower included; the backbone is read from
  its CLIP embedding width (640 / 768). ``init=pretrained`` (training from scratch): the
  open_clip ConvNeXt CLIP from ``clip_weights`` (a file, or an open_clip tag; default the
  variant's LAION tag, ``laion_aesthetic_s13b_b82k`` / ``laion2b_s29b_b131k_ft_soup``), the
  decoder random (seeded by ``seed``).
- Inference (``sed/sed_model.py``): detectron2's test resize (shortest edge 640, longest at most
  2560, PIL bilinear on 8-bit images), CLIP normalisation on the 0-255 scale, no padding, the
  whole image squashed to 768 x 768, one forward, sigmoid, the 192 x 192 map bilinearly back to
  the original size; class-attention pooling ``eval_pooling`` (1: ``eval.sh``'s ``POOLING_SIZES
  [1,1]``; training pools by 2). ``fast_inference``: category early rejection at ``topk``
  (``TEST.FAST_INFERENCE``/``TEST.TOPK``; off with TOPK 1 in the released configs, 8 in the
  paper's fast variant).
- Text: each class in the 80 ImageNet templates, kept as 80 cost channels; synonyms averaged per
  template; the text tower is frozen, so the embeddings are computed once.
- Training (``configs/convnext{B,L}_768.yaml``, ``train_net.py``): ``CLIP_FINETUNE "full"`` (the
  whole image tower at LR x ``clip_multiplier`` 0.01, the text tower frozen, the decoder at the
  base LR), AdamW 2e-4 with detectron2's weight-decay groups (1e-4, none on nn.LayerNorm /
  GroupNorm), cosine schedule without warm-up, full-model gradient clipping at 0.01, 80k
  iterations, batch 4; loss = the one-hot sigmoid BCE of the final and the three auxiliary
  outputs, each upsampled to the label size, summed; MaskFormer's augmentations with shortest
  edge ``train_size`` 768 (longest at most 2666), 768 x 768 crops, SSD colour jitter and flips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ovrsisbench.adapter import TrainingRecipe, check_number_option, weights_cache
from ovrsisbench.adapters.catseg_family import (
    CLIP_MEAN_255,
    CLIP_MULTIPLIER,
    CLIP_STD_255,
    SOLVER_DEFAULTS,
    TEST_MAX_SIZE,
    TEST_SHORT_EDGE,
)
from ovrsisbench.adapters.weights import CheckpointAdapter, checkpoint_backbone, read_checkpoint
from ovrsisbench.errors import UserError
from ovrsisbench.inference import (
    normalize,
    pad_to_multiple,
    resize_like_pil,
    resize_to,
    shortest_edge_size,
)
from ovrsisbench.io import file_sha256
from ovrsisbench.models.common.checkpoint import load_checkpoint
from ovrsisbench.models.common.dense_clip import read_clip_state_dict, resolve_pretrained
from ovrsisbench.models.common.losses import IGNORE_MODES, LOSSES, LossFn, segmentation_loss
from ovrsisbench.models.common.optim import detectron2_param_groups
from ovrsisbench.models.sed.checkpoint import KEYS
from ovrsisbench.models.sed.clip import RELEASED
from ovrsisbench.models.sed.model import CONFIGS, SED
from ovrsisbench.transforms import catseg_train_transform

#: SED's schedule (configs/convnext{B,L}_768.yaml on config.yaml: 80k iterations, batch 4).
TRAINING_DEFAULTS = {**SOLVER_DEFAULTS, "max_iters": 80_000, "batch_size": 4}
TRAIN_MAX_SIZE = 2666  # INPUT.MAX_SIZE_TRAIN
#: The checkpoint entry whose width (the CLIP embedding) tells the released variants apart.
TEXT_PROJECTION_KEY = "sem_seg_head.predictor.clip_model.text_projection"
BACKBONE_OF_EMBED = {640: "convnext-b", 768: "convnext-l"}


class SEDLoss:
    """``TrainingRecipe.loss``: float images (B, 3, S, S) on the 0-255 scale and int64 labels
    (B, S, S) -> the sum of ``loss_fn`` over the final and the three auxiliary logits.

    The images are CLIP-normalised and padded to the network's size divisibility (detectron2's
    ImageList, 0 after normalisation); the text embeddings are the fixed ``text`` (T, P, C);
    the class attention pools by the training size (an evaluation in between may have set
    ``eval_pooling``)."""

    def __init__(self, network: SED, text: Tensor, loss_fn: LossFn) -> None:
        self.network = network
        self.text = text
        self.loss_fn = loss_fn

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        network = self.network
        network.set_pooling(network.config.pooling_size)
        x = normalize(images.float(), CLIP_MEAN_255, CLIP_STD_255)
        x = pad_to_multiple(x, network.config.size_divisibility)
        if self.text.device != x.device:
            self.text = self.text.to(x.device)
        outputs = network(x, self.text)
        labels = labels.to(x.device)
        return sum(self.loss_fn(logits, labels) for logits in (outputs.logits, *outputs.aux))


class SEDAdapter(CheckpointAdapter):
    """SED (see the module docstring)."""

    name = "sed"
    description = "SED (CVPR 2024): ConvNeXt CLIP cost, gradual-fusion decoder"
    trainable = True
    source_url = "https://github.com/xb534/SED"
    licence = (
        "this re-implementation: Apache-2.0 (ovrsisbench); the original code: Apache-2.0; "
        "released weights: as the original repository states"
    )
    demo_options = {"backbone": "tiny"}
    training_options = ("loss", "loss_ignore", "train_size", "clip_multiplier")
    default_options = {
        "backbone": None,  # from the checkpoint (convnext-b without one)
        "init": "checkpoint",
        "clip_weights": None,  # init=pretrained: open_clip tag or file [the variant's LAION tag]
        "seed": 0,  # the random weights of tiny and of init=pretrained's decoder
        "eval_pooling": 1,  # POOLING_SIZES at evaluation (eval.sh: [1,1]; training: [2,2])
        "fast_inference": False,  # TEST.FAST_INFERENCE: category early rejection
        "topk": 1,  # TEST.TOPK (the released configs; 8 for the paper's fast variant)
        "loss": "bce",  # training: the code's one-hot sigmoid BCE; "ce": softmax cross-entropy
        "loss_ignore": "negative",  # bce: ignored pixels as negatives (the code); "masked"
        "train_size": 768,  # training crop S (INPUT.MIN_SIZE_TRAIN, CROP.SIZE)
        "clip_multiplier": CLIP_MULTIPLIER,  # training: LR multiplier of the image tower
    }
    choices = {
        "backbone": (None, *CONFIGS),
        "init": ("checkpoint", "pretrained"),
        "fast_inference": (False, True),
        "loss": LOSSES,
        "loss_ignore": IGNORE_MODES,
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        for key in ("eval_pooling", "topk", "train_size"):
            check_number_option(self.name, key, self.options[key], 1, integer=True)
        check_number_option(self.name, "seed", self.options["seed"], 0, integer=True)
        check_number_option(self.name, "clip_multiplier", self.options["clip_multiplier"], 0)
        self.network: SED | None = None
        self.text: Tensor | None = None

    # -- building and weights -----------------------------------------------------------------
    def _backbone(self) -> str:
        return self.options["backbone"] or "convnext-b"

    def build(self, device: torch.device | str = "cpu") -> SED:
        """The bare network (random weights; ``meta``: no memory) for the chosen backbone."""
        return SED(CONFIGS[self._backbone()], device)

    def encoder_modules(self, network: nn.Module) -> dict[str, nn.Module]:
        return {"clip": network.clip}

    def _seeded(self, backbone: str) -> SED:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.options["seed"])
            return SED(CONFIGS[backbone])

    no_weights_message = (
        "needs a trained checkpoint: --weights FILE (the authors' release or one trained with "
        "ovrsisbench), or -o init=pretrained to start training from the open_clip ConvNeXt "
        "CLIP; -o backbone=tiny runs a small random model instead"
    )

    def _tiny_network(self) -> SED:
        return SED(CONFIGS["tiny"])

    def _pretrained(self) -> SED:
        """The open_clip ConvNeXt CLIP from ``clip_weights`` (file or tag), the decoder random."""
        backbone = self._backbone()
        network = self._seeded(backbone)
        source = self.options["clip_weights"] or RELEASED.get(backbone, (None, None))[1]
        try:
            path = resolve_pretrained(network.config.clip_arch, source, weights_cache())
            if path is None:
                raise ValueError("no weights named (give -o clip_weights=FILE)")
            load_checkpoint(network.clip, read_clip_state_dict(path))
        except Exception as error:  # unreadable, unknown or mismatching files: name the cause
            raise UserError(f"{self.name}: cannot load the pretrained CLIP: {error}") from error
        return network

    def _from_checkpoint(self, path: Path) -> SED:
        state = read_checkpoint(path, self.name, KEYS)
        backbone = checkpoint_backbone(
            self.name, "a SED", state, path, self.options["backbone"], TEXT_PROJECTION_KEY,
            BACKBONE_OF_EMBED,
        )  # fmt: skip
        network = SED(CONFIGS[backbone])
        self.strict_load(lambda: KEYS.load(network, state), path, backbone)
        self._sha256 = file_sha256(path)
        return network

    # -- vocabulary and prediction ------------------------------------------------------------
    def embed_classes(self) -> None:
        self.text = self.network.embed_classes(self.classes)

    def predict(self, images: Tensor) -> Tensor:
        if self.network is None or self.text is None:
            raise RuntimeError("sed: call load() and set_vocabulary() before predict()")
        network = self.network
        network.set_pooling(self.options["eval_pooling"])
        topk = self.options["topk"] if self.options["fast_inference"] else None
        height, width = images.shape[-2:]
        size = shortest_edge_size((height, width), TEST_SHORT_EDGE, TEST_MAX_SIZE)
        images255 = images.to(self.text.device, torch.float32) * 255
        with torch.inference_mode():
            x = normalize(resize_like_pil(images255, size), CLIP_MEAN_255, CLIP_STD_255)
            probabilities = network.probabilities(x, self.text, topk)
            # sem_seg_postprocess: crop to the resized image (a no-op on the smaller map), resize
            scores = resize_to(probabilities[..., : size[0], : size[1]], (height, width))
        return scores.to(images.device)

    # -- training -----------------------------------------------------------------------------
    def training_recipe(self, classes: list[list[str]]) -> TrainingRecipe:
        """SED's training of the loaded network on ``classes`` (all names of each, in the 80
        templates, embedded once by the frozen text tower)."""
        network = self.training_network(classes)
        loss = SEDLoss(
            network,
            network.embed_classes(classes),
            segmentation_loss(self.options["loss"], self.options["loss_ignore"]),
        )
        defaults = dict(TRAINING_DEFAULTS)
        multipliers = {"clip.": float(self.options["clip_multiplier"])}
        return TrainingRecipe(
            module=network,
            param_groups=detectron2_param_groups(network, defaults["weight_decay"], multipliers),
            loss=loss,
            # ResizeShortestEdge(S, 2666, choice), random SxS crop, SSD colour jitter,
            # horizontal flip, pad to SxS (image 128, label 255): SED's MaskFormer mapper
            transform=catseg_train_transform(self.options["train_size"], TRAIN_MAX_SIZE),
            defaults=defaults,
        )

    def describe(self) -> dict[str, Any]:
        config = CONFIGS[self._backbone()] if self.network is None else self.network.config
        pooling = self.options["eval_pooling"]
        return {
            "inference": "whole",
            "test_resize": {"short_edge": TEST_SHORT_EDGE, "max_size": TEST_MAX_SIZE},
            "squash": [config.clip_size, config.clip_size],
            "pixel_mean_255": list(CLIP_MEAN_255),
            "pixel_std_255": list(CLIP_STD_255),
            "templates": f"imagenet ({len(config.templates)}, one cost channel each)",
            "names": "synonyms averaged per template",
            "scores": "sigmoid",
            "pooling": [pooling, pooling],
            "early_rejection_topk": self.options["topk"]
            if self.options["fast_inference"]
            else None,
            "init": self.options["init"],
        }
