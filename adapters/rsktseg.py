"""RSKT-Seg (Li et al., AAAI-26) with the official inference protocol (LiBingyu01/RSKT-Seg).

- Network: ``ovrsisbench.models.rsktseg`` (four-rotation CLIP costs, DINO cost, N efficient
  aggregator layers, the RS-Transfer decoder), ``backbone`` ``vit-b`` (CLIP ViT-B/16 @384),
  ``vit-l`` (ViT-L/14 @336) or ``tiny`` (random, small: tests and the demo).
- Weights: the authors' released checkpoint (detectron2 ``model_final.pth``, or any checkpoint in
  its key names) holds every weight, CLIP, RemoteCLIP, DINO and head: ``--weights`` is all it
  needs. The backbone and N are read from it (``backbone`` / ``num_layers`` options, when given,
  must agree). RemoteCLIP keys of parts that never affect the output (its text tower, image
  blocks 8-11, ``ln_post``, ``proj``) are not built; they are listed in ``describe()``.
- Text: each class's first name (the official code uses only the first of comma-separated
  synonyms) in the single template ``A photo of a {} in the scene``, CLIP text encoder,
  L2-normalised.
- ``inference="whole"`` (the official evaluation): detectron2's test resize (shortest edge 640,
  longest at most 2560, PIL bilinear on 8-bit images), CLIP normalisation on the 0-255 scale,
  padding to a multiple of 32, the model (which squashes the padded image to each encoder's
  size), sigmoid, bilinear back to the original size (padding included, as the original).
  ``inference="slide"``: the official sliding-window path (640x640, 384 windows with stride
  256, plus a global view, averaged).
- Training (``training_recipe``, spec sections 6, 7): the official fine-tuning rule (CLIP q/v
  attention weights of both towers, every new module; RemoteCLIP and DINO frozen), AdamW groups
  with the CLIP learning-rate multiplier and detectron2's weight-decay exemptions, the text
  embeddings re-encoded at every step, the one-hot sigmoid BCE (``loss``/``loss_ignore``
  options: the paper's cross-entropy, ignored pixels masked), and the MaskFormer training
  augmentations at ``train_size``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ovrsisbench.adapter import (
    DemoTraining,
    PromptAdapter,
    TrainingRecipe,
    file_sha256,
    state_dict_sha256,
    weights_cache,
)
from ovrsisbench.errors import UserError
from ovrsisbench.inference import (
    normalize,
    pad_to_multiple,
    resize_like_pil,
    resize_to,
    shortest_edge_size,
)
from ovrsisbench.models.common.dense_clip import load_state_dict_file, resolve_pretrained
from ovrsisbench.models.common.losses import IGNORE_MODES, LOSSES, LossFn, segmentation_loss
from ovrsisbench.models.common.optim import detectron2_param_groups
from ovrsisbench.models.common.text import RSKTSEG_TEMPLATES, get_tokenizer
from ovrsisbench.models.rsktseg.checkpoint import (
    CheckpointMismatchError,
    load_original,
    num_layers,
    unwrap,
)
from ovrsisbench.models.rsktseg.head import FUSION_TYPES
from ovrsisbench.models.rsktseg.model import CLIP_NAMES, CONFIGS, RSKTSeg
from ovrsisbench.models.rsktseg.pretrained import (
    REMOTECLIP_FILE,
    REMOTECLIP_SOURCE,
    RSIB_FILE,
    RSIB_SOURCE,
    load_pretrained_encoders,
)
from ovrsisbench.transforms import catseg_train_transform

#: CLIP pixel statistics on the 0-255 scale (RSKT_Seg/config.py CLIP_PIXEL_MEAN/STD).
CLIP_MEAN_255 = (122.7709383, 116.7460125, 104.09373615)
CLIP_STD_255 = (68.5005327, 66.6321579, 70.3231630)
TEST_SHORT_EDGE, TEST_MAX_SIZE = 640, 2560  # detectron2 INPUT.MIN/MAX_SIZE_TEST
SLIDE_SIZE, SLIDE_WINDOW, SLIDE_OVERLAP = 640, 384, 0.333
#: CLIP image-tower width of the released variants, to read the backbone off a checkpoint.
BACKBONE_OF_WIDTH = {768: "vit-b", 1024: "vit-l"}
_CLASS_EMBEDDING = "sem_seg_head.predictor.clip_model.visual.class_embedding"
CHOICES = {
    "backbone": (None, *CONFIGS),
    "inference": ("whole", "slide"),
    "fusion": FUSION_TYPES,
    "rotations": ("batched", "sequential"),
    "init": ("checkpoint", "pretrained"),
    "remoteclip_act": ("quick_gelu", "gelu"),
    "loss": LOSSES,
    "loss_ignore": IGNORE_MODES,
}

# -- training (spec 6-7) -------------------------------------------------------------------------
#: LR multiplier of CLIP's trainable weights (spec 7.2: SOLVER.CLIP_MULTIPLIER 0.01, applied to
#: modules whose original name contains ``clip_model``: here the ``clip.`` parameters).
CLIP_MULTIPLIER = 0.01
#: The recipe's own values (what the original training used).
TRAINING_DEFAULTS = {
    "lr": 2e-4,  # spec 7.2: SOLVER.BASE_LR (configs/vit*_*.yaml)
    "weight_decay": 1e-4,  # spec 7.2: SOLVER.WEIGHT_DECAY
    "max_iters": 30_000,  # spec 7.2: SOLVER.MAX_ITER ("3W" in the checkpoint names)
    # spec 7.2: the released ViT-B models were trained on 1 GPU with batch 4, per the author
    # [ISSUE #8] (the configs say IMS_PER_BATCH 8, the paper 8 on 4 GPUs)
    "batch_size": 4,
    "clip_norm": 0.01,  # spec 7.2: full-model gradient clipping, total L2 norm <= 0.01
    "warmup_iters": 0,  # spec 7.2: WarmupCosineLR without warm-up
}
TRAIN_MAX_SIZE = 1333  # spec 7.3: INPUT.MAX_SIZE_TRAIN
#: The demo's short schedule for the tiny model (found by trying seeds 0-3 on the demo data:
#: without warm-up or with the 0.01 CLIP multiplier it often stays at the class prior).
DEMO_TRAINING = DemoTraining(
    options={"clip_multiplier": 1.0, "train_size": 64},
    settings={"max_iters": 300, "batch_size": 4, "lr": 5e-4, "warmup_iters": 50},
    reason=(
        "the tiny CLIP is random, not pretrained, so its q/v weights learn at the full LR "
        "(clip_multiplier 1, the recipe's 0.01 protects pretrained weights); 64 px crops (the "
        "images' size); 300 iterations at LR 5e-4 after 50 warm-up iterations"
    ),
)


class RSKTSegLoss:
    """``TrainingRecipe.loss`` of RSKT-Seg: float images (B, 3, S, S) on the 0-255 scale and
    int64 labels (B, S, S) -> scalar loss.

    The images are CLIP-normalised (0-255 statistics) and padded to the network's size
    divisibility (with 0 after normalisation, detectron2's ImageList); the text embeddings are
    encoded from ``tokens`` at every call (CLIP's text q/v weights train); the logits come from
    network; then ``loss_fn(logits, labels)``.
    """

    def __init__(self, network: RSKTSeg, tokens: Tensor, loss_fn: LossFn) -> None:
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


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict, in original key names, of a checkpoint file: safetensors (e.g. trained by
    ``ovrsisbench train``), or ``torch.load(weights_only=True)`` (detectron2 ``.pth``: the
    ``model`` entry)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            checkpoint = load_file(str(path))
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"rsktseg: weights file {path} does not exist") from None
    except Exception as error:  # a damaged file, or pickled objects beyond tensors
        raise UserError(f"rsktseg: cannot read {path} (weights_only): {error}") from error
    state = unwrap(checkpoint)
    if not isinstance(state, dict) or not state:
        raise UserError(f"rsktseg: {path} holds no state dict")
    return state


class RSKTSegAdapter(PromptAdapter):
    """RSKT-Seg (see the module docstring)."""

    name = "rsktseg"
    trainable = True
    source_url = "https://github.com/LiBingyu01/RSKT-Seg"
    licence = (
        "this re-implementation: Apache-2.0 (ovrsisbench); the original code and released "
        "weights: no licence stated"
    )
    demo_options = {"backbone": "tiny"}
    demo_training = DEMO_TRAINING
    training_options = ("loss", "loss_ignore", "train_size", "clip_multiplier")
    choices = CHOICES
    default_options = {
        "backbone": None,  # from the checkpoint (vit-b without one)
        "num_layers": None,  # from the checkpoint (the config's N without one)
        "inference": "whole",
        "fusion": "simple_separate",
        "rotations": "batched",
        "remoteclip_act": "quick_gelu",  # the official code; "gelu": RemoteCLIP's own loader
        "template": RSKTSEG_TEMPLATES[0],
        "init": "checkpoint",
        "clip_weights": "openai",  # init=pretrained: open_clip tag or file
        "weights_dir": None,  # init=pretrained: RemoteCLIP and RSIB files [$OVRSISBENCH_WEIGHTS]
        "seed": 0,
        "loss": "bce",  # training: the code's one-hot sigmoid BCE; "ce": the paper's (spec 11)
        "loss_ignore": "negative",  # bce: ignored pixels as negatives (the code); "masked"
        "train_size": 384,  # training crop S (spec 7.3: INPUT.MIN_SIZE_TRAIN, CROP.SIZE)
        # training: LR multiplier of CLIP's q/v weights (spec 7.2); a random CLIP (tiny) has
        # nothing to preserve and learns at 1.0
        "clip_multiplier": CLIP_MULTIPLIER,
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if not isinstance(self.options["template"], str) or "{}" not in self.options["template"]:
            raise UserError("rsktseg option template must be text containing '{}'")
        layers = self.options["num_layers"]
        if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int)):
            raise UserError(f"rsktseg option num_layers must be an integer, got {layers!r}")
        if layers is not None and layers < 1:
            raise UserError(f"rsktseg option num_layers must be >= 1, got {layers}")
        size = self.options["train_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UserError(f"rsktseg option train_size must be a positive integer, got {size!r}")
        multiplier = self.options["clip_multiplier"]
        is_number = isinstance(multiplier, int | float) and not isinstance(multiplier, bool)
        if not is_number or multiplier < 0:
            raise UserError(
                f"rsktseg option clip_multiplier must be a number >= 0, got {multiplier!r}"
            )
        self.network: RSKTSeg | None = None
        self.text: torch.Tensor | None = None
        self.unused_keys: list[str] = []
        self._sha256: str | None = None

    # -- building --------------------------------------------------------------------------
    def _config(self, backbone: str, layers: int | None):
        config = CONFIGS[backbone]
        return replace(
            config,
            num_layers=layers or config.num_layers,
            fusion=self.options["fusion"],
            remote_quick_gelu=self.options["remoteclip_act"] == "quick_gelu",
        )

    def _network(self, backbone: str, layers: int | None, device: torch.device | str) -> RSKTSeg:
        batched = self.options["rotations"] == "batched"
        return RSKTSeg(self._config(backbone, layers), batched, device)

    def build(self, device: torch.device | str = "cpu") -> RSKTSeg:
        """The bare network (random weights; ``meta``: no memory) for the chosen backbone."""
        return self._network(
            self.options["backbone"] or "vit-b", self.options["num_layers"], device
        )

    def encoder_modules(self, network: nn.Module) -> dict[str, nn.Module]:
        return {"clip": network.clip, "remoteclip": network.remoteclip, "dino": network.dino}

    def _checkpoint_shape(self, state: dict, path: Path) -> tuple[str, int]:
        """Backbone and N of a checkpoint: N from its aggregator layers, the backbone from its
        CLIP width (ViT-B/16 or ViT-L/14) unless the ``backbone`` option names one (``tiny``
        included); options, when given, must agree with what the checkpoint holds."""
        if _CLASS_EMBEDDING not in state:
            raise UserError(
                f"rsktseg: {path} is not an RSKT-Seg checkpoint (no {_CLASS_EMBEDDING})"
            )
        width = state[_CLASS_EMBEDDING].shape[-1]
        found = BACKBONE_OF_WIDTH.get(width)
        backbone = self.options["backbone"] or found
        if backbone is None:
            raise UserError(
                f"rsktseg: {path} has a CLIP of width {width}, not ViT-B/16 or ViT-L/14 "
                "(name the backbone with -o backbone=...)"
            )
        if found is not None and backbone != found:
            raise UserError(f"rsktseg: {path} is backbone={found}, but backbone={backbone} given")
        layers = num_layers(state)
        given = self.options["num_layers"]
        if given is not None and given != layers:
            raise UserError(f"rsktseg: {path} is num_layers={layers}, but num_layers={given} given")
        return backbone, layers

    def _pretrained(self) -> RSKTSeg:
        """Encoders from their pretrained files, head random: a starting point for training."""
        backbone = self.options["backbone"] or "vit-b"
        if backbone == "tiny":
            raise UserError("rsktseg: init=pretrained needs backbone vit-b or vit-l")
        folder = Path(self.options["weights_dir"] or weights_cache())
        files = {}
        for name, source in ((REMOTECLIP_FILE, REMOTECLIP_SOURCE), (RSIB_FILE, RSIB_SOURCE)):
            path = folder / name
            if not path.is_file():
                raise UserError(f"rsktseg: {path} is missing; get {name} from {source}")
            files[name] = path
        network = self._network(backbone, self.options["num_layers"], "cpu")
        try:
            clip_file = resolve_pretrained(
                CLIP_NAMES[backbone], self.options["clip_weights"], folder
            )
            self.unused_keys = load_pretrained_encoders(
                network,
                load_state_dict_file(clip_file),
                torch.load(files[REMOTECLIP_FILE], map_location="cpu", weights_only=True),
                files[RSIB_FILE],
            )
        except Exception as error:  # unreadable or mismatching files: name the cause
            raise UserError(f"rsktseg: cannot load the pretrained encoders: {error}") from error
        return network

    def load(self, weights: Path | None, device: torch.device | str) -> None:
        if weights is None and self.options["init"] == "pretrained":
            network = self._pretrained()
            self._sha256 = state_dict_sha256(network)
        elif weights is None:
            if self.options["backbone"] != "tiny":
                raise UserError(
                    "rsktseg needs a trained checkpoint: --weights model_final.pth (the authors' "
                    "release, which holds every weight) or one trained with ovrsisbench; "
                    "-o backbone=tiny runs a small random model instead"
                )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.options["seed"])
                network = self._network("tiny", self.options["num_layers"], "cpu")
            self._sha256 = state_dict_sha256(network)
        else:
            state = read_checkpoint(Path(weights))
            backbone, layers = self._checkpoint_shape(state, Path(weights))
            network = self._network(backbone, layers, "cpu")
            try:
                self.unused_keys = load_original(network, state, network.unused_original_keys())
            except CheckpointMismatchError as error:
                raise UserError(f"rsktseg: {weights} does not fit {backbone}: {error}") from None
            self._sha256 = file_sha256(Path(weights))
        self.use_network(network.to(device).eval())

    # -- vocabulary and prediction ------------------------------------------------------------
    def embed_classes(self) -> None:
        network = self.network
        tokenizer = get_tokenizer(network.config.clip_arch)
        prompts = [self.options["template"].format(names[0]) for names in self.classes]
        device = next(network.parameters()).device
        with torch.inference_mode():
            self.text = network.encode_text(tokenizer(prompts).to(device))

    def _probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Sigmoid of the logits (B, T, h', w') for CLIP-normalised images."""
        return self.network(images, self.text).sigmoid()

    def _whole(self, images255: torch.Tensor) -> torch.Tensor:
        height, width = images255.shape[-2:]
        size = shortest_edge_size((height, width), TEST_SHORT_EDGE, TEST_MAX_SIZE)
        x = normalize(resize_like_pil(images255, size), CLIP_MEAN_255, CLIP_STD_255)
        divisor = self.network.config.size_divisibility
        probabilities = self._probabilities(pad_to_multiple(x, divisor))
        # detectron2 sem_seg_postprocess: crop to the unpadded size (no-op on the small map)
        return resize_to(probabilities[..., : size[0], : size[1]], (height, width))

    def _slide(self, images255: torch.Tensor) -> torch.Tensor:
        height, width = images255.shape[-2:]
        size = shortest_edge_size((height, width), TEST_SHORT_EDGE, TEST_MAX_SIZE)
        mapped = resize_like_pil(images255, size)  # the test mapper runs in this mode too
        stride = int(SLIDE_WINDOW * (1 - SLIDE_OVERLAP))
        unfold = nn.Unfold(SLIDE_WINDOW, stride=stride)
        fold = nn.Fold((SLIDE_SIZE, SLIDE_SIZE), SLIDE_WINDOW, stride=stride)
        scores = []
        for image in mapped:
            square = resize_to(image[None], SLIDE_SIZE)
            windows = unfold(square)[0].T.reshape(-1, 3, SLIDE_WINDOW, SLIDE_WINDOW)
            views = torch.cat([windows, resize_to(image[None], SLIDE_WINDOW)])
            x = normalize(views, CLIP_MEAN_255, CLIP_STD_255)
            out = resize_to(self.network(x, self.text), SLIDE_WINDOW).sigmoid()
            ones = torch.ones(1, 1, SLIDE_SIZE, SLIDE_SIZE, device=out.device)
            count = fold(unfold(ones))
            folded = fold(out[:-1].flatten(1).T[None]) / count
            merged = (folded + resize_to(out[-1:], SLIDE_SIZE)) / 2
            scores.append(resize_to(merged, (height, width)))
        return torch.cat(scores)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        if self.network is None or self.text is None:
            raise RuntimeError("rsktseg: call load() and set_vocabulary() before predict()")
        device = self.text.device
        images255 = images.to(device, torch.float32) * 255
        with torch.inference_mode():
            if self.options["inference"] == "whole":
                scores = self._whole(images255)
            else:
                scores = self._slide(images255)
        return scores.to(images.device)

    # -- training ---------------------------------------------------------------------------
    def training_recipe(self, classes: list[list[str]]) -> TrainingRecipe:
        """The official RSKT-Seg training (spec 6-7) of the loaded network on ``classes`` (the
        first name of each, in the adapter's template, as at inference)."""
        if self.network is None:
            raise RuntimeError("rsktseg: call load() before training_recipe()")
        if not classes or any(not names for names in classes):
            raise UserError("rsktseg: every training class needs at least one prompt name")
        network = self.network
        network.set_trainable()  # spec 7.1
        tokenizer = get_tokenizer(network.config.clip_arch)
        prompts = [self.options["template"].format(names[0]) for names in classes]
        device = next(network.parameters()).device
        loss = RSKTSegLoss(
            network,
            tokenizer(prompts).to(device),
            segmentation_loss(self.options["loss"], self.options["loss_ignore"]),  # spec 6, 11
        )
        defaults = dict(TRAINING_DEFAULTS)
        return TrainingRecipe(
            module=network,
            param_groups=detectron2_param_groups(
                network, defaults["weight_decay"], {"clip.": float(self.options["clip_multiplier"])}
            ),
            loss=loss,
            # spec 7.3: ResizeShortestEdge(S, 1333, choice), random SxS crop, SSD colour jitter,
            # horizontal flip, pad to SxS (image 128, label 255)
            transform=catseg_train_transform(self.options["train_size"], TRAIN_MAX_SIZE),
            defaults=defaults,
        )

    def weights_sha256(self) -> str | None:
        return self._sha256

    def describe(self) -> dict[str, Any]:
        config = self.network.config if self.network is not None else None
        return {
            "inference": self.options["inference"],
            "test_resize": {"short_edge": TEST_SHORT_EDGE, "max_size": TEST_MAX_SIZE},
            "pixel_mean_255": list(CLIP_MEAN_255),
            "pixel_std_255": list(CLIP_STD_255),
            "template": self.options["template"],
            "remoteclip_act": self.options["remoteclip_act"],
            "names": "first name of each class",
            "scores": "sigmoid",
            "num_layers": config.num_layers if config else None,
            "rotations": self.options["rotations"],
            "init": self.options["init"],
            "unused_checkpoint_keys": self.unused_keys,
        }
