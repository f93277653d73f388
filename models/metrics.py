"""Benchmark metrics: BEV map IoU / mIoU, heatmap decoding, nuScenes-style centre-distance mAP.

Detection AP (nuScenes detection benchmark, re-implemented from its published definition):
- a prediction matches the closest not-yet-matched ground truth of its class in the same frame
  whose BEV centre distance is below the threshold, predictions taken in descending score
  order over all frames (greedy);
- precision and recall are accumulated over that order and precision is linearly interpolated
  at 101 recall points 0, 0.01, ..., 1 (zero beyond the highest recall reached); precision is
  NOT made monotone (as nuScenes);
- AP ignores the operating points with recall ≤ min_recall (0.1) and subtracts min_precision
  (0.1), clipping at 0, then normalises: AP = mean(max(p - 0.1, 0)) / (1 - 0.1);
- mAP averages AP over the classes that have ground truth and over the thresholds
  (0.5, 1, 2, 4 m). A class with no ground truth in the evaluated frames is left out (NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

DIST_THRESHOLDS = (0.5, 1.0, 2.0, 4.0)  # m
MIN_RECALL = 0.1
MIN_PRECISION = 0.1
RECALL_POINTS = 101


def bev_iou(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-class IoU [C] of boolean masks pred, target [..., C, Y, X] (summed over leading dims).

    A class absent from both prediction and target gets NaN (it does not count in the mean).
    """
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    axes = tuple(i for i in range(pred.ndim) if i != pred.ndim - 3)
    inter = (pred & target).sum(axis=axes).astype(np.float64)
    union = (pred | target).sum(axis=axes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


@dataclass
class IoUAccumulator:
    """Streaming IoU over frames: intersection and union counts per class."""

    num_classes: int
    threshold: float = 0.5  # on the sigmoid probability

    def __post_init__(self) -> None:
        self.inter = np.zeros(self.num_classes)
        self.union = np.zeros(self.num_classes)

    def add(self, seg_logits: torch.Tensor, masks: np.ndarray) -> None:
        """seg_logits [1, C, Y, X] (logits), masks [C, Y, X] {0, 1}."""
        pred = (torch.sigmoid(seg_logits[0]) > self.threshold).numpy()
        tgt = np.asarray(masks, bool)
        self.inter += (pred & tgt).sum(axis=(1, 2))
        self.union += (pred | tgt).sum(axis=(1, 2))

    def iou(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.union > 0, self.inter / np.maximum(self.union, 1), np.nan)


@dataclass(frozen=True)
class Detections:
    """Decoded boxes of one frame: boxes [K, 7] (x, y, z, w, l, h, yaw), scores [K], labels [K]."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def decode(
    heatmap: torch.Tensor,
    boxes: torch.Tensor,
    bev_range: tuple[float, ...],
    bev_cell: float,
    top_k: int = 100,
    score_threshold: float = 0.05,
    pool: int = 3,
) -> Detections:
    """CenterPoint decoding of heatmap [1, C, Y, X] (logits) and boxes [1, 8, Y, X].

    Peaks survive a ``pool`` x ``pool`` max-pool NMS; the ``top_k`` highest-scoring peaks over all
    classes above ``score_threshold`` become boxes: centre = cell centre + (dx, dy) m, z, exp of the
    log sizes, yaw = atan2(sin, cos). Cell (iy, ix) is centred at
    (xmin + (ix + .5) cell, ymin + (iy + .5) cell).
    """
    scores = torch.sigmoid(heatmap[0].detach().float())
    pooled = F.max_pool2d(scores[None], pool, stride=1, padding=pool // 2)[0]
    scores = torch.where(scores == pooled, scores, torch.zeros_like(scores))
    n_cls, y_size, x_size = scores.shape
    flat = scores.reshape(-1)
    k = min(top_k, flat.numel())
    top, idx = torch.topk(flat, k)
    keep = top > score_threshold
    top, idx = top[keep], idx[keep]
    cls = idx // (y_size * x_size)
    iy = (idx % (y_size * x_size)) // x_size
    ix = idx % x_size
    reg = boxes[0].detach().float()[:, iy, ix].t().numpy().astype(np.float64)  # [K, 8]
    xmin, ymin = bev_range[0], bev_range[1]
    x = xmin + (ix.numpy() + 0.5) * bev_cell + reg[:, 0]
    y = ymin + (iy.numpy() + 0.5) * bev_cell + reg[:, 1]
    sizes = np.exp(np.clip(reg[:, 3:6], -5.0, 5.0))
    yaw = np.arctan2(reg[:, 6], reg[:, 7])
    out = np.stack([x, y, reg[:, 2], sizes[:, 0], sizes[:, 1], sizes[:, 2], yaw], axis=1)
    return Detections(out.reshape(-1, 7), top.numpy().astype(np.float64), cls.numpy().astype(np.int64))


def match_frame(pred_xy: np.ndarray, gt_xy: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy matching within one frame and class: pred_xy [K, 2] in descending score order.

    Returns tp [K] bool: each prediction takes the closest unmatched ground truth within threshold.
    """
    tp = np.zeros(len(pred_xy), bool)
    taken = np.zeros(len(gt_xy), bool)
    for i, p in enumerate(pred_xy):
        if not len(gt_xy):
            break
        dist = np.linalg.norm(gt_xy - p, axis=1)
        dist[taken] = np.inf
        j = int(np.argmin(dist))
        if dist[j] < threshold:
            taken[j] = True
            tp[i] = True
    return tp


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """nuScenes AP from all predictions of one class (scores [K], tp [K]) and the ground-truth count."""
    if num_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp_sorted = tp[order].astype(np.float64)
    tp_cum = np.cumsum(tp_sorted)
    fp_cum = np.cumsum(1.0 - tp_sorted)
    precision = tp_cum / (tp_cum + fp_cum)
    recall = tp_cum / num_gt
    grid = np.linspace(0.0, 1.0, RECALL_POINTS)
    interp = np.interp(grid, recall, precision, right=0.0)
    kept = interp[int(round(100 * MIN_RECALL)) + 1 :]
    return float(np.mean(np.clip(kept - MIN_PRECISION, 0.0, None)) / (1.0 - MIN_PRECISION))


@dataclass
class DetectionAccumulator:
    """Collects per-frame detections and ground truth, then computes AP per class and threshold."""

    num_classes: int
    thresholds: tuple[float, ...] = DIST_THRESHOLDS

    def __post_init__(self) -> None:
        # per (class, threshold): list of (scores, tp) arrays; per class: ground-truth count
        self.records: dict[tuple[int, float], list[tuple[np.ndarray, np.ndarray]]] = {}
        self.num_gt = np.zeros(self.num_classes, np.int64)

    def add(self, det: Detections, gt_boxes: np.ndarray, gt_labels: np.ndarray) -> None:
        for cls in range(self.num_classes):
            gt_xy = np.asarray(gt_boxes, np.float64)[np.asarray(gt_labels) == cls, :2]
            self.num_gt[cls] += len(gt_xy)
            sel = det.labels == cls
            order = np.argsort(-det.scores[sel], kind="stable")
            scores, xy = det.scores[sel][order], det.boxes[sel][order, :2]
            for th in self.thresholds:
                self.records.setdefault((cls, th), []).append((scores, match_frame(xy, gt_xy, th)))

    def ap(self) -> np.ndarray:
        """[num_classes, num_thresholds] AP (NaN for classes without ground truth)."""
        out = np.full((self.num_classes, len(self.thresholds)), np.nan)
        for cls in range(self.num_classes):
            for j, th in enumerate(self.thresholds):
                recs = self.records.get((cls, th), [])
                scores = np.concatenate([r[0] for r in recs]) if recs else np.zeros(0)
                tp = np.concatenate([r[1] for r in recs]) if recs else np.zeros(0, bool)
                out[cls, j] = average_precision(scores, tp, int(self.num_gt[cls]))
        return out

    def mean_ap(self) -> float:
        ap = self.ap()
        return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
