"""Decide one candidate per layer with a named allocator, and realize it as masks.

- ``mmprune4u`` / ``rdprune``: the knapsack DP on δ = δᵈ/δᵈ_ref + β·λ/λ_ref (β = 0 for rdprune).
  For unstructured params/FLOPs budgets the grid step left unused by the DP is then spent on the
  layers with the steepest distortion slope (off-grid levels, δ interpolated), so the achieved
  cost lands on the budget instead of up to one grid step below it.
- ``uniform`` / ``global`` / ``lamp`` / ``erk``: see baselines.py (params or FLOPs budgets).
- Channel pattern: removing filters also removes the consumer's input channels, which the per-layer
  cost does not see; the allocator's internal budget is bisected so the realized cost meets the
  budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.sparsity import baselines
from sparsefuse.passes.sparsity.allocate import Allocation, solve_mckp
from sparsefuse.passes.sparsity.analysis import Analysis
from sparsefuse.passes.sparsity.candidates import Candidate, candidate_cost, candidate_masks
from sparsefuse.passes.sparsity.config import SparsityConfig
from sparsefuse.passes.sparsity.regularizer import regularized_distortion

DP_ALLOCATORS = ("mmprune4u", "rdprune")


@dataclass(frozen=True)
class Decision:
    candidates: list[Candidate]
    distortion: list[float]  # δᵈ at the chosen candidate (interpolated for off-grid levels)
    lam: list[float]
    delta: list[float]
    cost: list[float]
    dense_total: float
    budget_total: float
    achieved_total: float
    dp: Allocation | None
    solve_seconds: float
    d_ref: float
    l_ref: float


def final_masks(analysis: Analysis, weights: Mapping[str, torch.Tensor], cands: Sequence[Candidate]) -> dict:
    """Name -> boolean mask for every weight touched by the decision (channel masks AND-ed)."""
    out: dict[str, torch.Tensor] = {}
    for layer, cand in zip(analysis.layers, cands, strict=True):
        for name, mask in candidate_masks(layer, weights, cand, analysis.chains.get(layer.name)).items():
            out[name] = mask if name not in out else out[name] & mask
    return out


def realized_cost(
    analysis: Analysis,
    weights: Mapping[str, torch.Tensor],
    cands: Sequence[Candidate],
    kind: str,
    latency: Mapping | None,
) -> float:
    if kind == "latency" or analysis.pattern != "channel":
        return float(
            sum(
                candidate_cost(layer, c, kind, latency)
                for layer, c in zip(analysis.layers, cands, strict=True)
            )
        )
    masks = final_masks(analysis, weights, cands)
    total = 0.0
    for layer in analysis.layers:
        kept = int(masks[layer.name].sum()) if layer.name in masks else layer.params
        total += kept if kind == "params" else layer.flops * kept / layer.params
    return total


def _interp(levels: Sequence[float], values: Sequence[float], level: float) -> float:
    return float(np.interp(level, levels, values))


def _check_floor(costs: Sequence[Sequence[float]], config: SparsityConfig, pattern: str) -> None:
    dense_total = float(sum(row[0] for row in costs))
    floor = sum(min(row) for row in costs)
    if floor > config.budget * dense_total * (1 + 1e-12):
        raise SparsefuseError(
            f"{config.budget_kind} budget {config.budget:g} is below the smallest achievable fraction "
            f"{floor / dense_total:.4f} for pattern {pattern!r}",
            f"use {_budget_form(config, _round_up(floor / dense_total))} or more, or another pattern",
        )


def _round_up(fraction: float) -> float:
    """The fraction rounded up to 4 decimals, so that the suggested budget is feasible."""
    return math.ceil(fraction * 10_000 - 1e-9) / 10_000


def _budget_form(config: SparsityConfig, fraction: float) -> str:
    if config.budget_kind == "latency":
        return f"--budget latency={config.latency_table}@{fraction:g}"
    return f"--budget {config.budget_kind}={fraction:g}"


def check_latency_table(config: SparsityConfig, latency: Mapping[str, Mapping[str, float]]) -> None:
    """Refuse a latency budget that even the table's cheapest plan (every layer at its cheapest
    ``dense@0`` / ``<pattern>@level`` entry) cannot meet. Needs only the table, so it runs before any
    forward; the exact check (``check_budget``, with the layers' real candidates) follows discovery.
    The table is assumed to list the model's prunable layers (it is profiled for this model)."""
    dense_total = floor = 0.0
    for row in latency.values():
        allowed = [ms for key, ms in row.items() if key == "dense@0" or key.startswith(f"{config.pattern}@")]
        if "dense@0" not in row or not allowed:
            continue  # candidate_cost names the missing entry once the layers are known
        dense_total += row["dense@0"]
        floor += min(allowed)
    if dense_total <= 0:
        raise SparsefuseError(f"latency table {config.latency_table} has no positive dense@0 time",
                              "profile each layer's dense@0 and its candidates (keys like unstructured@0.5)")
    _check_floor([[dense_total, floor]], config, config.pattern)


def check_budget(analysis: Analysis, config: SparsityConfig, latency: Mapping | None = None) -> None:
    """Fail fast (before the sensitivity measurement) when no candidate choice meets the budget."""
    costs = [
        [candidate_cost(layer, c, config.budget_kind, latency) for c in cands]
        for layer, cands in zip(analysis.layers, analysis.candidates, strict=True)
    ]
    _check_floor(costs, config, analysis.pattern)


def decide(
    analysis: Analysis,
    weights: Mapping[str, torch.Tensor],
    config: SparsityConfig,
    latency: Mapping | None = None,
) -> Decision:
    kind = config.budget_kind
    costs = [
        [candidate_cost(layer, c, kind, latency) for c in cands]
        for layer, cands in zip(analysis.layers, analysis.candidates, strict=True)
    ]
    dense_total = float(sum(row[0] for row in costs))
    budget = config.budget * dense_total
    _check_floor(costs, config, analysis.pattern)
    dist = analysis.distortion()
    lam = analysis.lam(config.weights())
    delta, d_ref, l_ref = regularized_distortion(dist, lam, config.effective_beta)

    def choose(b: float) -> tuple[list[Candidate], Allocation | None]:
        if config.allocator in DP_ALLOCATORS:
            alloc = solve_mckp(costs, delta, b, config.dp_resolution)
            return [analysis.candidates[i][k] for i, k in enumerate(alloc.choice)], alloc
        return _baseline(analysis, weights, config, costs, b), None

    if analysis.pattern == "channel" and kind != "latency":
        lo, hi = budget, dense_total
        cands, alloc = choose(lo)
        for _ in range(24):
            mid = 0.5 * (lo + hi)
            trial, trial_alloc = choose(mid)
            if realized_cost(analysis, weights, trial, kind, latency) <= budget:
                lo, cands, alloc = mid, trial, trial_alloc
            else:
                hi = mid
    else:
        cands, alloc = choose(budget)
    if config.allocator in DP_ALLOCATORS and analysis.pattern == "unstructured" and kind != "latency":
        cands = _fill_slack(
            analysis,
            cands,
            costs,
            delta,
            budget - realized_cost(analysis, weights, cands, kind, latency),
            kind,
        )
    chosen_d, chosen_l, chosen_delta = [], [], []
    for i, cand in enumerate(cands):
        grid = [c.level for c in analysis.candidates[i]]
        k = analysis.candidates[i].index(cand) if cand in analysis.candidates[i] else None
        for out, table in ((chosen_d, dist), (chosen_l, lam), (chosen_delta, delta)):
            out.append(float(table[i][k]) if k is not None else _interp(grid, table[i], cand.level))
    chosen_cost = [
        candidate_cost(layer, cand, kind, latency) for layer, cand in zip(analysis.layers, cands, strict=True)
    ]
    achieved = realized_cost(analysis, weights, cands, kind, latency)
    return Decision(
        cands,
        chosen_d,
        chosen_l,
        chosen_delta,
        chosen_cost,
        dense_total,
        budget,
        achieved,
        alloc,
        alloc.solve_seconds if alloc else 0.0,
        d_ref,
        l_ref,
    )


def _baseline(
    analysis: Analysis,
    weights: Mapping[str, torch.Tensor],
    config: SparsityConfig,
    costs: Sequence[Sequence[float]],
    budget: float,
) -> list[Candidate]:
    if config.budget_kind == "latency":
        raise SparsefuseError(
            f"allocator {config.allocator!r} supports params/flops budgets only",
            "use mmprune4u or rdprune with a latency table",
        )
    layers, pattern = analysis.layers, analysis.pattern
    if pattern == "2:4":
        if config.allocator != "uniform":
            raise SparsefuseError(
                f"allocator {config.allocator!r} has nothing to choose in 2:4 mode",
                "use uniform (every eligible layer 2:4), mmprune4u or rdprune",
            )
        return [c[-1] for c in analysis.candidates]
    free = [i for i, c in enumerate(analysis.candidates) if len(c) > 1]
    fixed_cost = sum(costs[i][0] for i in range(len(layers)) if i not in free)
    free_cost = [costs[i][0] for i in free]
    frac = (budget - fixed_cost) / max(sum(free_cost), 1e-300)
    if frac <= 0:
        raise SparsefuseError(
            "budget is below the cost of the layers this pattern cannot prune",
            "raise the budget or use the unstructured pattern",
        )
    frac = min(frac, 1.0)
    if config.allocator == "uniform":
        levels = baselines.uniform_levels(free_cost, frac)
    elif config.allocator == "global":
        levels = baselines.global_levels([weights[layers[i].name] for i in free], free_cost, frac)
    elif config.allocator == "lamp":
        levels = baselines.lamp_levels([weights[layers[i].name] for i in free], free_cost, frac)
    elif config.allocator == "erk":
        levels = baselines.erk_levels([layers[i].shape for i in free], free_cost, frac)
    else:
        raise ValueError(config.allocator)
    out = [c[0] for c in analysis.candidates]
    for i, level in zip(free, levels, strict=True):
        if pattern == "channel":
            filters = layers[i].shape[layers[i].out_axis]
            level = min(int(np.ceil(level * filters - 1e-9)), filters - 1) / filters
        else:  # whole weights, rounded toward removal so the budget holds
            n = layers[i].params
            level = int(np.ceil(level * n - 1e-9)) / n
        out[i] = Candidate(pattern, float(level)) if level > 0 else analysis.candidates[i][0]
    return out


def _fill_slack(
    analysis: Analysis, cands: list[Candidate], costs, delta, slack: float, kind: str
) -> list[Candidate]:
    """Spend unused budget by lowering levels (off-grid) where δ falls fastest per unit of cost."""
    if slack <= 0:
        return cands
    out = list(cands)
    moves = []
    for i, cand in enumerate(cands):
        k = analysis.candidates[i].index(cand) if cand in analysis.candidates[i] else None
        if not k:
            continue
        gain = (delta[i][k] - delta[i][k - 1]) / max(costs[i][k - 1] - costs[i][k], 1e-300)
        moves.append((gain, i, k))
    for _gain, i, k in sorted(moves, reverse=True):
        if slack <= 0:
            break
        layer = analysis.layers[i]
        per_weight = 1.0 if kind == "params" else layer.flops / layer.params
        removed = int(round(out[i].level * layer.params))
        floor_removed = int(round(analysis.candidates[i][k - 1].level * layer.params))
        give_back = min(int(np.floor(slack / per_weight + 1e-9)), removed - floor_removed)
        if give_back <= 0:
            continue
        removed -= give_back
        slack -= give_back * per_weight
        out[i] = Candidate(out[i].pattern if removed > 0 else "dense", removed / layer.params)
    return out
