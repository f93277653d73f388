"""DP knapsack: optimal against brute force (≥ 200 seeded instances), bound for real costs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.sparsity.allocate import rdprune_dp, solve_mckp


def brute_force(costs, values, budget):
    best = np.inf
    for pick in itertools.product(*(range(len(c)) for c in costs)):
        if sum(c[k] for c, k in zip(costs, pick, strict=True)) <= budget + 1e-9:
            best = min(best, sum(v[k] for v, k in zip(values, pick, strict=True)))
    return best


def test_dp_matches_brute_force_on_250_integer_instances():
    rng = np.random.default_rng(1234)
    checked = 0
    for _ in range(250):
        layers, k = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        costs = [list(rng.integers(0, 30, size=k).astype(float)) for _ in range(layers)]
        values = [list(rng.random(k)) for _ in range(layers)]
        lo, hi = sum(min(c) for c in costs), sum(max(c) for c in costs)
        budget = float(rng.integers(lo, hi + 1))
        alloc = solve_mckp(costs, values, budget, resolution=1000)
        assert alloc.unit == 1.0 and alloc.error_bound.startswith("exact")
        assert alloc.total_cost <= budget
        assert alloc.total_distortion == pytest.approx(brute_force(costs, values, budget), abs=1e-12)
        kept = [[int(x) for x in c] for c in costs]
        ref = rdprune_dp([max(c) for c in kept], kept, values, int(budget))
        assert ref.total_distortion == pytest.approx(alloc.total_distortion, abs=1e-12)
        checked += 1
    assert checked >= 200


def test_dp_real_costs_feasible_and_within_stated_bound():
    rng = np.random.default_rng(7)
    for _ in range(100):
        layers, k = int(rng.integers(1, 5)), int(rng.integers(2, 5))
        costs = [list(rng.random(k) * 10) for _ in range(layers)]
        values = [list(rng.random(k)) for _ in range(layers)]
        lo, hi = sum(min(c) for c in costs), sum(max(c) for c in costs)
        budget = lo + rng.random() * (hi - lo)
        alloc = solve_mckp(costs, values, budget, resolution=50)
        assert alloc.total_cost <= budget + 1e-9
        assert alloc.total_distortion >= brute_force(costs, values, budget) - 1e-12
        tighter = budget - layers * alloc.unit
        if tighter >= lo:
            assert alloc.total_distortion <= brute_force(costs, values, tighter) + 1e-12


def test_infeasible_budget_is_a_user_error():
    with pytest.raises(SparsefuseError, match="below the smallest achievable"):
        solve_mckp([[5.0, 3.0]], [[0.0, 1.0]], 2.0)
