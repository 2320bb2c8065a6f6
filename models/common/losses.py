"""The Cat-Seg family's training losses (Cat-Seg, GSNet, RSKT-Seg; spec ``rsktseg.md`` 6, 11).

Both take per-class logits ``(B, T, h, w)`` and labels ``(B, H, W)`` int64 of class ids
``0..T-1`` with ``ignore_index`` (255) for unlabelled pixels; the logits are first upsampled
bilinearly (``align_corners=False``) to the label size, as the original code does.

- ``bce_one_hot_loss``: the code's loss: sigmoid binary cross-entropy against the one-hot
  target. ``ignore="negative"`` (the original): ignored pixels get an all-zero target row and
  still count, as negatives for every class; the mean runs over all B*H*W*T elements.
  ``ignore="masked"``: ignored pixels are left out of the mean.
- ``cross_entropy_loss``: the paper's "standard cross-entropy" (Eq. 9): softmax cross-entropy
  over the T classes, ignored pixels left out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255
LOSSES = ("bce", "ce")
IGNORE_MODES = ("negative", "masked")

LossFn = Callable[[Tensor, Tensor], Tensor]


def _at_label_size(logits: Tensor, labels: Tensor) -> Tensor:
    if logits.dim() != 4 or labels.dim() != 3 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected logits (B, T, h, w) and labels (B, H, W), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    logits = logits.float()
    if tuple(logits.shape[-2:]) != tuple(labels.shape[-2:]):
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def _check_ids(labels: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """The mask of labelled pixels; raises on ids outside 0..T-1 other than ``ignore_index``."""
    valid = labels != ignore_index
    if bool(((labels < 0) | (labels >= num_classes)).logical_and(valid).any()):
        raise ValueError(f"labels hold ids outside 0..{num_classes - 1} (and {ignore_index})")
    return valid


def one_hot_target(labels: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Float (B, T, H, W) one-hot of ``labels``; ``ignore_index`` pixels are all zero."""
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1, 1)
    labelled = (labels != ignore_index).unsqueeze(1)
    return ((labels.unsqueeze(1) == classes) & labelled).float()


def bce_one_hot_loss(
    logits: Tensor, labels: Tensor, ignore: str = "negative", ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Sigmoid BCE of ``logits`` (B, T, h, w) against the one-hot of ``labels`` (B, H, W); see
    the module docstring for ``ignore`` ("negative": the original; "masked")."""
    if ignore not in IGNORE_MODES:
        raise ValueError(f"ignore must be one of {IGNORE_MODES}, got {ignore!r}")
    logits = _at_label_size(logits, labels)
    valid = _check_ids(labels, logits.shape[1], ignore_index)
    target = one_hot_target(labels, logits.shape[1], ignore_index)
    if ignore == "negative":
        return F.binary_cross_entropy_with_logits(logits, target)
    elements = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weight = valid.unsqueeze(1).to(elements.dtype)
    count = weight.sum() * logits.shape[1]
    # an all-ignored batch gives 0 (with a graph), not 0/0
    return (elements * weight).sum() / count.clamp(min=1)


def cross_entropy_loss(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Softmax cross-entropy of ``logits`` (B, T, h, w) for ``labels`` (B, H, W), mean over
    the labelled pixels (0, with a graph, when there are none)."""
    logits = _at_label_size(logits, labels)
    valid = _check_ids(labels, logits.shape[1], ignore_index)
    losses = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    return losses.sum() / valid.sum().clamp(min=1)


def segmentation_loss(kind: str = "bce", ignore: str = "negative") -> LossFn:
    """The loss ``(logits, labels) -> scalar`` named by the family's ``loss`` option ("bce" |
    "ce") and, for "bce", ``loss_ignore`` ("negative" | "masked"); "ce" always leaves ignored
    pixels out."""
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    if ignore not in IGNORE_MODES:
        raise ValueError(f"ignore must be one of {IGNORE_MODES}, got {ignore!r}")
    if kind == "ce":
        return cross_entropy_loss
    return functools.partial(bce_one_hot_loss, ignore=ignore)
