"""Calibrators on synthetic histograms with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from sparsefuse.passes.precision import calibrate


def _uniform_with_outlier(n: int = 1_000_000, outlier: float = 8.0) -> list[np.ndarray]:
    """|x| uniform on [0, 1] plus one value at ``outlier``: the bulk spans 256 of the 2048 bins (the
    entropy calibrator's smallest threshold is 128 bins), and with 1e6 samples the outlier's squared
    clipping error (49) is far below the rounding error of a range stretched to 8 (1e6·(8/127)²/12 = 330)."""
    rng = np.random.default_rng(0)
    return [np.concatenate([rng.uniform(-1.0, 1.0, n), [outlier]]).astype(np.float32)]


def test_max_is_the_largest_magnitude():
    hist = calibrate.histogram([np.array([0.5, -3.0, 2.0], np.float32), np.array([1.0], np.float32)])
    assert calibrate.calibrate(hist, "max") == pytest.approx(3.0)


def test_percentile_of_uniform_data():
    rng = np.random.default_rng(1)
    data = [rng.uniform(0.0, 10.0, 500_000).astype(np.float32)]
    hist = calibrate.histogram(data)
    assert calibrate.calibrate(hist, "percentile", 90.0) == pytest.approx(9.0, abs=0.02)
    assert calibrate.calibrate(hist, "percentile", 100.0) == pytest.approx(10.0, abs=1e-3)


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_outlier_is_clipped_by_the_robust_calibrators(method):
    hist = calibrate.histogram(_uniform_with_outlier())
    assert calibrate.calibrate(hist, "max") == pytest.approx(8.0)
    amax = calibrate.calibrate(hist, method)
    # the bulk ends at 1.0, the outlier at 8 is clipped (mse: the optimum is ~1.28, where the rounding
    # error 1e6·(a/127)²/12 and the clipping error (8 - a)² balance)
    assert 0.9 <= amax <= 1.4, amax


def test_entropy_keeps_the_range_of_a_distribution_without_outliers():
    rng = np.random.default_rng(2)
    hist = calibrate.histogram([rng.uniform(-4.0, 4.0, 200_000).astype(np.float32)])
    assert calibrate.calibrate(hist, "entropy") >= 0.95 * 4.0  # clipping a flat density only hurts


def test_mse_gaussian_clips_near_the_known_optimum():
    # For int8 (127 steps) and a Gaussian, the MSE-optimal symmetric clip is about 3.9-4.3 sigma
    # (vs. > 4.5 sigma for the max of 400k samples).
    rng = np.random.default_rng(3)
    hist = calibrate.histogram([rng.normal(0.0, 1.0, 400_000).astype(np.float32)])
    amax = calibrate.calibrate(hist, "mse")
    assert 3.3 <= amax <= 4.6
    assert amax < calibrate.calibrate(hist, "max")


def test_all_zero_tensor_gets_a_valid_scale():
    hist = calibrate.histogram([np.zeros(10, np.float32)])
    for method in ("max", "percentile", "entropy", "mse"):
        assert calibrate.calibrate(hist, method) == 1.0
