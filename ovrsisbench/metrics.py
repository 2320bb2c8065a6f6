"""Exact segmentation metrics from one pooled int64 confusion matrix.

The matrix has rows = ground truth and columns = prediction (torchmetrics orientation; the
transpose of detectron2's). Pixels whose label is the ignore index never enter it.

Absent-class policies (see ``shared/spec/metrics.md``):

* ``exclude-absent`` (default, detectron2 ``SemSegEvaluator``, behind the published numbers):
  a class with no ground-truth pixel in the whole dataset is left out of mIoU and mACC, even
  when it was predicted.
* ``mmseg`` (mmsegmentation ``IoUMetric``, torchmetrics macro): a class absent from the ground
  truth but predicted counts with IoU 0; a class absent from both is left out. Accuracy is
  undefined without ground truth, so mACC equals the default policy's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ovrsisbench.choices import POLICIES
from ovrsisbench.data.native import IGNORE_INDEX
from ovrsisbench.errors import UserError

DEFAULT_POLICY = "exclude-absent"


_CHUNK = 1 << 18  # pixels per bincount call on CPU: keeps the working set in cache


class ConfusionMatrix:
    """Accumulates an int64 K x K confusion matrix; ``update`` is exact and order independent.

    Each pixel is coded as ``label * K + pred`` in 16 bits (labels are 0..255), so ignored
    pixels (label 255) and invalid labels fall into rows K..255 of one bincount and need no
    boolean masking; rows K..254 must stay empty.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if not 0 < num_classes < 256 or ignore_index != IGNORE_INDEX:
            raise ValueError(f"need 1 <= num_classes <= 255 and ignore index {IGNORE_INDEX}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._counts = np.zeros((256, self.num_classes), dtype=np.int64)

    def update(self, pred: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray) -> None:
        """Add predictions (class ids 0..K-1) against uint8 labels (0..K-1 or 255)."""
        if tuple(pred.shape) != tuple(label.shape):
            raise ValueError(f"prediction shape {tuple(pred.shape)} != label {tuple(label.shape)}")
        if isinstance(pred, torch.Tensor) and pred.device.type != "cpu":
            counts = self._count_torch(pred, torch.as_tensor(label, device=pred.device))
        else:
            counts = self._count_numpy(_as_numpy(pred), _as_numpy(label))
        invalid = counts[self.num_classes : self.ignore_index].sum(axis=1).nonzero()[0]
        if invalid.size:
            values = ", ".join(str(self.num_classes + int(i)) for i in invalid[:10])
            raise ValueError(
                f"labels must lie in 0..{self.num_classes - 1} or {self.ignore_index}; "
                f"found {values}"
            )
        self._counts += counts

    def _check_pred_range(self, low: int, high: int) -> None:
        if low < 0 or high >= self.num_classes:
            raise ValueError(
                f"predictions must lie in 0..{self.num_classes - 1}, got values in {low}..{high}"
            )

    def _count_numpy(self, pred: np.ndarray, label: np.ndarray) -> np.ndarray:
        k = self.num_classes
        pred, label = pred.reshape(-1), label.reshape(-1)
        if label.dtype != np.uint8:
            if label.size and (label.min() < 0 or label.max() > 255):
                raise ValueError("labels must be 8-bit values (0..255)")
            label = label.astype(np.uint8)
        counts = np.zeros(256 * k, dtype=np.int64)
        buffer = np.empty(min(_CHUNK, pred.size), dtype=np.uint16)
        for start in range(0, pred.size, _CHUNK):
            stop = min(start + _CHUNK, pred.size)
            chunk = pred[start:stop]
            # range check per chunk, while it is in cache (the codes below would alias)
            low = 0 if chunk.dtype.kind == "u" else int(chunk.min())
            self._check_pred_range(low, int(chunk.max()))
            code = buffer[: stop - start]
            np.multiply(label[start:stop], np.uint16(k), out=code, dtype=np.uint16)
            np.add(code, chunk, out=code, casting="unsafe")
            counts += np.bincount(code, minlength=256 * k)
        return counts.reshape(256, k)

    def _count_torch(self, pred: torch.Tensor, label: torch.Tensor) -> np.ndarray:
        k = self.num_classes
        if pred.numel():
            low, high = torch.aminmax(pred)
            self._check_pred_range(int(low), int(high))
        code = label.reshape(-1).to(torch.int32) * k + pred.reshape(-1).to(torch.int32)
        if code.numel() and (int(code.min()) < 0 or int(code.max()) >= 256 * k):
            raise ValueError("labels must be 8-bit values (0..255)")
        return torch.bincount(code, minlength=256 * k).cpu().numpy().reshape(256, k)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another accumulator's counts (e.g. from another process or shard)."""
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices of different sizes")
        self._counts += other._counts

    @property
    def matrix(self) -> np.ndarray:
        """The K x K int64 matrix (rows = ground truth, columns = prediction)."""
        return self._counts[: self.num_classes].copy()

    @property
    def ignored_pixels(self) -> int:
        """Number of pixels seen with the ignore label (not part of the matrix)."""
        return int(self._counts[self.ignore_index].sum())

    def load(self, matrix: np.ndarray) -> None:
        """Restore counts saved earlier from a K x K ``matrix``."""
        k = self.num_classes
        matrix = np.asarray(matrix, dtype=np.int64)
        if matrix.shape != (k, k):
            raise ValueError(f"expected a {k}x{k} matrix, got {matrix.shape}")
        self.reset()
        self._counts[:k] = matrix


def _as_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    return array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


@dataclass(frozen=True)
class Scores:
    """Metrics computed from one confusion matrix, all x100; ``None`` = excluded class."""

    miou: float
    fwiou: float
    macc: float
    pacc: float
    iou: list[float | None]
    acc: list[float | None]
    policy: str

    def summary(self) -> dict[str, float | None]:
        """The four headline metrics under their result-record keys (None when undefined)."""
        values = {"mIoU": self.miou, "fwIoU": self.fwiou, "mACC": self.macc, "pACC": self.pacc}
        return {key: None if math.isnan(value) else value for key, value in values.items()}


def compute_scores(confusion: np.ndarray, policy: str = DEFAULT_POLICY) -> Scores:
    """mIoU, fwIoU, mACC, pACC and per-class IoU/accuracy from a K x K matrix (rows = GT)."""
    if policy not in POLICIES:
        raise UserError(f"unknown absent-class policy '{policy}' (known: {', '.join(POLICIES)})")
    matrix = np.asarray(confusion)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {matrix.shape}")
    if (matrix < 0).any():
        raise ValueError("confusion matrix has negative counts")
    matrix = matrix.astype(np.int64)
    tp = np.diag(matrix).astype(np.float64)
    gt = matrix.sum(axis=1).astype(np.float64)
    pred = matrix.sum(axis=0).astype(np.float64)
    union = gt + pred - tp
    has_gt = gt > 0
    scored = has_gt if policy == "exclude-absent" else union > 0
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=union > 0)
    acc = np.divide(tp, gt, out=np.zeros_like(tp), where=has_gt)
    total = gt.sum()
    return Scores(
        miou=_mean_percent(iou[scored]),
        fwiou=100.0 * float((iou * gt).sum() / total) if total else float("nan"),
        macc=_mean_percent(acc[has_gt]),
        pacc=100.0 * float(tp.sum() / total) if total else float("nan"),
        iou=_percent_or_none(iou, scored),
        acc=_percent_or_none(acc, has_gt),
        policy=policy,
    )


def _mean_percent(values: np.ndarray) -> float:
    return 100.0 * float(values.mean()) if values.size else float("nan")


def _percent_or_none(values: np.ndarray, keep: np.ndarray) -> list[float | None]:
    return [100.0 * float(v) if k else None for v, k in zip(values, keep, strict=True)]
