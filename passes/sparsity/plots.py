"""PNG plots of a sparsity plan: per-layer sparsity bars, RD curves, budget vs total distortion."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sparsefuse.atomic import atomic_path  # noqa: E402
from sparsefuse.passes.sparsity.plan import SparsityPlan  # noqa: E402

COLORS = {
    "camera": "tab:blue",
    "lidar": "tab:orange",
    "fusion": "tab:green",
    "head": "tab:red",
    "other": "tab:gray",
}


def _save(fig, dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return dest


def _legend(ax, modalities: Sequence[str]) -> None:
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=COLORS.get(m, "gray"), label=m) for m in dict.fromkeys(modalities)],
        loc="upper right",
        fontsize=8,
    )


def plot_layer_sparsity(plan: SparsityPlan, dest: Path) -> Path:
    layers = plan.layers
    sparsity = [1.0 - layer.params_kept / layer.params for layer in layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(layers)), 4.0))
    ax.bar(range(len(layers)), sparsity, color=[COLORS.get(layer.modality, "gray") for layer in layers])
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([layer.name.removesuffix(".weight") for layer in layers], rotation=90, fontsize=6)
    ax.set_ylim(0, 1)
    ax.set_ylabel("sparsity (fraction of weights removed)")
    ax.set_title(
        f"{plan.allocator} · {plan.pattern} · {plan.budget_kind} budget {plan.budget_fraction:g} · "
        f"achieved sparsity {plan.achieved_sparsity:.3f}",
        fontsize=9,
    )
    _legend(ax, [layer.modality for layer in layers])
    return _save(fig, dest)


def plot_rd_curves(
    names: Sequence[str],
    modalities: Sequence[str],
    levels: Sequence[Sequence[float]],
    distortion: Sequence[Sequence[float]],
    dest: Path,
) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for _name, mod, lv, d in zip(names, modalities, levels, distortion, strict=True):
        pts = [(x, y) for x, y in zip(lv, d, strict=True) if x > 0 and y > 0]
        if pts:
            ax.plot(*zip(*pts, strict=True), color=COLORS.get(mod, "gray"), alpha=0.6, lw=1, marker=".", ms=3)
    ax.set_yscale("log")
    ax.set_xlabel("level (fraction removed)")
    ax.set_ylabel("δᵈ: normalized output MSE (layer alone pruned)")
    ax.set_title("per-layer rate-distortion curves", fontsize=9)
    _legend(ax, modalities)
    return _save(fig, dest)


def plot_budget_curve(
    budgets: Sequence[float], totals: Sequence[float], chosen: float, dest: Path, label: str
) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(budgets, totals, marker="o", color="tab:purple")
    ax.axvline(chosen, color="gray", ls="--", lw=1, label="this plan's budget")
    ax.set_xlabel(f"budget ({label}, fraction of dense kept)")
    ax.set_ylabel("Σ δ over layers (DP objective)")
    ax.set_title("budget vs total distortion", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, dest)
