"""Training losses: BCE for BEV segmentation, CenterPoint focal loss for the heatmap, L1 for boxes,
and the optional camera auxiliaries: cross-entropy of the LSS depth against LiDAR depth bins
(BEVDepth) and of per-pixel image classes against LiDAR-projected labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812


def seg_loss(
    seg_logits: torch.Tensor, masks: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean binary cross-entropy of seg_logits [1, C, Y, X] against masks [C, Y, X] in {0, 1}.

    ``pos_weight`` [C] up-weights the positives of rare classes (BCEWithLogits semantics).
    """
    pw = None if pos_weight is None else pos_weight.view(-1, 1, 1)
    return F.binary_cross_entropy_with_logits(seg_logits[0], masks.float(), pos_weight=pw)


def focal_loss(
    heatmap_logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0
) -> torch.Tensor:
    """CenterPoint / CornerNet Gaussian focal loss of logits [1, C, Y, X] vs target [C, Y, X] in [0, 1].

    Positives are the cells where target == 1; the loss is normalised by their number (at least 1).
    """
    logits = heatmap_logits[0]
    prob = torch.sigmoid(logits)
    pos = target.eq(1.0).float()
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    pos_term = -log_p * (1 - prob) ** alpha * pos
    neg_term = -log_not_p * prob**alpha * (1 - target) ** beta * (1 - pos)
    return (pos_term.sum() + neg_term.sum()) / pos.sum().clamp(min=1.0)


def box_loss(
    boxes: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """L1 of boxes [1, 8, Y, X] vs target [8, Y, X] at the centre cells mask [Y, X], per object."""
    m = mask.float()
    diff = (boxes[0] - target).abs() * m
    if weights is not None:
        diff = diff * weights.view(-1, 1, 1)
    return diff.sum() / m.sum().clamp(min=1.0)


def depth_loss(depth_prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of depth_prob [Ncam, D, H, W] (softmax over D) at the target
    bins [Ncam, H, W] (int64, -1 = no LiDAR point there, ignored); 0 when no pixel has a target."""
    valid = target >= 0
    if not bool(valid.any()):
        return depth_prob.sum() * 0.0
    picked = depth_prob.gather(1, target.clamp(min=0).unsqueeze(1)).squeeze(1)[valid]
    return -torch.log(picked.clamp(min=1e-6)).mean()


def semantic_loss(logits: torch.Tensor, target: torch.Tensor, background_weight: float = 0.2) -> torch.Tensor:
    """Cross-entropy of per-pixel class logits [Ncam, K, H, W] against target [Ncam, H, W] (int64,
    class 0 = background down-weighted by ``background_weight``, -1 = no label, ignored)."""
    if not bool((target >= 0).any()):
        return logits.sum() * 0.0
    weight = torch.ones(logits.shape[1], dtype=logits.dtype)
    weight[0] = background_weight
    return F.cross_entropy(logits, target, weight=weight, ignore_index=-1)


@dataclass(frozen=True)
class LossWeights:
    seg: float = 1.0
    heatmap: float = 1.0
    box: float = 0.25
    depth: float = 1.0  # only applies when the targets carry "depth" and the camera depth is given
    semantic: float = 0.0  # only with targets["semantic"] and the auxiliary semantic logits


def total_loss(
    outputs: tuple[torch.Tensor, ...],
    targets: dict[str, torch.Tensor],
    weights: LossWeights = LossWeights(),
    depth_prob: torch.Tensor | None = None,
    semantic_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum over (seg_logits, heatmap, boxes); targets: seg_masks, heatmap, boxes, box_mask.
    With ``depth_prob`` [Ncam, D, H, W] and ``targets["depth"]`` the depth loss is added too; with
    ``semantic_logits`` [Ncam, K, H, W] and ``targets["semantic"]``, the image semantic loss.

    Returns (loss, {name: value}) for logging.
    """
    seg_logits, heatmap, boxes = outputs
    parts = {
        "seg": seg_loss(seg_logits, targets["seg_masks"], targets.get("seg_pos_weight")),
        "heatmap": focal_loss(heatmap, targets["heatmap"]),
        "box": box_loss(boxes, targets["boxes"], targets["box_mask"]),
    }
    loss = weights.seg * parts["seg"] + weights.heatmap * parts["heatmap"] + weights.box * parts["box"]
    if depth_prob is not None and "depth" in targets and weights.depth > 0:
        parts["depth"] = depth_loss(depth_prob, targets["depth"])
        loss = loss + weights.depth * parts["depth"]
    if semantic_logits is not None and "semantic" in targets and weights.semantic > 0:
        parts["semantic"] = semantic_loss(semantic_logits, targets["semantic"])
        loss = loss + weights.semantic * parts["semantic"]
    return loss, {k: float(v.detach()) for k, v in parts.items()}
