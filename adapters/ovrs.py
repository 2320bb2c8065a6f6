"""OVRS (Cao, Chen, Ma, Yang; TGRS 2025; caoql98/OVRS) with the official evaluation protocol.

The published method (the repository's un-wired ``*_ours.py`` files; spec ``baselines.md`` 3):
Cat-Seg with a rotation-aggregated cost volume (the CLIP image and its three quarter-turns,
rotated back, four cost channels; ``rotations`` ``batched``: one CLIP forward of the four,
``sequential``: four, as the original) and attention-guided upsampling. Everything else, the
options, checkpoint names (same prefixes as Cat-Seg), sliding-window evaluation with pooling 1
(``eval.sh``) and the training recipe (Cat-Seg's configs), is Cat-Seg's; see
``ovrsisbench.adapters.catseg``. No OVRS weights were released: ``--weights`` takes a checkpoint
trained with ovrsisbench (or by the original code's ``*_ours.py`` path).
"""

from __future__ import annotations

import torch

from ovrsisbench.adapters.catseg import CatSegAdapter
from ovrsisbench.models.catseg.model import CatSegConfig
from ovrsisbench.models.ovrs.model import OVRS


class OVRSAdapter(CatSegAdapter):
    """OVRS (see the module docstring)."""

    name = "ovrs"
    description = "OVRS (TGRS 2025): Cat-Seg with rotated costs, re-weighted guidance"
    source_url = "https://github.com/caoql98/OVRS"
    licence = (
        "this re-implementation: Apache-2.0 (ovrsisbench); the original code: MIT (inherited "
        "from CAT-Seg); no released weights"
    )
    choices = {**CatSegAdapter.choices, "rotations": ("batched", "sequential")}
    default_options = {**CatSegAdapter.default_options, "rotations": "batched"}

    def _network(self, config: CatSegConfig, device: torch.device | str) -> OVRS:
        return OVRS(config, self.options["rotations"] == "batched", device)

    def describe(self) -> dict:
        return {**super().describe(), "rotations": self.options["rotations"]}
