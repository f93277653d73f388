"""profile.png: latency histogram (measured) and per-module bars, with the label in the title."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from sparsefuse.atomic import atomic_path

if TYPE_CHECKING:
    from sparsefuse.targets.profiler import Profile


def plot_profile(profile: Profile, out_png: str | os.PathLike[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modules = profile.per_module_ms()
    fig, (ax_hist, ax_bar) = plt.subplots(1, 2, figsize=(11, 4))
    label = profile.label.upper()
    if profile.samples_ms:
        ax_hist.hist(profile.samples_ms, bins=min(40, max(5, len(profile.samples_ms) // 3)), color="#4c72b0")
        median = float(np.median(profile.samples_ms))
        ax_hist.axvline(median, color="k", linestyle="--", label=f"median {median:.2f} ms")
        ax_hist.legend()
        ax_hist.set_xlabel("end-to-end latency [ms]")
        ax_hist.set_ylabel("runs")
    else:
        total = profile.to_json()["latency_ms"].get("total", 0.0)
        ax_hist.text(0.5, 0.5, f"estimated total\n{total:.3f} ms", ha="center", va="center", fontsize=14)
        ax_hist.set_axis_off()
    ax_hist.set_title(f"{label}: {profile.target} ({profile.backend})")
    names = list(modules)
    bars = ax_bar.barh(names, [modules[n] for n in names], color="#dd8452")
    ax_bar.bar_label(bars, labels=[f"{modules[n]:.3g}" for n in names], fontsize=8, padding=2)
    if names:  # room right of the longest bar for its label (it was clipped at the axes' edge)
        ax_bar.set_xlim(0, max(max(modules.values()), 1e-9) * 1.2)
    ax_bar.invert_yaxis()
    ax_bar.set_xlabel("time per inference [ms]")
    ax_bar.set_title(f"{label}: per module")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
