"""PNG plots of a sparsity plan: per-layer sparsity bars, RD curves, budget vs total distortion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


# Bar colours of the 2:4 alternatives; dense has δ = 0, which a log axis cannot draw.
NM_COLORS = {"2:4": "tab:orange", "2:4 + permutation": "tab:purple"}


def plot_nm_alternatives(
    names: Sequence[str],
    alternatives: Mapping[str, Sequence[float | None]],
    chosen: Sequence[str],
    dest: Path,
) -> Path:
    """2:4 has one level, so RD curves are a column of points: instead, per layer, grouped bars of the
    distortion of each alternative it had (``alternatives``: label -> δ per layer, None = not offered).
    Dense (δ = 0) is written under the bars; ``chosen`` is each layer's pick (dense / 2:4 / ...)."""
    fig, ax = plt.subplots(figsize=(max(6.5, 0.32 * len(names)), 4.4))
    width = 0.8 / max(len(alternatives), 1)
    drawn = [v for row in alternatives.values() for v in row if v is not None and v > 0]
    floor = min(drawn, default=1.0) / 10
    for j, (label, values) in enumerate(alternatives.items()):
        xs = [i + (j - (len(alternatives) - 1) / 2) * width for i in range(len(names))]
        heights = [v if v is not None and v > 0 else 0.0 for v in values]
        ax.bar(xs, heights, width, color=NM_COLORS.get(label, "gray"), label=label)
    for i, pick in enumerate(chosen):
        ax.annotate(pick, (i, floor), ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.removesuffix(".weight") for n in names], rotation=90, fontsize=6)
    ax.set_ylabel("δᵈ: normalized output MSE (layer alone pruned)")
    ax.set_title("2:4 alternatives per layer (dense: δ = 0; bottom label: the plan's pick)", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars reach the top
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
