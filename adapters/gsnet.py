"""GSNet (Ye, Zhuge, Zhang; AAAI 2025) with the official evaluation protocol (yecy749/GSNet).

- Network: ``ovrsisbench.models.gsnet`` (CLIP and DINO "RSIB" cosine costs, sigmoid fusion, two
  CAT-Seg aggregation layers, the RIPD decoder with CLIP and DINO guidance); ``backbone``
  ``vit-b`` (CLIP ViT-B/16 @384 + RSIB ViT-B/8 @384, the only released configuration: the
  original code has no ViT-L one) or ``tiny`` (random, small: tests and the demo).
- Weights: a GSNet checkpoint (the authors' ``model_0029999.pth``, or one trained with
  ovrsisbench) holds CLIP and the head. The original registers the DINO branch inside the model,
  so its checkpoints should hold ``dino_model.*`` as well; whether the released file does is
  unverified. ``load`` therefore takes DINO from the checkpoint when it is there, and otherwise
  from ``RSIB.pth`` (``-o rsib_weights=PATH``, default ``<weights_dir>/RSIB.pth``), read as the
  original ``BuildRSIB`` reads it (``teacher`` entry, ``module.``/``backbone.`` stripped) but
  strictly (DINO's projection-head keys are the only ones dropped). A missing file is named
  with its source; every other key must match (missing/unexpected keys are named).
  ``init=pretrained`` (training from scratch): OpenAI CLIP and RSIB.pth, the new modules random.
- Inference, text, evaluation pooling and training: Cat-Seg's (``ovrsisbench.adapters.catseg``;
  GSNet is built on CAT-Seg and its ``scripts/eval.sh`` sets the sliding window and pooling 1x1),
  with GSNet's schedule (``configs/vitb_384.yaml``, ``scripts/train.sh``: 30k iterations, batch
  4, AdamW 2e-4, CLIP x0.01, weight decay 1e-4, clip 0.01, crop 384); CLIP q/v of both towers
  and every new module train, DINO is frozen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ovrsisbench.adapter import weights_cache
from ovrsisbench.adapters.catseg import CatSegAdapter
from ovrsisbench.adapters.catseg_family import (
    SOLVER_DEFAULTS,
)
from ovrsisbench.adapters.weights import checkpoint_backbone, read_checkpoint, weights_error
from ovrsisbench.errors import UserError
from ovrsisbench.io import file_sha256, json_sha256
from ovrsisbench.models.common.rsib import RSIB_FILE, RSIB_SOURCE, load_rsib_checkpoint
from ovrsisbench.models.gsnet.checkpoint import DINO_PREFIX, KEYS
from ovrsisbench.models.gsnet.model import CONFIGS, GSNet, GSNetConfig

#: GSNet's schedule (configs/vitb_384.yaml, scripts/train.sh: 30k iterations, batch 4 on 2 GPUs).
TRAINING_DEFAULTS = {**SOLVER_DEFAULTS, "max_iters": 30_000, "batch_size": 4}


class GSNetAdapter(CatSegAdapter):
    """GSNet (see the module docstring)."""

    name = "gsnet"
    description = "GSNet (AAAI 2025): CLIP and remote-sensing DINO costs, RIPD decoder"
    source_url = "https://github.com/yecy749/GSNet"
    licence = (
        "this re-implementation: Apache-2.0 (ovrsisbench); the original code: no licence file; "
        "weights: none stated"
    )
    # the demo's tiny model sees the whole image: one view instead of the sliding window's five
    # at 640 px keeps the demo fast (the sliding window has its own tests)
    demo_options = {"backbone": "tiny", "inference": "whole"}
    choices = {key: value for key, value in CatSegAdapter.choices.items() if key != "backbone"}
    training_defaults = TRAINING_DEFAULTS
    default_options = {
        **CatSegAdapter.default_options,
        "backbone": None,  # from the checkpoint (vit-b without one)
        "weights_dir": None,  # where RSIB.pth is [$OVRSISBENCH_WEIGHTS]
        "rsib_weights": None,  # RSIB.pth, for a checkpoint without DINO weights or init=pretrained
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        backbone = self.options["backbone"]
        if backbone is not None and backbone not in CONFIGS:
            extra = " (the original code has no ViT-L configuration)" if backbone == "vit-l" else ""
            raise UserError(
                f"gsnet option backbone={backbone!r}{extra}; choose: {', '.join(CONFIGS)}"
            )
        self.dino_source: str | None = None

    # -- building and weights ----------------------------------------------------------------
    def _network(self, config: GSNetConfig, device: torch.device | str) -> GSNet:
        return GSNet(config, device)

    def _config(self, backbone: str) -> GSNetConfig:
        return CONFIGS[backbone]

    def encoder_modules(self, network: nn.Module) -> dict[str, nn.Module]:
        return {"clip": network.clip, "dino": network.dino}

    def _rsib_file(self, why: str) -> Path:
        folder = Path(self.options["weights_dir"] or weights_cache())
        path = Path(self.options["rsib_weights"] or folder / RSIB_FILE)
        if not path.is_file():
            raise UserError(
                f"gsnet: {why}; {path} is missing; get it from {RSIB_SOURCE} "
                "(or give -o rsib_weights=PATH)"
            )
        return path

    def _load_rsib(self, network: GSNet, path: Path) -> None:
        try:
            load_rsib_checkpoint(path, network.dino)
        except Exception as error:  # unreadable or mismatching: name the file and the cause
            raise weights_error(self.name, "the DINO weights", path, error) from error
        self.dino_source = str(path)

    def _pretrained(self) -> GSNet:
        """OpenAI CLIP (Cat-Seg's) and RSIB.pth, the new modules random: the start of training."""
        if self.options["backbone"] == "tiny":
            raise UserError("gsnet: init=pretrained needs backbone vit-b")
        rsib = self._rsib_file("init=pretrained needs the DINO 'RSIB' weights")
        network = super()._pretrained()
        self._load_rsib(network, rsib)
        network.set_trainable()
        return network

    def _from_checkpoint(self, path: Path) -> GSNet:
        state = dict(read_checkpoint(path, self.name, KEYS))
        backbone = checkpoint_backbone(self.name, "a GSNet", state, path, self.options["backbone"])
        if backbone not in CONFIGS:
            raise UserError(f"gsnet: {path} is backbone={backbone}, which GSNet does not have")
        network = self._network(self._config(backbone), "cpu")
        hashes = [file_sha256(path)]
        if any(key.startswith(DINO_PREFIX) for key in state):
            self.dino_source = str(path)
        else:
            rsib = self._rsib_file(f"{path} holds no DINO weights ({DINO_PREFIX}*)")
            self._load_rsib(network, rsib)
            state.update({DINO_PREFIX + k: v for k, v in network.dino.state_dict().items()})
            hashes.append(file_sha256(rsib))
        self.strict_load(lambda: KEYS.load(network, state), path, backbone)
        self._sha256 = hashes[0] if len(hashes) == 1 else json_sha256(hashes)
        return network

    no_weights_message = (
        "needs a trained checkpoint: --weights model_0029999.pth (the authors' release) or one "
        "trained with ovrsisbench, or -o init=pretrained to start training from CLIP and RSIB; "
        "-o backbone=tiny runs a small random model instead"
    )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dino_weights": self.dino_source}
