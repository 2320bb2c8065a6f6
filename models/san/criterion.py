"""SAN's training loss: the Mask2Former set criterion (spec ``baselines.md`` 5), following
MendelXu/SAN ``san/model/criterion.py`` (``SetCriterion``), ``san/model/matcher.py``
(``HungarianMatcher``), the loss weights of ``san/config.py`` and ``san/model/san.py``, the
target masks of ``san/data/dataset_mappers/mask_former_semantic_dataset_mapper.py``, and the
point sampling of detectron2 v0.6 (``projects/PointRend/point_rend/point_features.py``, the
version SAN's ``install.sh`` pins).

- Targets: per image, one binary mask per class present in the semantic label (ignored
  pixels, 255, belong to no mask), classes in increasing id order.
- Matching (per image, no gradient): cost = 2 * (-softmax(class logits)[target class])
  + 5 * sigmoid BCE + 5 * dice, the mask terms on 12,544 points drawn uniformly once per image
  and shared by all masks; ``scipy.optimize.linear_sum_assignment``.
- Losses per decoded layer (the last and the auxiliary earlier one, same weights): class
  cross-entropy over T + 1 classes (unmatched queries -> void), void weighted 0.1, weight 2;
  on the matched masks, 12,544 points per mask by importance sampling (3 x oversampling, the
  75 % most uncertain by -|logit|, 25 % uniform), sigmoid BCE (mean over points) weight 5 and
  dice weight 5, both summed over masks and divided by the number of target masks (summed over
  processes, divided by their number, at least 1). Mask logits are sampled at their own
  resolution with normalised coordinates (``grid_sample``, ``align_corners=False``), targets at
  the label's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

IGNORE_INDEX = 255


@dataclass(frozen=True)
class CriterionConfig:
    """``MODEL.SAN`` loss settings of the original ``san/config.py``."""

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 112 * 112
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75


@dataclass
class Target:
    """One image's targets: class ids (n,) and float binary masks (n, H, W)."""

    labels: Tensor
    masks: Tensor


def semantic_targets(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> list[Target]:
    """Per image of ``labels`` (B, H, W): the classes present and one binary mask each."""
    targets = []
    for label in labels:
        classes = torch.unique(label)
        classes = classes[classes != ignore_index]
        masks = (label[None] == classes[:, None, None]).float()
        targets.append(Target(classes.long(), masks))
    return targets


# -- point sampling -----------------------------------------------------------------------------
def point_sample(maps: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values (N, C, P) of maps (N, C, H, W) at points (N, P, 2) in [0, 1]^2 (x, y)."""
    grid = 2.0 * coords.unsqueeze(2) - 1.0
    return F.grid_sample(maps, grid, align_corners=False).squeeze(3)


def uncertain_points(logits: Tensor, num_points: int, oversample: float, importance: float):
    """(N, P, 2) points for mask logits (N, 1, h, w): of ``oversample`` x P uniform points the
    ``importance`` x P with the highest uncertainty -|logit|, then uniform points."""
    count = logits.shape[0]
    sampled = int(num_points * oversample)
    coords = torch.rand(count, sampled, 2, device=logits.device)
    uncertainty = -point_sample(logits, coords)[:, 0].abs()
    uncertain = int(importance * num_points)
    index = uncertainty.topk(uncertain, dim=1).indices
    picked = torch.gather(coords, 1, index[..., None].expand(-1, -1, 2))
    uniform = torch.rand(count, num_points - uncertain, 2, device=logits.device)
    return torch.cat([picked, uniform], dim=1)


# -- costs and losses -----------------------------------------------------------------------------
def pairwise_sigmoid_ce(inputs: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE of every prediction (N, P) logits against every target (M, P): (N, M)."""
    positive = F.softplus(-inputs)  # BCE of every logit against 1
    negative = F.softplus(inputs)  # ... and against 0
    total = positive @ targets.T + negative @ (1 - targets).T
    return total / inputs.shape[1]


def pairwise_dice(inputs: Tensor, targets: Tensor) -> Tensor:
    """Dice loss of every prediction (N, P) logits against every target (M, P): (N, M)."""
    probabilities = inputs.sigmoid()
    numerator = 2 * probabilities @ targets.T
    denominator = probabilities.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def sigmoid_ce_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """BCE of (N, P) logits against (N, P) targets, mean over points, summed / num_masks."""
    losses = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return losses.mean(1).sum() / num_masks


def dice_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Dice loss of (N, P) logits against (N, P) targets, summed / num_masks."""
    probabilities = inputs.sigmoid()
    numerator = 2 * (probabilities * targets).sum(-1)
    denominator = probabilities.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


class SetCriterion:
    """The weighted set loss of a list of decoded layers (see the module docstring)."""

    def __init__(self, config: CriterionConfig = CriterionConfig()) -> None:
        self.config = config

    @torch.no_grad()
    def match(self, class_logits: Tensor, mask_logits: Tensor, targets: list[Target]):
        """Per image, (query indices, target indices) of the Hungarian matching."""
        c = self.config
        indices = []
        for logits, masks, target in zip(class_logits, mask_logits, targets, strict=True):
            cost_class = -logits.float().softmax(-1)[:, target.labels]
            coords = torch.rand(1, c.num_points, 2, device=masks.device)
            predicted = point_sample(masks[:, None].float(), coords.expand(len(masks), -1, -1))
            wanted = point_sample(target.masks[:, None], coords.expand(len(target.masks), -1, -1))
            predicted, wanted = predicted[:, 0], wanted[:, 0]
            cost = (
                c.mask_weight * pairwise_sigmoid_ce(predicted, wanted)
                + c.class_weight * cost_class
                + c.dice_weight * pairwise_dice(predicted, wanted)
            )
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows).long(), torch.as_tensor(cols).long()))
        return indices

    def class_loss(self, class_logits: Tensor, targets: list[Target], indices) -> Tensor:
        """Cross-entropy of all queries; unmatched ones have the void class (weighted 0.1)."""
        logits = class_logits.float()
        void = logits.shape[-1] - 1
        wanted = torch.full(logits.shape[:2], void, dtype=torch.long, device=logits.device)
        for image, (target, (rows, cols)) in enumerate(zip(targets, indices, strict=True)):
            wanted[image, rows.to(logits.device)] = target.labels[cols.to(target.labels.device)]
        weight = torch.ones(void + 1, device=logits.device)
        weight[-1] = self.config.no_object_weight
        return F.cross_entropy(logits.transpose(1, 2), wanted, weight)

    def mask_losses(
        self, mask_logits: Tensor, targets: list[Target], indices, num_masks: float
    ) -> tuple[Tensor, Tensor]:
        """(BCE, dice) of the matched masks on importance-sampled points."""
        c = self.config
        predicted = torch.cat(
            [masks[rows] for masks, (rows, _) in zip(mask_logits, indices, strict=True)]
        )
        wanted = torch.cat([t.masks[cols] for t, (_, cols) in zip(targets, indices, strict=True)])
        if len(predicted) == 0:  # no labelled pixel in the batch: zero, with a graph
            zero = mask_logits.sum() * 0
            return zero, zero
        predicted = predicted[:, None].float()
        with torch.no_grad():
            coords = uncertain_points(
                predicted, c.num_points, c.oversample_ratio, c.importance_sample_ratio
            )
            labels = point_sample(wanted[:, None].to(predicted), coords)[:, 0]
        logits = point_sample(predicted, coords)[:, 0]
        return sigmoid_ce_loss(logits, labels, num_masks), dice_loss(logits, labels, num_masks)

    def layer_loss(self, mask_logits: Tensor, class_logits: Tensor, targets, num_masks) -> Tensor:
        """The weighted loss of one decoded layer."""
        c = self.config
        indices = self.match(class_logits, mask_logits, targets)
        bce, dice = self.mask_losses(mask_logits, targets, indices, num_masks)
        classes = self.class_loss(class_logits, targets, indices)
        return c.class_weight * classes + c.mask_weight * bce + c.dice_weight * dice

    def __call__(self, outputs: list[tuple[Tensor, Tensor]], targets: list[Target]) -> Tensor:
        """Sum of the weighted losses of every (mask logits (B, Q, h, w), class logits
        (B, Q, T + 1)) layer in ``outputs`` (the auxiliary ones included)."""
        device = outputs[-1][0].device
        count = torch.tensor(float(sum(len(t.labels) for t in targets)), device=device)
        world = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(count)
            world = torch.distributed.get_world_size()
        num_masks = max(count.item() / world, 1.0)
        return sum(self.layer_loss(masks, logits, targets, num_masks) for masks, logits in outputs)
