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
    """The median ratio candidate / baseline (``statistic`` says which one) with its bootstrap CI."""

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
    # Reference kernel's median in the candidate's run / in the baseline's (normalized only):
    # how much the machine itself slowed down between (or during) the two measurements.
    reference_drift: float | None = None
    faster_pairs: int | None = None  # paired only: pairs in which the candidate was faster
    slower_pairs: int | None = None  # paired only: pairs in which it was slower

    @property
    def slowdown_pct(self) -> float:
        return 100.0 * (self.ratio - 1.0)

    @property
    def medians_ratio(self) -> float:
        """Raw candidate median / baseline median, as the two medians in a report read."""
        return self.candidate_median_ms / self.baseline_median_ms

    @property
    def statistic(self) -> str:
        """What ``ratio`` is, in words (the label of the number the verdict uses)."""
        if self.paired:
            return "median of paired ratios" + (", ÷ reference kernel's" if self.normalized else "")
        return "ratio of reference-normalised medians" if self.normalized else "ratio of medians"

    def explanation(self) -> str:
        """Why the statistic's sign disagrees with the raw medians' ("" when they agree), judged
        as a report prints them (0.1 %, 0.001 ms): a hidden digit is no contradiction."""
        shown = round(self.slowdown_pct, 1)
        raw = round(self.candidate_median_ms, 3) - round(self.baseline_median_ms, 3)
        if shown == 0 or raw == 0 or (shown > 0) == (raw > 0):
            return ""
        parts = []
        if self.paired and self.faster_pairs is not None and self.slower_pairs is not None:
            counts = f"faster in {self.faster_pairs}, slower in {self.slower_pairs} of {self.n_baseline}"
            faster, higher = ("faster", "higher") if shown < 0 else ("slower", "lower")
            parts.append(f"paired ratio: the candidate was {faster} in the typical interleaved pair "
                         f"({counts}) although its median is {higher}")
        if self.normalized and self.reference_drift is not None:
            drift = 100.0 * (self.reference_drift - 1.0)
            parts.append(f"normalised by the reference kernel's drift: the machine was {abs(drift):.1f}% "
                         f"{'slower' if drift >= 0 else 'faster'} during the candidate's run")
        return "; ".join(parts)

    def to_json(self) -> dict[str, float | int | bool | str | None]:
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
            "statistic": self.statistic,
            "medians_ratio": self.medians_ratio,
            "reference_drift": self.reference_drift,
            "faster_pairs": self.faster_pairs,
            "slower_pairs": self.slower_pairs,
            "explanation": self.explanation(),
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
    drift = float(np.median(rc) / np.median(rb)) if normalized else None
    faster = int(np.sum(c < b)) if paired else None
    slower = int(np.sum(c > b)) if paired else None
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
        reference_drift=drift,
        faster_pairs=faster,
        slower_pairs=slower,
    )


def is_regression(ci: RatioCI, threshold: float) -> bool:
    """Slower by more than ``threshold`` (fraction, 0.05 = 5%) with the CI's confidence."""
    return ci.low > 1.0 + threshold


def is_improvement(ci: RatioCI, threshold: float) -> bool:
    return ci.high < 1.0 - threshold
