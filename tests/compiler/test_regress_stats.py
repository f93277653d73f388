"""Bootstrap CI of the median ratio, the gate decision and per-module attribution."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsefuse.compiler.regress.gate import GateConfig, compare
from sparsefuse.compiler.regress.samples import LatencySamples
from sparsefuse.compiler.regress.stats import is_regression, median_ratio_ci
from sparsefuse.errors import SparsefuseError


def noisy(rng: np.random.Generator, median: float, n: int, spread: float = 0.03) -> np.ndarray:
    """Positive latencies around ``median`` with multiplicative noise and a few slow outliers."""
    x = median * np.exp(rng.normal(0.0, spread, n))
    x[rng.random(n) < 0.05] *= 3.0  # preemption-like outliers the median must ignore
    return x


def test_unchanged_distribution_ci_contains_one_and_does_not_fail():
    rng = np.random.default_rng(0)
    ci = median_ratio_ci(noisy(rng, 10.0, 200), noisy(rng, 10.0, 200))
    assert ci.low < 1.0 < ci.high
    assert not is_regression(ci, 0.05)
    assert ci.high - ci.low < 0.03


def test_ten_percent_slowdown_is_detected_and_bounded():
    rng = np.random.default_rng(1)
    ci = median_ratio_ci(noisy(rng, 10.0, 200), noisy(rng, 11.0, 200))
    assert ci.ratio == pytest.approx(1.10, abs=0.01)
    assert ci.low > 1.05 and ci.high < 1.15
    assert is_regression(ci, 0.05)


def test_paired_resampling_cancels_shared_drift():
    rng = np.random.default_rng(2)
    drift = np.linspace(1.0, 1.6, 200)  # the machine slows down during the run
    base = 10.0 * drift * np.exp(rng.normal(0, 0.01, 200))
    cand = 10.3 * drift * np.exp(rng.normal(0, 0.01, 200))
    paired = median_ratio_ci(base, cand, paired=True)
    unpaired = median_ratio_ci(base, cand, paired=False)
    assert paired.ratio == pytest.approx(1.03, abs=0.005)
    assert paired.low > 1.02 and paired.high < 1.04
    assert unpaired.high - unpaired.low > 5 * (paired.high - paired.low)


def test_reference_workload_cancels_machine_drift():
    rng = np.random.default_rng(3)
    base, ref_b = noisy(rng, 10.0, 150), noisy(rng, 2.0, 150)
    # The same model on a machine 40% slower: the model and the reference slow down alike.
    cand, ref_c = 1.4 * noisy(rng, 10.0, 150), 1.4 * noisy(rng, 2.0, 150)
    raw = median_ratio_ci(base, cand)
    normalized = median_ratio_ci(base, cand, baseline_ref_ms=ref_b, candidate_ref_ms=ref_c)
    assert is_regression(raw, 0.05)
    assert normalized.normalized and not is_regression(normalized, 0.05)
    assert normalized.ratio == pytest.approx(1.0, abs=0.03)


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.5, 3.0), seed=st.integers(0, 1000))
def test_scaled_samples_give_the_scale(scale, seed):
    """Oracle: candidate = baseline * s exactly, so every bootstrap ratio (paired) is s."""
    base = noisy(np.random.default_rng(seed), 5.0, 40)
    ci = median_ratio_ci(base, base * scale, paired=True, n_boot=200)
    assert ci.ratio == pytest.approx(scale, rel=1e-9)
    assert ci.low == pytest.approx(scale, rel=1e-9) and ci.high == pytest.approx(scale, rel=1e-9)


def test_invalid_samples_are_rejected():
    with pytest.raises(ValueError, match="at least 2"):
        median_ratio_ci([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative"):
        median_ratio_ci([1.0, -1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="paired"):
        median_ratio_ci([1.0, 2.0], [1.0, 2.0, 3.0], paired=True)


def samples(total, modules, ref=None, clock="thread") -> LatencySamples:
    return LatencySamples(
        total_ms=tuple(total),
        modules_ms={k: tuple(v) for k, v in modules.items()},
        reference_ms=None if ref is None else tuple(ref),
        clock=clock,
    )


def fake_run(rng, slow_module: str | None, extra_ms: float, n: int = 150):
    mods = {m: noisy(rng, 2.5, n, 0.02) for m in ("camera", "lidar", "fusion", "head")}
    if slow_module:
        mods[slow_module] = mods[slow_module] + extra_ms
    return sum(mods.values()), mods


def test_gate_attributes_the_slowdown_to_the_module():
    rng = np.random.default_rng(4)
    bt, bm = fake_run(rng, None, 0.0)
    ct, cm = fake_run(rng, "lidar", 1.0)  # +10% of a 10 ms total, all in lidar
    verdict = compare(samples(bt, bm), samples(ct, cm), GateConfig(), paired=True)
    assert verdict.regressed and verdict.mode == "paired"
    assert [m.name for m in verdict.culprits()] == ["lidar"]
    lidar = next(m for m in verdict.modules if m.name == "lidar")
    assert lidar.delta_ms == pytest.approx(1.0, abs=0.15)
    assert lidar.share_of_baseline == pytest.approx(0.25, abs=0.02)


def test_gate_passes_unchanged_and_respects_threshold():
    rng = np.random.default_rng(5)
    bt, bm = fake_run(rng, None, 0.0)
    ct, cm = fake_run(rng, "head", 0.3)  # +3%: below the 5% threshold
    assert not compare(samples(bt, bm), samples(ct, cm)).regressed
    assert compare(samples(bt, bm), samples(ct, cm), GateConfig(threshold=0.005)).regressed


def test_tiny_module_with_noisy_ratio_is_not_blamed():
    rng = np.random.default_rng(6)
    bt, bm = fake_run(rng, None, 0.0)
    ct, cm = fake_run(rng, None, 0.0)
    bm["other"], cm["other"] = noisy(rng, 0.02, 150), noisy(rng, 0.03, 150)  # +50% of 0.2% of total
    verdict = compare(samples(bt, bm), samples(ct, cm))
    other = next(m for m in verdict.modules if m.name == "other")
    assert other.ci.low > 1.05 and not other.regressed


def test_gate_refuses_mixed_clocks():
    a = samples([1.0, 1.1, 1.2], {}, clock="thread")
    b = samples([1.0, 1.1, 1.2], {}, clock="wall")
    with pytest.raises(SparsefuseError, match="clock"):
        compare(a, b)


def test_module_absent_on_one_side_is_reported_not_compared():
    a = samples([10.0, 10.1, 10.2], {"camera": [5.0, 5.1, 5.0]})
    b = samples([10.0, 10.1, 10.2], {"camera": [5.0, 5.1, 5.0], "new_block": [1.0, 1.0, 1.1]})
    verdict = compare(a, b)
    new = next(m for m in verdict.modules if m.name == "new_block")
    assert new.ci is None and new.note == "absent in baseline" and not new.regressed


# --- the report shows the statistic the verdict uses, and explains a sign the medians contradict ---

# Per pair the candidate is 5% faster in 7 of 9 pairs, yet its median is higher (11.4 vs 10.0 ms):
# the median of paired ratios (-5%) and the ratio of medians (+14%) disagree in sign.
PAIRED_B = [10.0] * 5 + [12.0] * 4
PAIRED_C = [9.5, 9.5, 9.5, 13.0, 13.0, 11.4, 11.4, 11.4, 11.4]


def row(md: str, part: str) -> str:
    (line,) = [line for line in md.splitlines() if line.startswith(f"| {part} |")]
    return line


def test_paired_ratio_against_the_medians_is_explained_in_its_row():
    from sparsefuse.compiler.regress.report import junit_xml, markdown

    consistent = [x * 1.1 for x in PAIRED_B]  # 10% slower in every pair and in the median
    base = samples(PAIRED_B, {"camera": PAIRED_B, "lidar": PAIRED_B})
    cand = samples(PAIRED_C, {"camera": PAIRED_C, "lidar": consistent})
    verdict = compare(base, cand, GateConfig(n_boot=200), paired=True)
    ci = verdict.total.ci
    assert ci.ratio == pytest.approx(0.95) and ci.medians_ratio == pytest.approx(1.14)
    assert (ci.faster_pairs, ci.slower_pairs) == (7, 2)
    md = markdown(verdict, base, cand)
    header = next(line for line in md.splitlines() if line.startswith("| part |"))
    assert "| change (median of paired ratios) | 95% CI |" in header
    total = row(md, "total")
    assert total.startswith("| total | 10.000 | 11.400 | -5.0% |")
    assert (
        "paired ratio: the candidate was faster in the typical interleaved pair (faster in 7, slower in 2 "
        "of 9) although its median is higher" in total
    )
    assert "paired ratio" in row(md, "camera")
    lidar = row(md, "lidar")  # consistent: +10% with a higher median, nothing to explain
    assert lidar.startswith("| lidar | 10.000 | 11.000 | +10.0% |") and "paired ratio" not in lidar
    assert "although" not in lidar
    junit = junit_xml(verdict)
    assert "change -5.0% (median of paired ratios)" in junit and "although its median is higher" in junit


def test_consistent_paired_rows_have_no_explanation():
    from sparsefuse.compiler.regress.report import markdown

    base = samples(PAIRED_B, {"camera": PAIRED_B})
    cand = samples(PAIRED_C[:3] + PAIRED_C[5:] + [9.0, 9.0], {"camera": [x * 0.9 for x in PAIRED_B]})
    verdict = compare(base, cand, GateConfig(n_boot=200), paired=True)
    md = markdown(verdict, base, cand)
    assert verdict.total.ci.explanation() == "" and "although" not in md and "drift" not in md


def test_reference_normalised_change_against_the_medians_is_explained():
    from sparsefuse.compiler.regress.report import markdown

    rng = np.random.default_rng(7)
    b, rb = 100.0 * np.exp(rng.normal(0, 0.005, 60)), np.full(60, 1.0)
    # The machine slowed by 6%, the model by only 4%: raw medians rise, the normalised change is -1.9%.
    c, rc = 104.0 * np.exp(rng.normal(0, 0.005, 60)), np.full(60, 1.06)
    base, cand = samples(b, {}, ref=rb), samples(c, {}, ref=rc)
    verdict = compare(base, cand, GateConfig(n_boot=200))
    assert verdict.mode == "reference-normalized"
    ci = verdict.total.ci
    assert ci.candidate_median_ms > ci.baseline_median_ms and ci.ratio == pytest.approx(104 / 106, abs=0.005)
    md = markdown(verdict, base, cand)
    assert "| change (ratio of reference-normalised medians) |" in md
    total = row(md, "total")
    assert f"| {ci.baseline_median_ms:.3f} | {ci.candidate_median_ms:.3f} | -1.9% |" in total
    drift = "normalised by the reference kernel's drift: the machine was 6.0% slower during the candidate's"
    assert drift in total
    assert "The reference kernel ran 6.0% slower during the candidate's run" in md
    # Same drift, model slowed alike: nothing contradicts, nothing to explain in the row.
    same = samples(c * 1.06 / 1.04, {}, ref=rc)
    same_md = markdown(compare(base, same, GateConfig(n_boot=200)), base, same)
    assert "normalised by" not in row(same_md, "total")
