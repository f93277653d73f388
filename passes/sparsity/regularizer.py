"""MMPrune4U regularizer, operational definition (docs/design.md §5).

At each modality feature site m (camera BEV, LiDAR BEV, fused BEV), every channel c is modelled as a
Gaussian over calibration frames and positions: (μ_t, σ_t²) for the unpruned model t, (μ_p, σ_p²) for
the model with only layer i at candidate k.

  a = 1/σ_t² − 1/σ_p²,   b = μ_p/σ_p² − μ_t/σ_t²
  I_c(p‖t) = E_p[(∂ₓ log p/t)²] = a²(σ_p² + μ_p²) + 2ab·μ_p + b²          (relative Fisher information)
  KL(p‖t) ≤ (σ_t²/2)·I_c(p‖t)                                            (Gaussian log-Sobolev bound)
  λ[i,k]  = Σ_m w_m · mean_c (σ_t²/2)·I_c(p‖t)
  δ[i,k]  = δᵈ[i,k]/δᵈ_ref + β·λ[i,k]/λ_ref,  δᵈ_ref, λ_ref = the largest values in the table
β = 0 is plain RD-Prune. Variances are floored at 1e-6·mean_c σ_t² + 1e-12 so that dead channels
(σ = 0, e.g. ReLU-off everywhere) give a finite, large information instead of NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

FORMULA = (
    "a=1/σt²−1/σp², b=μp/σp²−μt/σt²; I_c(p‖t)=a²(σp²+μp²)+2ab·μp+b²; "
    "λ[i,k]=Σ_m w_m·mean_c (σt²/2)·I_c(p‖t) over sites m (camera/lidar/fused BEV), per-channel Gaussians "
    "over calibration frames×positions; δ[i,k]=δᵈ[i,k]/max δᵈ + β·λ[i,k]/max λ; β=0 is RD-Prune"
)


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and (population) variance over frames × positions; shapes [C]."""

    mean: np.ndarray
    var: np.ndarray
    count: int


def site_stats(tensors: Sequence[torch.Tensor]) -> ChannelStats:
    """Statistics of a feature site from its per-frame tensors ([B,C,...] dense or [N,C] sparse)."""
    rows = [
        t.detach().double().movedim(1, -1).reshape(-1, t.shape[1])
        if t.dim() >= 2
        else t.detach().double().reshape(-1, 1)
        for t in tensors
    ]
    x = torch.cat(rows, dim=0)
    return ChannelStats(x.mean(dim=0).numpy(), x.var(dim=0, unbiased=False).numpy(), int(x.shape[0]))


def relative_fisher(t: ChannelStats, p: ChannelStats) -> np.ndarray:
    """I_c(p‖t) per channel for Gaussians (see module docstring)."""
    floor = 1e-6 * float(np.mean(t.var)) + 1e-12
    vt, vp = np.maximum(t.var, floor), np.maximum(p.var, floor)
    a = 1.0 / vt - 1.0 / vp
    b = p.mean / vp - t.mean / vt
    return a * a * (vp + p.mean**2) + 2.0 * a * b * p.mean + b * b


def log_sobolev_bound(t: ChannelStats, p: ChannelStats) -> float:
    """mean_c (σ_t²/2)·I_c(p‖t): the bound on KL(p‖t) averaged over channels."""
    floor = 1e-6 * float(np.mean(t.var)) + 1e-12
    return float(np.mean(np.maximum(t.var, floor) / 2.0 * relative_fisher(t, p)))


def site_lambdas(dense: Mapping[str, ChannelStats], pruned: Mapping[str, ChannelStats]) -> dict[str, float]:
    """Per-site bound for one (layer, candidate)."""
    return {site: log_sobolev_bound(dense[site], pruned[site]) for site in dense if site in pruned}


def combine_lambda(per_site: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """λ = Σ_m w_m · bound_m; a site without a weight gets weight 1."""
    return float(sum(weights.get(site, 1.0) * value for site, value in per_site.items()))


def regularized_distortion(
    distortion: Sequence[Sequence[float]],
    lam: Sequence[Sequence[float]],
    beta: float,
) -> tuple[list[list[float]], float, float]:
    """δ = δᵈ/δᵈ_ref + β·λ/λ_ref, with both references the largest value in the table.
    Returns (δ table, δᵈ_ref, λ_ref); a zero reference is replaced by 1 (all-zero column)."""
    d_ref = max((max(row) for row in distortion if row), default=0.0) or 1.0
    l_ref = max((max(row) for row in lam if row), default=0.0) or 1.0
    table = [
        [d / d_ref + beta * lv / l_ref for d, lv in zip(drow, lrow, strict=True)]
        for drow, lrow in zip(distortion, lam, strict=True)
    ]
    return table, d_ref, l_ref
