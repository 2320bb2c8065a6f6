"""What the Cat-Seg-family adapters share (Cat-Seg, OVRS, GSNet, RSKT-Seg).

- Inference (spec ``baselines.md`` 1.7, ``rsktseg.md`` 8.1): detectron2's test resize (shortest
  edge 640, longest at most 2560, PIL bilinear on 8-bit images), CLIP normalisation on the 0-255
  scale; ``whole``: padding to the network's size divisibility, one forward (the network squashes
  the padded image to its encoders' sizes), sigmoid, bilinear back to the original size;
  ``slide``: the Cat-Seg sliding window (640 x 640, 384 windows with stride 256, plus a global
  view, averaged; ``ovrsisbench.inference.catseg_slide_inference``).
- Text: each class's first name (the original code uses only the first of comma-separated
  synonyms) in the adapter's template, CLIP text encoder, L2-normalised.
- Training (``training_recipe``; ``baselines.md`` 1.5-1.6, ``rsktseg.md`` 6-7): the network's own
  fine-tuning rule (``set_trainable``), AdamW groups with the CLIP learning-rate multiplier and
  detectron2's weight-decay exemptions, the text embeddings re-encoded at every step, the
  one-hot sigmoid BCE (``loss``/``loss_ignore`` options), and the MaskFormer training
  augmentations at ``train_size``.

A network used here has ``config.clip_arch``, ``config.size_divisibility``, ``encode_text``
(tokens -> unit embeddings), ``set_trainable()``, a ``clip`` module and
``forward(clip_normalised_images, text) -> logits (B, T, h, w)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ovrsisbench.adapter import TrainingRecipe
from ovrsisbench.adapters.weights import CheckpointAdapter
from ovrsisbench.errors import UserError
from ovrsisbench.inference import (
    catseg_slide_inference,
    normalize,
    pad_to_multiple,
    resize_like_pil,
    resize_to,
    shortest_edge_size,
)
from ovrsisbench.models.common.losses import IGNORE_MODES, LOSSES, LossFn, segmentation_loss
from ovrsisbench.models.common.optim import detectron2_param_groups
from ovrsisbench.models.common.text import RSKTSEG_TEMPLATES, get_tokenizer
from ovrsisbench.transforms import catseg_train_transform

#: CLIP pixel statistics on the 0-255 scale (MODEL.CLIP_PIXEL_MEAN/STD of every family member).
CLIP_MEAN_255 = (122.7709383, 116.7460125, 104.09373615)
CLIP_STD_255 = (68.5005327, 66.6321579, 70.3231630)
TEST_SHORT_EDGE, TEST_MAX_SIZE = 640, 2560  # detectron2 INPUT.MIN/MAX_SIZE_TEST
#: ``inference_sliding_window``: out_res 640, kernel 384, overlap 0.333 (stride 256).
SLIDE_SIZE, SLIDE_WINDOW, SLIDE_OVERLAP = 640, 384, 0.333
#: LR multiplier of CLIP's trainable weights (SOLVER.CLIP_MULTIPLIER 0.01, applied to modules
#: whose original name contains ``clip_model``: here the ``clip.`` parameters).
CLIP_MULTIPLIER = 0.01
TRAIN_MAX_SIZE = 1333  # INPUT.MAX_SIZE_TRAIN (spec rsktseg.md 7.3)
#: The optimiser settings every family member's configs share (``configs/config.yaml``).
SOLVER_DEFAULTS = {
    "lr": 2e-4,  # SOLVER.BASE_LR
    "weight_decay": 1e-4,  # SOLVER.WEIGHT_DECAY
    "clip_norm": 0.01,  # full-model gradient clipping, total L2 norm <= 0.01
    "warmup_iters": 0,  # WarmupCosineLR without warm-up
}
#: Options every family adapter accepts, with the original's values.
COMMON_OPTIONS: dict[str, Any] = {
    "template": RSKTSEG_TEMPLATES[0],
    "init": "checkpoint",
    "clip_weights": "openai",  # init=pretrained: open_clip tag or file
    "seed": 0,
    "loss": "bce",  # training: the code's one-hot sigmoid BCE; "ce": softmax cross-entropy
    "loss_ignore": "negative",  # bce: ignored pixels as negatives (the code); "masked"
    "train_size": 384,  # training crop S (INPUT.MIN_SIZE_TRAIN, CROP.SIZE)
    # training: LR multiplier of CLIP's q/v weights; a random CLIP (tiny) has nothing to
    # preserve and learns at 1.0
    "clip_multiplier": CLIP_MULTIPLIER,
}
COMMON_CHOICES: dict[str, tuple] = {
    "inference": ("whole", "slide"),
    "init": ("checkpoint", "pretrained"),
    "loss": LOSSES,
    "loss_ignore": IGNORE_MODES,
}


class CatSegFamilyLoss:
    """``TrainingRecipe.loss``: float images (B, 3, S, S) on the 0-255 scale and int64 labels
    (B, S, S) -> scalar loss.

    The images are CLIP-normalised (0-255 statistics) and padded to the network's size
    divisibility (with 0 after normalisation, detectron2's ImageList); the text embeddings are
    encoded from ``tokens`` at every call (CLIP's text q/v weights train); the logits come from
    the network; then ``loss_fn(logits, labels)``.
    """

    def __init__(self, network: nn.Module, tokens: Tensor, loss_fn: LossFn) -> None:
        self.network = network
        self.tokens = tokens
        self.loss_fn = loss_fn

    def text(self, device: torch.device) -> Tensor:
        """L2-normalised text embeddings (T, C) of the training classes, with gradients."""
        if self.tokens.device != device:
            self.tokens = self.tokens.to(device)
        return self.network.encode_text(self.tokens)

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        x = normalize(images.float(), CLIP_MEAN_255, CLIP_STD_255)
        x = pad_to_multiple(x, self.network.config.size_divisibility)
        logits = self.network(x, self.text(x.device))
        return self.loss_fn(logits, labels.to(x.device))


class CatSegFamilyAdapter(CheckpointAdapter):
    """Inference, text and training shared by the family (see the module docstring).

    Subclasses set ``name``, ``default_options`` (``COMMON_OPTIONS`` plus ``inference`` and
    their own), ``choices`` and ``training_defaults`` (``SOLVER_DEFAULTS`` plus ``max_iters`` and
    ``batch_size``), and implement ``load`` (which calls ``use_network``) and ``build``.
    """

    trainable = True
    training_options = ("loss", "loss_ignore", "train_size", "clip_multiplier")
    training_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        name = self.name
        if not isinstance(self.options["template"], str) or "{}" not in self.options["template"]:
            raise UserError(f"{name} option template must be text containing '{{}}'")
        size = self.options["train_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UserError(f"{name} option train_size must be a positive integer, got {size!r}")
        multiplier = self.options["clip_multiplier"]
        is_number = isinstance(multiplier, int | float) and not isinstance(multiplier, bool)
        if not is_number or multiplier < 0:
            raise UserError(
                f"{name} option clip_multiplier must be a number >= 0, got {multiplier!r}"
            )
        self.network: nn.Module | None = None
        self.text: Tensor | None = None

    # -- vocabulary and prediction ------------------------------------------------------------
    def prompts(self, classes: list[list[str]]) -> list[str]:
        """One prompt per class: its first name in the template."""
        return [self.options["template"].format(names[0]) for names in classes]

    def embed_classes(self) -> None:
        network = self.network
        tokenizer = get_tokenizer(network.config.clip_arch)
        device = next(network.parameters()).device
        with torch.inference_mode():
            self.text = network.encode_text(tokenizer(self.prompts(self.classes)).to(device))

    def _whole(self, images255: Tensor) -> Tensor:
        height, width = images255.shape[-2:]
        size = shortest_edge_size((height, width), TEST_SHORT_EDGE, TEST_MAX_SIZE)
        x = normalize(resize_like_pil(images255, size), CLIP_MEAN_255, CLIP_STD_255)
        divisor = self.network.config.size_divisibility
        probabilities = self.network(pad_to_multiple(x, divisor), self.text).sigmoid()
        # detectron2 sem_seg_postprocess: crop to the unpadded size (no-op on the small map)
        return resize_to(probabilities[..., : size[0], : size[1]], (height, width))

    def _slide(self, images255: Tensor) -> Tensor:
        height, width = images255.shape[-2:]
        size = shortest_edge_size((height, width), TEST_SHORT_EDGE, TEST_MAX_SIZE)
        mapped = resize_like_pil(images255, size)  # the test mapper runs in this mode too
        return catseg_slide_inference(
            mapped,
            lambda views: self.network(normalize(views, CLIP_MEAN_255, CLIP_STD_255), self.text),
            (height, width),
            SLIDE_SIZE,
            SLIDE_WINDOW,
            SLIDE_OVERLAP,
        )

    def prepare_inference(self) -> None:
        """Called before every prediction (e.g. to set evaluation-only settings)."""

    def predict(self, images: Tensor) -> Tensor:
        if self.network is None or self.text is None:
            raise RuntimeError(f"{self.name}: call load() and set_vocabulary() before predict()")
        self.prepare_inference()
        device = self.text.device
        images255 = images.to(device, torch.float32) * 255
        with torch.inference_mode():
            if self.options["inference"] == "whole":
                scores = self._whole(images255)
            else:
                scores = self._slide(images255)
        return scores.to(images.device)

    # -- training ---------------------------------------------------------------------------
    def loss_class(self) -> type[CatSegFamilyLoss]:
        """The recipe's loss wrapper."""
        return CatSegFamilyLoss

    def training_recipe(self, classes: list[list[str]]) -> TrainingRecipe:
        """The original training of the loaded network on ``classes`` (the first name of each,
        in the adapter's template, as at inference)."""
        network = self.training_network(classes)
        tokenizer = get_tokenizer(network.config.clip_arch)
        device = next(network.parameters()).device
        loss = self.loss_class()(
            network,
            tokenizer(self.prompts(classes)).to(device),
            segmentation_loss(self.options["loss"], self.options["loss_ignore"]),
        )
        defaults = dict(self.training_defaults)
        return TrainingRecipe(
            module=network,
            param_groups=detectron2_param_groups(
                network, defaults["weight_decay"], {"clip.": float(self.options["clip_multiplier"])}
            ),
            loss=loss,
            # ResizeShortestEdge(S, 1333, choice), random SxS crop, SSD colour jitter,
            # horizontal flip, pad to SxS (image 128, label 255)
            transform=catseg_train_transform(self.options["train_size"], TRAIN_MAX_SIZE),
            defaults=defaults,
        )

    def describe(self) -> dict[str, Any]:
        described = {
            "inference": self.options["inference"],
            "test_resize": {"short_edge": TEST_SHORT_EDGE, "max_size": TEST_MAX_SIZE},
            "pixel_mean_255": list(CLIP_MEAN_255),
            "pixel_std_255": list(CLIP_STD_255),
            "template": self.options["template"],
            "names": "first name of each class",
            "scores": "sigmoid",
            "init": self.options["init"],
        }
        if self.options["inference"] == "slide":
            described["slide"] = {
                "size": SLIDE_SIZE,
                "window": SLIDE_WINDOW,
                "stride": int(SLIDE_WINDOW * (1 - SLIDE_OVERLAP)),
                "global_view": True,
            }
        return described
