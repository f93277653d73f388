"""Allocation: the multiple-choice knapsack DP (one candidate per layer, min Σδ s.t. Σcost ≤ budget).

``solve_mckp`` discretizes the budget. Each layer's costs are first shifted by the layer's cheapest
candidate (every layer must pick one), the remaining budget B' is split into S = ⌊B'/u⌋ units, and
each cost is rounded UP to whole units, so every DP solution is feasible for the real costs.

Discretization error bound: with unit u, the DP's total distortion is ≤ OPT(budget − L·u), the best
real solution with L·u less budget (any such solution still fits after rounding, since rounding adds
< u per layer). For integer costs with B' ≤ resolution, u = 1 and the solve is exact. A greedy repair
then spends the budget the rounding left unused (it only lowers Σδ and stays feasible).

``rdprune_dp`` is our direct reimplementation, from the paper's and the code digest's description,
of RD-Prune's DP over surviving-weight counts (layers sorted by size, state = surviving weights,
exact); it is the benchmark peer, not used by the compiler.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sparsefuse.errors import SparsefuseError


@dataclass(frozen=True)
class Allocation:
    """One chosen candidate index per layer and what it costs."""

    choice: tuple[int, ...]
    total_cost: float
    total_distortion: float
    unit: float
    error_bound: str
    solve_seconds: float


def _bound_text(unit: float, layers: int) -> str:
    if unit == 1.0:
        return "exact (integer costs, unit 1)"
    return (
        f"Σδ ≤ OPT(budget − L·u) with L={layers}, u={unit:.6g} "
        f"(costs rounded up to units; slack ≤ {layers * unit:.6g} cost)"
    )


def solve_mckp(
    costs: Sequence[Sequence[float]],
    values: Sequence[Sequence[float]],
    budget: float,
    resolution: int = 10_000,
) -> Allocation:
    """Minimize Σ values[i][k_i] subject to Σ costs[i][k_i] ≤ budget (one k per layer)."""
    start = time.perf_counter()
    c = [np.asarray(row, dtype=np.float64) for row in costs]
    v = [np.asarray(row, dtype=np.float64) for row in values]
    base = float(sum(row.min() for row in c))
    if base > budget * (1 + 1e-12) + 1e-12:
        raise SparsefuseError(
            f"budget {budget:.6g} is below the smallest achievable cost {base:.6g}",
            "raise the budget or allow more candidates (levels, pattern)",
        )
    remaining = max(budget - base, 0.0)
    integer = all(np.all(row == np.round(row)) for row in c)
    unit = max(1.0, remaining / resolution) if integer else (remaining / resolution or 1.0)
    if integer and unit > 1.0:
        unit = float(math.ceil(unit))
    steps = int(math.floor(remaining / unit + 1e-9))
    units = [np.ceil((row - row.min()) / unit - 1e-9).astype(np.int64) for row in c]
    dp = np.zeros(steps + 1)
    choice = np.zeros((len(c), steps + 1), dtype=np.int8 if max(map(len, c)) < 128 else np.int16)
    for i, (q_row, v_row) in enumerate(zip(units, v, strict=True)):
        new = np.full(steps + 1, np.inf)
        arg = choice[i]
        for k in np.argsort(q_row, kind="stable"):
            q = int(q_row[k])
            if q > steps:
                continue
            cand = dp[: steps + 1 - q] + v_row[k]
            tail = new[q:]
            better = cand < tail
            np.copyto(tail, cand, where=better)
            np.copyto(arg[q:], k, where=better)
        dp = new
    picks = []
    s = steps
    for i in range(len(c) - 1, -1, -1):
        k = int(choice[i, s])
        picks.append(k)
        s -= int(units[i][k])
    picks.reverse()
    picks = _spend_slack(c, v, picks, budget)
    total_cost = float(sum(c[i][k] for i, k in enumerate(picks)))
    total = float(sum(v[i][k] for i, k in enumerate(picks)))
    return Allocation(
        tuple(picks), total_cost, total, unit, _bound_text(unit, len(c)), time.perf_counter() - start
    )


def _spend_slack(c: list[np.ndarray], v: list[np.ndarray], picks: list[int], budget: float) -> list[int]:
    """Greedy repair after rounding: while budget is left, switch the one layer whose move to a
    costlier candidate lowers Σ values most per unit of extra cost (still ≤ budget). Only improves."""
    picks = list(picks)
    width = max(len(row) for row in c)
    cost = np.full((len(c), width), np.inf)
    value = np.full((len(c), width), np.inf)
    for i, (crow, vrow) in enumerate(zip(c, v, strict=True)):
        cost[i, : len(crow)] = crow
        value[i, : len(vrow)] = vrow
    rows = np.arange(len(c))
    slack = budget - float(cost[rows, picks].sum())
    while True:
        extra = cost - cost[rows, picks][:, None]
        gain = value[rows, picks][:, None] - value
        ok = (extra > 0) & (extra <= slack * (1 + 1e-12) + 1e-12) & (gain > 0)
        if not ok.any():
            return picks
        ratio = np.where(ok, gain / np.where(ok, extra, 1.0), -1.0)
        i, j = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        slack -= float(extra[i, j])
        picks[int(i)] = int(j)


def rdprune_dp(
    weights: Sequence[int],
    kept: Sequence[Sequence[int]],
    distortion: Sequence[Sequence[float]],
    target_kept: int,
) -> Allocation:
    """RD-Prune's DP, reimplemented: layers sorted by weight count; dp[n, s] = min summed distortion
    of the first n layers with at most s surviving weights, s = 0..target_kept, transition
    dp[n, s] = min_k D_n,k + dp[n−1, s − kept_n,k]; backtrack from s = target_kept. Exact, O(L·S·K)."""
    start = time.perf_counter()
    order = np.argsort(np.asarray(weights), kind="stable")
    steps = int(target_kept)
    dp = np.zeros(steps + 1)
    g = np.zeros((len(order), steps + 1), dtype=np.int8 if max(map(len, kept)) < 128 else np.int16)
    for n, layer in enumerate(order):
        new = np.full(steps + 1, np.inf)
        for k, (w_kept, d) in enumerate(zip(kept[layer], distortion[layer], strict=True)):
            w_kept = int(w_kept)
            if w_kept > steps:
                continue
            cand = dp[: steps + 1 - w_kept] + d
            tail = new[w_kept:]
            better = cand < tail
            np.copyto(tail, cand, where=better)
            np.copyto(g[n, w_kept:], k, where=better)
        dp = new
    if not np.isfinite(dp[steps]):
        raise SparsefuseError(
            "RD-Prune DP: target below the smallest achievable weight count", "raise the target"
        )
    picks = np.zeros(len(order), dtype=np.int64)
    s = steps
    for n in range(len(order) - 1, -1, -1):
        layer = order[n]
        k = int(g[n, s])
        picks[layer] = k
        s -= int(kept[layer][k])
    total_cost = float(sum(kept[i][k] for i, k in enumerate(picks)))
    total = float(sum(distortion[i][k] for i, k in enumerate(picks)))
    return Allocation(
        tuple(int(k) for k in picks),
        total_cost,
        total,
        1.0,
        "exact (surviving-weight counts)",
        time.perf_counter() - start,
    )
