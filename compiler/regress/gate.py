"""The latency gate: compare candidate samples with baseline samples, total and per module."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsefuse.compiler.regress.samples import LatencySamples
from sparsefuse.compiler.regress.stats import RatioCI, is_improvement, is_regression, median_ratio_ci
from sparsefuse.errors import SparsefuseError

TOTAL = "total"


@dataclass(frozen=True)
class GateConfig:
    threshold: float = 0.05  # fail when slower by more than this fraction ...
    confidence: float = 0.95  # ... at this confidence (the CI's lower bound is above 1 + threshold)
    n_boot: int = 2000
    use_reference: bool = True  # ratio of ratios when both sides carry reference samples
    # A module is blamed only when even the CI's lower bound of its added time is at least this
    # fraction of the baseline total: tiny modules with noisy ratios are not blamed.
    module_min_share: float = 0.01
    seed: int = 0


@dataclass(frozen=True)
class Verdict:
    """One compared quantity: the whole model (``total``) or one module."""

    name: str
    ci: RatioCI | None  # None: not comparable (absent on one side, or zero time)
    regressed: bool
    improved: bool
    delta_ms: float  # candidate median - baseline median
    share_of_baseline: float  # baseline median / baseline total median
    note: str = ""


@dataclass(frozen=True)
class LatencyVerdict:
    total: Verdict
    modules: tuple[Verdict, ...]
    config: GateConfig
    mode: str  # "paired", "reference-normalized" or "independent"

    @property
    def regressed(self) -> bool:
        return self.total.regressed

    def culprits(self) -> tuple[Verdict, ...]:
        """Regressed modules, largest added time first."""
        return tuple(sorted((m for m in self.modules if m.regressed), key=lambda m: -m.delta_ms))


def _mode(baseline: LatencySamples, candidate: LatencySamples, paired: bool, config: GateConfig) -> str:
    if paired:
        return "paired"
    if config.use_reference and baseline.reference_ms is not None and candidate.reference_ms is not None:
        return "reference-normalized"
    return "independent"


def _verdict(
    name: str,
    b: tuple[float, ...],
    c: tuple[float, ...],
    baseline: LatencySamples,
    candidate: LatencySamples,
    mode: str,
    config: GateConfig,
    total_median: float,
) -> Verdict:
    b_med = float(np.median(b)) if b else 0.0
    c_med = float(np.median(c)) if c else 0.0
    share = b_med / total_median if total_median > 0 else 0.0
    if (not b or not c) and name in baseline.module_point_ms and name in candidate.module_point_ms:
        b_pt, c_pt = baseline.module_point_ms[name], candidate.module_point_ms[name]
        share = b_pt / total_median if total_median > 0 else 0.0
        return Verdict(
            name, None, False, False, c_pt - b_pt, share, "no per-run module samples: point delta only"
        )
    if not b or not c or b_med <= 0 or c_med <= 0:
        note = "absent in baseline" if not b else "absent in candidate" if not c else "no measurable time"
        return Verdict(name, None, False, False, c_med - b_med, share, note)
    paired = mode == "paired" and len(b) == len(c)
    normalized = (
        mode == "reference-normalized"
        and len(b) == len(baseline.reference_ms or ())
        and len(c) == len(candidate.reference_ms or ())
    )
    ci = median_ratio_ci(
        b,
        c,
        baseline_ref_ms=baseline.reference_ms if normalized else None,
        candidate_ref_ms=candidate.reference_ms if normalized else None,
        paired=paired,
        confidence=config.confidence,
        n_boot=config.n_boot,
        seed=config.seed,
    )
    # Normalized ratios also rescale the delta, so a drifted machine does not show phantom ms.
    delta = ci.ratio * b_med - b_med
    regressed = is_regression(ci, config.threshold)
    if name != TOTAL:
        regressed = regressed and (ci.low - 1.0) * share >= config.module_min_share
    return Verdict(name, ci, regressed, is_improvement(ci, config.threshold), delta, share)


def compare(
    baseline: LatencySamples,
    candidate: LatencySamples,
    config: GateConfig = GateConfig(),
    paired: bool = False,
) -> LatencyVerdict:
    """Gate ``candidate`` against ``baseline``; paired=True for interleaved runs of one process."""
    if baseline.clock != candidate.clock:
        raise SparsefuseError(
            f"baseline was timed with the {baseline.clock!r} clock, the candidate with {candidate.clock!r}",
            f"measure the candidate with --clock {baseline.clock}, or record a new baseline",
        )
    if paired and len(baseline.total_ms) != len(candidate.total_ms):
        paired = False
    mode = _mode(baseline, candidate, paired, config)
    total_median = float(np.median(baseline.total_ms))
    total = _verdict(
        TOTAL, baseline.total_ms, candidate.total_ms, baseline, candidate, mode, config, total_median
    )
    names = sorted(
        set(baseline.modules_ms)
        | set(candidate.modules_ms)
        | (set(baseline.module_point_ms) & set(candidate.module_point_ms))
    )
    modules = tuple(
        _verdict(
            n,
            baseline.modules_ms.get(n, ()),
            candidate.modules_ms.get(n, ()),
            baseline,
            candidate,
            mode,
            config,
            total_median,
        )
        for n in names
    )
    return LatencyVerdict(total=total, modules=modules, config=config, mode=mode)
