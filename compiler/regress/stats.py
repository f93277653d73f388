"""Noise-aware comparison of two latency distributions.

The statistic is the median ratio, candidate / baseline (> 1 means slower): for interleaved
(paired) runs the median of the per-pair ratios, otherwise the ratio of the two medians. Its
confidence interval comes from a percentile bootstrap. When both sides carry an in-run
reference workload (a fixed kernel timed right after each model run), every run is divided by
its reference run first, so a machine that got slower between (or during) the two
measurements cancels out: a ratio of ratios.

Measured on this shared 2-core machine (bench/regress_noise.py, baseline stored minutes before
the candidate, four benchmark runs): without the reference 1 to 9 of 10 unchanged runs raised
a false alarm; with it 0 of 10 each time. It leaves up to about ±5% of drift, though, so across
time only larger slowdowns are caught reliably: interleaved (paired) runs are the sensitive mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BOOTSTRAP = 2000


@dataclass(frozen=True)
class RatioCI:
    """Ratio of medians (candidate / baseline) with its bootstrap confidence interval."""

    ratio: float
    low: float
    high: float
    confidence: float
    baseline_median_ms: float
    candidate_median_ms: float
    n_baseline: int
    n_candidate: int
    normalized: bool  # divided by the reference workload's ratio (ratio of ratios)
    paired: bool  # resampled jointly (interleaved runs of equal count)

    @property
    def slowdown_pct(self) -> float:
        return 100.0 * (self.ratio - 1.0)

    def to_json(self) -> dict[str, float | int | bool]:
        return {
            "ratio": self.ratio,
            "ci_low": self.low,
            "ci_high": self.high,
            "confidence": self.confidence,
            "baseline_median_ms": self.baseline_median_ms,
            "candidate_median_ms": self.candidate_median_ms,
            "n_baseline": self.n_baseline,
            "n_candidate": self.n_candidate,
            "normalized": self.normalized,
            "paired": self.paired,
        }


def _as_samples(values: np.ndarray | list[float] | tuple[float, ...], what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size < 2:
        raise ValueError(f"{what}: need at least 2 samples, got {arr.size}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.median(arr) <= 0:
        raise ValueError(f"{what}: samples must be finite, non-negative, with a positive median")
    # A resample of a mostly-zero module could have median 0; keep ratios finite.
    return np.maximum(arr, 1e-9)


def _boot_medians(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Median of x over each bootstrap row of indices idx[n_boot, n] -> [n_boot]."""
    return np.median(x[idx], axis=1)


def median_ratio_ci(
    baseline_ms: np.ndarray | list[float] | tuple[float, ...],
    candidate_ms: np.ndarray | list[float] | tuple[float, ...],
    *,
    baseline_ref_ms: np.ndarray | list[float] | tuple[float, ...] | None = None,
    candidate_ref_ms: np.ndarray | list[float] | tuple[float, ...] | None = None,
    paired: bool = False,
    confidence: float = 0.95,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> RatioCI:
    """Bootstrap CI (two-sided, level ``confidence``) of the median ratio candidate/baseline.

    paired: the i-th baseline and candidate samples were taken back to back (interleaved); the
    statistic is median(candidate_i / baseline_i), resampled over pairs, so drift cancels.
    *_ref_ms: reference-workload samples taken next to each model run (same length as the
    model samples); with both given the statistic is the ratio of ratios.
    """
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    b = _as_samples(baseline_ms, "baseline")
    c = _as_samples(candidate_ms, "candidate")
    normalized = baseline_ref_ms is not None and candidate_ref_ms is not None
    if normalized:
        rb = _as_samples(baseline_ref_ms, "baseline reference")
        rc = _as_samples(candidate_ref_ms, "candidate reference")
        if rb.size != b.size or rc.size != c.size:
            raise ValueError("reference samples must pair one-to-one with the model samples")
    if paired and b.size != c.size:
        raise ValueError("paired comparison needs equal sample counts")

    b_median_ms, c_median_ms = float(np.median(b)), float(np.median(c))
    rng = np.random.default_rng(seed)
    idx_b = rng.integers(0, b.size, size=(n_boot, b.size))
    if paired:
        # Median of the per-pair ratios: drift common to both runs of a pair cancels exactly.
        pair = c / b
        boot, point = _boot_medians(pair, idx_b), float(np.median(pair))
        if normalized:
            ref_pair = rc / rb
            boot, point = boot / _boot_medians(ref_pair, idx_b), point / float(np.median(ref_pair))
    else:
        if normalized:
            # Each run divided by the reference run right after it: contention bursts shorter
            # than a whole measurement cancel too, not only the slow drift between the two.
            b, c = b / rb, c / rc
        idx_c = rng.integers(0, c.size, size=(n_boot, c.size))
        boot = _boot_medians(c, idx_c) / _boot_medians(b, idx_b)
        point = float(np.median(c) / np.median(b))
    alpha = 1.0 - confidence
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return RatioCI(
        ratio=point,
        low=float(low),
        high=float(high),
        confidence=confidence,
        baseline_median_ms=b_median_ms,
        candidate_median_ms=c_median_ms,
        n_baseline=int(b.size),
        n_candidate=int(c.size),
        normalized=normalized,
        paired=paired,
    )


def is_regression(ci: RatioCI, threshold: float) -> bool:
    """Slower by more than ``threshold`` (fraction, 0.05 = 5%) with the CI's confidence."""
    return ci.low > 1.0 + threshold


def is_improvement(ci: RatioCI, threshold: float) -> bool:
    return ci.high < 1.0 - threshold
