"""SAN (Side Adapter Network, Xu et al., CVPR 2023) with its original inference protocol and
training recipe (MendelXu/SAN; spec ``baselines.md`` 5, 8-10).

- Network: ``ovrsisbench.models.san`` (frozen OpenAI CLIP, trainable positional embedding,
  side adapter network, attention-biased recognition, learnable void embedding);
  ``backbone`` ``vit-b`` (ViT-B/16, CLIP at 0.5x), ``vit-l`` (ViT-L/14@336, 0.7x) or ``tiny``
  (random, small: tests and the demo, seeded by ``seed``).
- Weights: the authors' checkpoints (``san_vit_b_16.pth`` / ``san_vit_large_14.pth`` from
  huggingface.co/Mendel192/san, or any checkpoint in their key names or ours, e.g. trained by
  ``ovrsisbench train``), loaded strictly (``ovrsisbench.models.san.checkpoint``); the backbone
  is read from the checkpoint's CLIP width. ``init=pretrained``: OpenAI CLIP from open_clip's
  ``clip_weights`` tag or a file, the side network and void embedding random (seeded by
  ``seed``): the start of training, as in the original (no pretrained side network).
- Inference (``san/model/san.py``, ``configs/Base-coco-stuff-164K-171.yaml``): detectron2's
  test resize (shortest edge 640, longest at most 2560, PIL bilinear on 8-bit images), OpenAI
  CLIP mean/std x 255, padding to 32 (0 after normalisation), one pass; the last layer's mask
  logits are upsampled bilinearly to the padded size, cropped, resized to the image
  (``SEM_SEG_POSTPROCESS_BEFORE_INFERENCE True``), then softmax(class)[..., :-1] x
  sigmoid(mask), summed over the queries.
- Text: the 14 ViLD templates per name, CLIP text encoder, each prompt normalised, averaged,
  renormalised. The original scores one name per class (its datasets have no synonyms);
  ``synonyms="max"`` (default, DESIGN's rule) gives a class the highest logit over its names
  (per query, before the softmax), ``"first"`` uses only its first name.
- Training (``train_net.py``, ``san/config.py``, the base config): the set criterion of
  ``ovrsisbench.models.san.criterion``; AdamW lr 1e-4, weight decay 1e-4 except norm layers
  (torch norm types) and parameters named like ``SOLVER.WEIGHT_DECAY_EMBED_GROUP``
  (positional / query embeddings), no LR multipliers (BACKBONE_MULTIPLIER and CLIP_MULTIPLIER
  1.0 in the released configs); batch 32, 60k iterations, full-model gradient clipping at L2
  norm 0.01, WarmupPolyLR (power 0.9, constant ending 0, no warm-up: WARMUP_ITERS 0,
  WARMUP_FACTOR 1.0, linear method); augmentation: ResizeShortestEdge choice of
  ``int(x * 0.1 * S)`` for x in 5..15 (320..960 for S = 640), max 2560, random S x S crop
  (``single_category_max_area`` 1.0), SSD colour jitter, horizontal flip, padding to S (image
  128, label 255). AMP is the trainer's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ovrsisbench.adapter import TrainingRecipe, check_number_option, weights_cache
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
from ovrsisbench.models.common.checkpoint import OUR_NAMES, load_checkpoint
from ovrsisbench.models.common.dense_clip import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    read_clip_state_dict,
    resolve_pretrained,
)
from ovrsisbench.models.common.optim import detectron2_param_groups
from ovrsisbench.models.common.text import (
    VILD_TEMPLATES,
    TextClassifier,
    build_text_classifier,
    get_tokenizer,
    max_over_synonyms,
)
from ovrsisbench.models.san.checkpoint import CLASS_EMBEDDING_KEY
from ovrsisbench.models.san.checkpoint import load as load_original
from ovrsisbench.models.san.criterion import IGNORE_INDEX, SetCriterion, semantic_targets
from ovrsisbench.models.san.model import CONFIGS, SAN, SANConfig, semantic_scores
from ovrsisbench.transforms import (
    ColorAugSSD,
    Compose,
    PadTo,
    RandomCrop,
    RandomFlip,
    ResizeShortestEdge,
)

#: open_clip's OpenAI preprocessing statistics x 255 (``san.py`` ``from_config``).
MEAN_255 = tuple(255 * value for value in OPENAI_CLIP_MEAN)
STD_255 = tuple(255 * value for value in OPENAI_CLIP_STD)
TEST_SHORT_EDGE, TEST_MAX_SIZE = 640, 2560  # INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST
TRAIN_MAX_SIZE = 2560  # INPUT.MAX_SIZE_TRAIN
#: SOLVER.WEIGHT_DECAY_EMBED_GROUP: parameter names (substrings) trained without weight decay.
EMBED_NAMES = (
    "absolute_pos_embed",
    "positional_embedding",
    "pos_embed",
    "query_embed",
    "relative_position_bias_table",
)
#: The solver of configs/Base-coco-stuff-164K-171.yaml (lr_schedule/poly_power: WarmupPolyLR).
TRAINING_DEFAULTS = {
    "lr": 1e-4,
    "weight_decay": 1e-4,
    "max_iters": 60_000,
    "batch_size": 32,
    "clip_norm": 0.01,
    "warmup_iters": 0,
    "lr_schedule": "poly",
    "poly_power": 0.9,
}
#: CLIP class-embedding key of a checkpoint in our names.
OUR_CLASS_EMBEDDING_KEY = "clip.visual.class_embedding"


def san_train_transform(size: int = 640, max_size: int = TRAIN_MAX_SIZE) -> Compose:
    """SAN's training augmentation for S x S crops (S = ``size``; see the module docstring)."""
    return Compose(
        [
            ResizeShortestEdge([int(x * 0.1 * size) for x in range(5, 16)], max_size, "choice"),
            RandomCrop((size, size), single_category_max_area=1.0),
            ColorAugSSD(),
            RandomFlip(0.5, horizontal=True),
            PadTo(size, image_value=128, label_value=IGNORE_INDEX),
        ]
    )


def class_logits(logits: Tensor, text: TextClassifier) -> Tensor:
    """Per-class logits (B, Q, K + 1) from per-name logits (B, Q, N + 1): each class's highest
    name logit; the void column stays last."""
    names = logits[..., :-1].transpose(1, 2)
    classes = max_over_synonyms(names, text.class_index, text.num_classes).transpose(1, 2)
    return torch.cat([classes, logits[..., -1:]], dim=-1)


class SANLoss:
    """``TrainingRecipe.loss``: float images (B, 3, S, S) on the 0-255 scale and int64 labels
    (B, S, S) -> the set criterion over the decoded layers (both in training mode). Images are
    normalised and padded to the size divisibility (labels with 255), as SAN's ``ImageList``."""

    def __init__(self, network: SAN, text: TextClassifier, criterion: SetCriterion) -> None:
        self.network = network
        self.text = text
        self.criterion = criterion

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        divisor = self.network.config.size_divisibility
        x = pad_to_multiple(normalize(images.float(), MEAN_255, STD_255), divisor)
        labels = pad_to_multiple(labels.to(x.device)[:, None], divisor, IGNORE_INDEX)[:, 0]
        if self.text.embeddings.device != x.device:
            text = self.text
            self.text = text._replace(
                embeddings=text.embeddings.to(x.device), class_index=text.class_index.to(x.device)
            )
        outputs = [
            (masks, class_logits(logits, self.text))
            for masks, logits in self.network(x, self.text.embeddings)
        ]
        return self.criterion(outputs, semantic_targets(labels))


class SANAdapter(CheckpointAdapter):
    """SAN (see the module docstring)."""

    name = "san"
    description = "SAN (CVPR 2023): side adapter network on frozen CLIP"
    source_url = "https://github.com/MendelXu/SAN"
    licence = (
        "this re-implementation: Apache-2.0 (ovrsisbench); the original code: MIT; released "
        "weights: as the original repository states"
    )
    trainable = True
    demo_options = {"backbone": "tiny"}
    training_options = ("train_size",)
    choices = {
        "backbone": (None, *CONFIGS),
        "init": ("checkpoint", "pretrained"),
        "synonyms": ("max", "first"),
    }
    default_options = {
        "backbone": None,  # from the checkpoint (vit-b without one)
        "init": "checkpoint",
        "clip_weights": "openai",  # init=pretrained: open_clip tag or file
        "seed": 0,
        "synonyms": "max",
        "train_size": 640,  # training crop S (INPUT.CROP.SIZE)
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        for key, lowest in (("seed", 0), ("train_size", 32)):
            check_number_option(self.name, key, self.options[key], lowest, integer=True)
        self.network: SAN | None = None
        self.text: TextClassifier | None = None

    # -- building and weights -----------------------------------------------------------------
    def build(self, device: torch.device | str = "cpu") -> SAN:
        """The bare network (random weights; ``meta``: no memory) for the chosen backbone."""
        return SAN(CONFIGS[self.options["backbone"] or "vit-b"], device)

    def encoder_modules(self, network: nn.Module) -> dict[str, nn.Module]:
        return {"clip": network.clip}

    no_weights_message = (
        "needs weights: --weights san_vit_b_16.pth or san_vit_large_14.pth (from "
        "huggingface.co/Mendel192/san) or one trained with ovrsisbench, or -o "
        "init=pretrained to start training from CLIP; -o backbone=tiny runs a small "
        "random model instead"
    )

    def _tiny_network(self) -> SAN:
        return SAN(CONFIGS["tiny"])

    def _seeded(self, config: SANConfig) -> SAN:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.options["seed"])
            return SAN(config)

    def _pretrained(self) -> SAN:
        network = self._seeded(CONFIGS[self.options["backbone"] or "vit-b"])
        try:
            clip_file = resolve_pretrained(
                network.config.clip_arch, self.options["clip_weights"], weights_cache()
            )
            load_checkpoint(network.clip, read_clip_state_dict(clip_file))
        except Exception as error:  # unreadable, unknown or mismatching files: name the cause
            raise UserError(f"san: cannot load the pretrained CLIP: {error}") from error
        return network

    def _from_checkpoint(self, path: Path) -> SAN:
        state = read_checkpoint(path, self.name, OUR_NAMES)
        # original key names, or ours (a checkpoint trained by ovrsisbench)
        key = OUR_CLASS_EMBEDDING_KEY if OUR_CLASS_EMBEDDING_KEY in state else CLASS_EMBEDDING_KEY
        backbone = checkpoint_backbone(
            self.name, "a SAN", state, path, self.options["backbone"], key
        )
        network = SAN(CONFIGS[backbone])
        self.strict_load(lambda: load_original(network, state), path, backbone)
        self._sha256 = file_sha256(path)
        return network

    # -- vocabulary and prediction ------------------------------------------------------------
    def _text(self, classes: list[list[str]]) -> TextClassifier:
        """The ViLD-template embeddings of each class's names (all, or the first)."""
        if self.options["synonyms"] == "first":
            classes = [names[:1] for names in classes]
        network = self.network
        tokenizer = get_tokenizer(network.config.clip_arch)
        return build_text_classifier(network.clip, tokenizer, classes, VILD_TEMPLATES)

    def embed_classes(self) -> None:
        self.text = self._text(self.classes)

    def predict(self, images: Tensor) -> Tensor:
        if self.network is None or self.text is None:
            raise RuntimeError("san: call load() and set_vocabulary() before predict()")
        device = self.text.embeddings.device
        images255 = images.to(device, torch.float32) * 255
        height, width = images255.shape[-2:]
        size = shortest_edge_size((height, width), TEST_SHORT_EDGE, TEST_MAX_SIZE)
        x = normalize(resize_like_pil(images255, size), MEAN_255, STD_255)
        x = pad_to_multiple(x, self.network.config.size_divisibility)
        with torch.inference_mode():
            masks, logits = self.network(x, self.text.embeddings)[-1]
            # detectron2 sem_seg_postprocess before inference: padded size, crop, original size
            masks = resize_to(masks, x.shape[-2:])[..., : size[0], : size[1]]
            masks = resize_to(masks, (height, width))
            scores = semantic_scores(class_logits(logits, self.text), masks)
        return scores.to(images.device)

    # -- training -----------------------------------------------------------------------------
    def training_recipe(self, classes: list[list[str]]) -> TrainingRecipe:
        """SAN's training of the loaded network on ``classes`` (see the module docstring)."""
        network = self.training_network(classes)
        return TrainingRecipe(
            module=network,
            # SAN's build_optimizer: one LR, no decay for norms, embeddings and EMBED_NAMES
            param_groups=detectron2_param_groups(
                network, TRAINING_DEFAULTS["weight_decay"], {}, EMBED_NAMES
            ),
            loss=SANLoss(network, self._text(classes), SetCriterion()),
            transform=san_train_transform(self.options["train_size"]),
            defaults=dict(TRAINING_DEFAULTS),
        )

    def describe(self) -> dict[str, Any]:
        network = self.network
        config = network.config if network else CONFIGS[self.options["backbone"] or "vit-b"]
        return {
            "test_resize": {"short_edge": TEST_SHORT_EDGE, "max_size": TEST_MAX_SIZE},
            "size_divisibility": config.size_divisibility,
            "clip_resolution": config.clip_resolution,
            "pixel_mean_255": list(MEAN_255),
            "pixel_std_255": list(STD_255),
            "templates": "vild",
            "num_templates": len(VILD_TEMPLATES),
            "names": "max over synonyms" if self.options["synonyms"] == "max" else "first name",
            "scores": "softmax(class)[:-1] x sigmoid(mask), summed over queries",
            "init": self.options["init"],
        }
