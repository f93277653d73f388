"""Activation calibrators: the clipping range ``amax`` of a per-tensor symmetric INT8 scale
(scale = amax / 127) from a histogram of |x| over the calibration frames.

- ``max``: the largest |x| seen;
- ``percentile``: the p-th percentile of |x| (99.99 by default);
- ``entropy``: TensorRT's KL-divergence calibration: the clipping threshold whose 128-level
  quantized distribution diverges least from the reference distribution (outliers folded into the
  last bin);
- ``mse``: the threshold minimising the expected squared error of quantize-dequantize (rounding
  inside the range, clipping beyond it), computed from the histogram's bin centres.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NUM_BINS = 2048  # TensorRT's entropy calibrator histogram size
INT8_MAX = 127
_QUANT_BINS = 128  # levels of the non-negative half of a symmetric int8 grid


@dataclass(frozen=True)
class Histogram:
    """Counts of |x| in NUM_BINS equal bins over [0, top]; ``top`` = max |x| (the ``max`` answer)."""

    counts: np.ndarray  # [NUM_BINS] float64
    top: float

    @property
    def width(self) -> float:
        return self.top / len(self.counts)

    @property
    def centers(self) -> np.ndarray:
        return (np.arange(len(self.counts)) + 0.5) * self.width


def histogram(arrays: Sequence[np.ndarray], bins: int = NUM_BINS) -> Histogram:
    """The |x| histogram of all ``arrays`` (one per calibration frame) over one common range."""
    top = max((float(np.max(np.abs(a))) for a in arrays if a.size), default=0.0)
    counts = np.zeros(bins, np.float64)
    if top <= 0.0:
        return Histogram(counts, 0.0)
    for a in arrays:
        counts += np.histogram(np.abs(a.astype(np.float64)), bins=bins, range=(0.0, top))[0]
    return Histogram(counts, top)


def calibrate(hist: Histogram, method: str, percentile: float = 99.99) -> float:
    """amax (> 0) by ``method`` (max | percentile | entropy | mse); an all-zero tensor gets 1.0
    so that its scale stays valid (it quantizes exactly to 0 either way)."""
    if hist.top <= 0.0 or hist.counts.sum() == 0:
        return 1.0
    if method == "max":
        return hist.top
    if method == "percentile":
        return amax_percentile(hist, percentile)
    if method == "entropy":
        return amax_entropy(hist)
    if method == "mse":
        return amax_mse(hist)
    raise ValueError(f"unknown calibrator {method!r}")


def amax_percentile(hist: Histogram, percentile: float) -> float:
    """The upper edge of the bin where the cumulative count reaches ``percentile`` %."""
    cdf = np.cumsum(hist.counts) / hist.counts.sum()
    index = int(np.searchsorted(cdf, percentile / 100.0 - 1e-12))
    return float(min(index + 1, len(hist.counts)) * hist.width)


def amax_entropy(hist: Histogram) -> float:
    """TensorRT-style KL calibration: for each threshold bin i >= 128, P = counts[:i] with the tail
    folded into bin i-1, Q = P merged into 128 levels and spread back over its non-empty bins;
    the threshold is the upper edge of the i with the least KL(P || Q)."""
    counts = hist.counts
    best_kl, best_i = np.inf, len(counts)
    for i in range(_QUANT_BINS, len(counts) + 1):
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()
        q = _expand(_merge(counts[:i], _QUANT_BINS), counts[:i] > 0, i)
        kl = _kl(p, q)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(best_i * hist.width)


def _merge(p: np.ndarray, levels: int) -> np.ndarray:
    """Sum of ``p`` over ``levels`` equal groups of bins (the last group takes the remainder)."""
    edges = (np.arange(levels + 1) * len(p)) // levels
    return np.add.reduceat(p, edges[:-1])


def _expand(merged: np.ndarray, nonzero: np.ndarray, n: int) -> np.ndarray:
    """Spread each group's mass evenly over its non-empty bins."""
    edges = (np.arange(len(merged) + 1) * n) // len(merged)
    group = np.repeat(np.arange(len(merged)), np.diff(edges))
    filled = np.bincount(group, weights=nonzero.astype(np.float64), minlength=len(merged))
    per_bin = np.divide(merged, filled, out=np.zeros_like(merged), where=filled > 0)
    return np.where(nonzero, per_bin[group], 0.0)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / p.sum(), q / max(q.sum(), 1e-300)
    mask = p > 0
    if np.any(q[mask] == 0):
        return float("inf")
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def amax_mse(hist: Histogram, candidates: int = 256) -> float:
    """The amax (among ``candidates`` evenly spaced thresholds up to ``top``) minimising
    sum_bins count · (c - clip(round(c / s), 127) · s)^2 with s = amax / 127, c the bin centres."""
    centers, counts = hist.centers, hist.counts
    best_err, best = np.inf, hist.top
    for amax in np.linspace(hist.top / candidates, hist.top, candidates):
        step = amax / INT8_MAX
        deq = np.minimum(np.round(centers / step), INT8_MAX) * step
        err = float(np.sum(counts * (centers - deq) ** 2))
        if err < best_err:
            best_err, best = err, float(amax)
    return best
