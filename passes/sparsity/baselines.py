"""Baseline allocators: uniform, global magnitude, LAMP, ERK. Each returns a level per layer.

``costs[i]`` is the dense cost of layer i on the budget axis (params or FLOPs); removing a weight of
layer i saves costs[i]/params[i] (cost is linear in kept weights for these patterns), so every
baseline meets Σ costs[i]·(1 − level_i) ≤ budget_fraction · Σ costs.
- uniform: one level 1 − budget everywhere.
- global: one threshold on |w| across layers, greedy by magnitude until the budget is spent.
- LAMP (Lee et al. 2021): score(u) = w_u² / Σ_{v ≥ u} w_v² within a layer (ascending order), then
  the same global greedy on the scores.
- ERK (Evci et al., RigL): density_i ∝ Σ dims / Π dims, scaled to meet the budget; layers whose
  density would exceed 1 are kept dense and the rest is re-solved.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def uniform_levels(costs: Sequence[float], budget_fraction: float) -> list[float]:
    return [1.0 - budget_fraction] * len(costs)


def _greedy_keep(scores: Sequence[np.ndarray], costs: Sequence[float], budget_fraction: float) -> list[float]:
    """Keep the highest-scored weights globally while Σ per-weight cost ≤ budget; returns levels."""
    per_weight = np.concatenate(
        [np.full(s.size, c / max(s.size, 1)) for s, c in zip(scores, costs, strict=True)]
    )
    owner = np.concatenate([np.full(s.size, i) for i, s in enumerate(scores)])
    flat = np.concatenate([s.ravel() for s in scores])
    order = np.argsort(-flat, kind="stable")
    spent = np.cumsum(per_weight[order])
    n_keep = int(np.searchsorted(spent, budget_fraction * float(sum(costs)) * (1 + 1e-12), side="right"))
    kept = np.bincount(owner[order[:n_keep]], minlength=len(scores))
    return [1.0 - kept[i] / s.size for i, s in enumerate(scores)]


def global_levels(
    weights: Sequence[torch.Tensor], costs: Sequence[float], budget_fraction: float
) -> list[float]:
    return _greedy_keep(
        [w.detach().abs().double().flatten().numpy() for w in weights], costs, budget_fraction
    )


def lamp_scores(weight: torch.Tensor) -> np.ndarray:
    """LAMP score of every weight of one layer (flat order)."""
    sq = weight.detach().double().flatten().numpy() ** 2
    order = np.argsort(sq, kind="stable")
    sorted_sq = sq[order]
    tail = np.cumsum(sorted_sq[::-1])[::-1]  # Σ_{v ≥ u} w_v²
    scores = np.empty_like(sq)
    scores[order] = sorted_sq / np.maximum(tail, 1e-300)
    return scores


def lamp_levels(
    weights: Sequence[torch.Tensor], costs: Sequence[float], budget_fraction: float
) -> list[float]:
    return _greedy_keep([lamp_scores(w) for w in weights], costs, budget_fraction)


def erk_levels(
    shapes: Sequence[Sequence[int]], costs: Sequence[float], budget_fraction: float
) -> list[float]:
    raw = np.array([sum(s) / float(np.prod(s)) for s in shapes])
    cost = np.asarray(costs, dtype=np.float64)
    target = budget_fraction * cost.sum()
    dense = np.zeros(len(shapes), dtype=bool)
    for _ in range(len(shapes) + 1):
        free = ~dense
        left = target - cost[dense].sum()
        denom = float((raw[free] * cost[free]).sum())
        eps = left / denom if denom > 0 else 0.0
        over = free & (eps * raw > 1.0)
        if not over.any():
            break
        dense |= over
    density = np.where(dense, 1.0, np.clip(eps * raw, 0.0, 1.0))
    return [float(1.0 - d) for d in density]
