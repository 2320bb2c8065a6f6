"""SegEarth-OV (Li et al., CVPR 2025), training-free; spec ``baselines.md`` 7, 9-10.

Followed from likyoo/SegEarth-OV (``segearth_segmentor.py``, ``open_clip/transformer.py``,
``simfeatup_dev/upsamplers.py``, ``configs/base_config.py``, ``configs/cfg_*.py``).

- Network: ``ovrsisbench.models.segearth_ov``. ``backbone``: ``vit-b`` (open_clip ``ViT-B-16``,
  the paper's), ``vit-l`` (``ViT-L-14`` at 224 px: SegEarth-OV released no 768-d upsampler, so it
  needs ``upsampler_weights`` of its own or ``upsampler=bilinear``), ``tiny`` (random, seeded by
  ``seed``, for tests and the demo). ``cls_bias`` is the global-bias weight lambda (-0.3).
- Weights: CLIP from ``clip_weights`` (open_clip tag, default ``openai``, downloaded by open_clip
  into ``$OVRSISBENCH_WEIGHTS``, or a file). SimFeatUp from the run's ``weights`` (``--weights``:
  the upsampler checkpoint), else ``upsampler_weights``, else
  ``$OVRSISBENCH_WEIGHTS/xclip_jbu_one_million_aid.ckpt``; it is never downloaded: a missing file
  is a clear error naming where to get it. ``upsampler=bilinear`` (plain x16 bilinear, the
  ablation of likyoo/SegEarth-OV#31) needs no file. ``weights_sha256`` hashes both parts (file
  bytes, or the random state dicts of ``tiny``).
- Protocol (mmseg test pipeline): ``Resize(scale=(448, 448), keep_ratio=True)`` (the image
  rescaled, up or down, so that it fits ``long_side``; mmcv ``rescale_size`` rounding; bilinear
  without antialiasing on 8-bit pixels, as cv2); SegEarth's rounded CLIP statistics; slide
  inference over ``window`` crops at ``stride`` (mmseg's window placement; a side shorter than the
  window is one crop of that side); per-crop logits summed and divided by the overlap count,
  resized bilinearly to the input size; softmax of ``logit_scale`` times the logits over all
  prompt names, max over a class's synonyms.
- Background rule (``set_background``): pixels whose highest class probability is below the
  rule's threshold get the rule's class as their argmax (``prob_thd`` / ``bg_idx``).
- Text: every prompt name in the 80 ImageNet templates, normalised embeddings averaged and
  re-normalised.
- ``precision``: ``auto`` runs fp16 on CUDA (the original's ``precision='fp16'``, SimFeatUp
  under autocast) and fp32 on the CPU; ``fp16`` needs CUDA; ``fp32`` everywhere.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ovrsisbench.adapter import PromptAdapter, check_number_option, weights_cache
from ovrsisbench.adapters.weights import weights_error
from ovrsisbench.errors import UserError
from ovrsisbench.inference import long_side_size, normalize, resize_to, slide_inference
from ovrsisbench.io import file_sha256, json_sha256, state_dict_sha256
from ovrsisbench.models.common.checkpoint import (
    CheckpointMismatchError,
    CheckpointReadError,
    read_weights_file,
)
from ovrsisbench.models.common.dense_clip import resolve_pretrained
from ovrsisbench.models.common.text import IMAGENET_TEMPLATES, build_text_classifier, get_tokenizer
from ovrsisbench.models.segearth_ov import (
    CONFIGS,
    PIXEL_MEAN_255,
    PIXEL_STD_255,
    SegEarthOV,
    build_network,
    load_upsampler,
    reject_background,
)
from ovrsisbench.protocol import BackgroundRule

UPSAMPLER_FILE = "xclip_jbu_one_million_aid.ckpt"
UPSAMPLER_URL = (
    "https://github.com/likyoo/SegEarth-OV/raw/3e22a969b32c6d751bdbba64a88a0b670e630f55/"
    f"simfeatup_dev/weights/{UPSAMPLER_FILE}"
)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def _sha256(path: Path | None, module: nn.Module | None) -> str | None:
    """A file's SHA-256, else that of a module's (random) weights, else None."""
    if path is not None:
        return file_sha256(path)
    return None if module is None else state_dict_sha256(module)


class SegEarthOVAdapter(PromptAdapter):
    """Training-free SegEarth-OV (see the module docstring)."""

    name = "segearth_ov"
    description = "SegEarth-OV (CVPR 2025): training-free CLIP, SimFeatUp upsampler"
    source_url = "https://github.com/likyoo/SegEarth-OV"
    licence = (
        "this re-implementation: Apache-2.0 (ovrsisbench); the original code and its SimFeatUp "
        "weights: no licence file; OpenAI CLIP weights: MIT"
    )
    applies_background = True
    # its own vocabularies and background thresholds (protocols/segearth.yaml) unless told
    default_protocol = "segearth"
    # the demo's tiny model at a quarter of the protocol's sizes (the demo's images are 64 px):
    # 7x faster (the full-size protocol has its own tests)
    demo_options = {"backbone": "tiny", "long_side": 112, "window": 56, "stride": 28}
    choices = {
        "backbone": tuple(CONFIGS),
        "upsampler": ("simfeatup", "bilinear"),
        "precision": ("auto", *PRECISIONS),
    }
    default_options = {
        "backbone": "vit-b",
        "seed": 0,  # tiny: the random weights
        "clip_weights": "openai",  # open_clip tag or file (ignored by tiny)
        "upsampler": "simfeatup",
        "upsampler_weights": None,  # [$OVRSISBENCH_WEIGHTS/xclip_jbu_one_million_aid.ckpt]
        "cls_bias": -0.3,
        "logit_scale": 50,
        "long_side": 448,
        "window": 224,
        "stride": 112,
        "precision": "auto",
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        for key in ("long_side", "window", "stride"):
            check_number_option(self.name, key, self.options[key], 1, integer=True)
        check_number_option(self.name, "seed", self.options["seed"], 0, integer=True)
        for key in ("cls_bias", "logit_scale"):
            check_number_option(self.name, key, self.options[key])
        if self.options["stride"] > self.options["window"]:
            raise UserError(
                f"segearth_ov option stride={self.options['stride']} exceeds window="
                f"{self.options['window']}: windows would leave pixels unscored"
            )
        self.config = CONFIGS[self.options["backbone"]]
        self.network: SegEarthOV | None = None
        self.background: BackgroundRule | None = None
        self.dtype = torch.float32
        self._sha256: str | None = None

    # -- network and weights ------------------------------------------------------------------
    def _network(self, clip_weights: Path | None, device: torch.device | str) -> SegEarthOV:
        simfeatup = self.options["upsampler"] == "simfeatup"
        cls_bias = float(self.options["cls_bias"])
        return build_network(self.config, clip_weights, simfeatup, cls_bias, device)

    def build(self, device: torch.device | str = "cpu") -> SegEarthOV:
        """The bare network, random weights (no downloads); ``meta`` builds no memory."""
        return self._network(None, device)

    def encoder_modules(self, network: nn.Module) -> dict[str, nn.Module]:
        return {"clip": network.clip}

    def _precision(self, device: torch.device | str) -> torch.dtype:
        precision, cuda = self.options["precision"], torch.device(device).type == "cuda"
        if precision == "auto":
            precision = "fp16" if cuda else "fp32"
        if precision == "fp16" and not cuda:
            raise UserError("segearth_ov: precision=fp16 needs a CUDA device (use fp32 or auto)")
        return PRECISIONS[precision]

    def _upsampler_file(self, weights: Path | None) -> Path | None:
        """The SimFeatUp checkpoint to load, or None (bilinear; tiny's random upsampler)."""
        given = weights or self.options["upsampler_weights"]
        if self.options["upsampler"] == "bilinear":
            if given:
                raise UserError(f"segearth_ov: upsampler=bilinear has no weights, got {given}")
            return None
        if given:
            if not Path(given).is_file():  # checked before CLIP is built (or downloaded)
                raise UserError(f"segearth_ov: upsampler weights {given} do not exist")
            return Path(given)
        backbone = self.options["backbone"]
        if backbone == "tiny":
            return None
        if backbone == "vit-l":
            raise UserError(
                "segearth_ov: backbone=vit-l needs a 768-d SimFeatUp checkpoint of its own "
                "(SegEarth-OV released only the 512-d ViT-B/16 one): pass -o "
                "upsampler_weights=PATH, or run -o upsampler=bilinear"
            )
        path = weights_cache() / UPSAMPLER_FILE
        if not path.is_file():
            raise UserError(
                f"segearth_ov: the SimFeatUp weights {path} are missing; download {UPSAMPLER_URL} "
                "there, or pass -o upsampler_weights=PATH (or --weights PATH); "
                "-o upsampler=bilinear runs without them"
            )
        return path

    def _load_upsampler(self, network: SegEarthOV, path: Path) -> None:
        try:
            load_upsampler(network.upsampler, read_weights_file(path))
        except CheckpointReadError as error:
            raise weights_error(self.name, "the SimFeatUp weights", path, error) from None
        except CheckpointMismatchError as error:
            raise UserError(f"segearth_ov: {path} is not a SimFeatUp checkpoint: {error}") from None

    def load(self, weights: Path | None, device: torch.device | str) -> None:
        """CLIP from ``clip_weights`` (tiny: random, seeded), SimFeatUp from ``weights`` or
        ``upsampler_weights`` (see the module docstring); frozen, on ``device``."""
        dtype = self._precision(device)
        upsampler_file = self._upsampler_file(weights)
        tiny = self.options["backbone"] == "tiny"
        pretrained = None if tiny else self.options["clip_weights"]
        try:
            clip_file = resolve_pretrained(self.config.clip_arch, pretrained, weights_cache())
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.options["seed"])
                network = self._network(clip_file, "cpu")
        except (ValueError, RuntimeError, OSError) as error:
            raise weights_error(self.name, "CLIP weights", pretrained, error) from error
        if upsampler_file is not None:
            self._load_upsampler(network, upsampler_file)
        self._sha256 = json_sha256(
            {
                "clip": _sha256(clip_file, network.clip),
                "upsampler": _sha256(upsampler_file, network.upsampler),
            }
        )
        self.dtype = dtype
        self.use_network(network.to(device, dtype))

    def weights_sha256(self) -> str | None:
        return self._sha256

    # -- vocabulary and prediction ------------------------------------------------------------
    def embed_classes(self) -> None:
        tokenizer = get_tokenizer(self.config.clip_arch)
        classifier = build_text_classifier(
            self.network.clip, tokenizer, self.classes, IMAGENET_TEMPLATES
        )
        self.network.set_classifier(classifier)

    def _checked(self, rule: BackgroundRule | None) -> BackgroundRule | None:
        if rule is not None and self.classes is not None:
            if not 0 <= rule.index < len(self.classes):
                raise UserError(
                    f"segearth_ov: background class index {rule.index} is outside the "
                    f"vocabulary's {len(self.classes)} classes"
                )
        return rule

    def set_vocabulary(self, classes: list[list[str]]) -> None:
        self.background = None  # a rule belongs to the vocabulary it came with
        super().set_vocabulary(classes)

    def set_background(self, rule: BackgroundRule | None) -> None:
        self.background = self._checked(rule)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        if self.network is None or self.classes is None:
            raise RuntimeError("segearth_ov: call load() and set_vocabulary() before predict()")
        network, options = self.network, self.options
        rule = self._checked(self.background)
        height, width = images.shape[-2:]
        size = long_side_size((height, width), options["long_side"])
        # mmcv's cv2 resize of the 8-bit image: bilinear, no antialiasing, rounded to 8 bits
        pixels = resize_to(images.to(network.text_embeddings.device, torch.float32) * 255, size)
        x = normalize(pixels.round().clamp(0, 255), PIXEL_MEAN_255, PIXEL_STD_255).to(self.dtype)
        with torch.inference_mode():
            logits = slide_inference(
                x, network, options["window"], options["stride"], network.num_names, False
            )
            scores = network.probabilities(
                resize_to(logits, (height, width)), options["logit_scale"]
            )
            if rule is not None:
                scores = reject_background(scores, rule.index, rule.threshold)
        return scores.float().to(images.device)

    def describe(self) -> dict[str, Any]:
        options, rule = self.options, self.background
        return {
            "clip": self.config.clip_arch if options["backbone"] != "tiny" else "tiny",
            "last_block": "softmax(qq) + softmax(kk) + softmax(vv) attention, no residual/MLP",
            "templates": "imagenet",
            "num_templates": len(IMAGENET_TEMPLATES),
            "pixel_mean_255": list(PIXEL_MEAN_255),
            "pixel_std_255": list(PIXEL_STD_255),
            "resize": {
                "long_side": options["long_side"],
                "keep_ratio": True,
                "interpolation": "bilinear, no antialiasing, 8-bit",
            },
            "slide": {
                "window": options["window"],
                "stride": options["stride"],
                "crop_padding": "centred, to a multiple of the patch",
                "short_sides": "one crop of the side",
            },
            "upsampler": options["upsampler"],
            "cls_bias": options["cls_bias"],
            "logit_scale": options["logit_scale"],
            "scores": "softmax(logit_scale * cosine) over all names, max over synonyms",
            "background_rule": None if rule is None else asdict(rule),
            "precision": "fp16" if self.dtype == torch.float16 else "fp32",
        }
