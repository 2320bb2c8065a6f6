"""SimFeatUp's released checkpoint (``simfeatup_dev/weights/xclip_jbu_one_million_aid.ckpt``).

A PyTorch Lightning checkpoint of likyoo/SimFeatUp ``featup/train_upsampler.py``: its
``on_save_checkpoint`` keeps only the ``upsampler.*`` entries of ``state_dict``, and SegEarth-OV
(``segearth_segmentor.py``) strips that 10-character prefix and loads the rest strictly. Here a key
without the prefix is reported as unexpected under its own name rather than cut blindly.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ..common.checkpoint import CheckpointMismatchError, load_checkpoint

PREFIX = "upsampler."


def upsampler_state(checkpoint: Mapping) -> dict[str, Tensor]:
    """The upsampler's state dict (our names) in a Lightning checkpoint (``{"state_dict": ...}``)
    or a bare state dict in the original's names."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError("the checkpoint's 'state_dict' is not a dictionary")
    return {str(key).removeprefix(PREFIX): value for key, value in state.items()}


def load_upsampler(module: nn.Module, checkpoint: Mapping) -> None:
    """Load a SimFeatUp checkpoint strictly; ``CheckpointMismatchError`` names every missing,
    unexpected or mis-shaped key (in our names, i.e. after the prefix strip)."""
    load_checkpoint(module, upsampler_state(checkpoint))
