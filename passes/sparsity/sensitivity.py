"""Per-layer rate-distortion curves δᵈ[i,k] and feature-site statistics for the regularizer.

δᵈ[i,k] = mean over calibration frames f of  (1/O) Σ_o  mean((y_o,f − ŷ_o,f)²) / var_o
where only layer i takes candidate k, y is the dense model's output o, and var_o is the variance of
output o over all its elements on the calibration set (floored at 1e-12). Normalizing each output
by its own variance makes the segmentation logits, the heatmap and the box regression count
equally although they live on different scales. ``worst_case=True`` takes the max over frames
instead of the mean (RD-Prune's ``--worst_case_curve``).

Each (layer, candidate) is evaluated through :class:`ReplayCache` (suffix-only recomputation);
``use_cache=False`` runs full forwards instead (the naive L·K·F path, kept for tests and benches).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sparsefuse.passes.sparsity.calib import flatten_outputs
from sparsefuse.passes.sparsity.candidates import Candidate
from sparsefuse.passes.sparsity.discover import PrunableLayer
from sparsefuse.passes.sparsity.regularizer import ChannelStats, site_stats
from sparsefuse.passes.sparsity.replay import ReplayCache

# (layer, candidate) -> name -> bool mask, or new values for a reconstructed weight.
MasksFn = Callable[[PrunableLayer, Candidate], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Sensitivity:
    """δᵈ per layer and candidate, feature-site statistics, and what it cost to measure."""

    distortion: list[list[float]]  # [L][K_i]
    site_stats: list[list[dict[str, ChannelStats]]]  # [L][K_i] site -> pruned-model stats
    dense_site_stats: dict[str, ChannelStats]
    forward_counts: dict[str, float]
    seconds: float


@contextmanager
def masked(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]):
    """Temporarily multiply the named weights by their boolean masks; a floating-point entry replaces
    the weight's values instead (a reconstructed layer, reconstruct.py)."""
    saved = {}
    with torch.no_grad():
        for name, mask in masks.items():
            p = model.get_parameter(name)
            saved[name] = p.detach().clone()
            if mask.dtype == torch.bool:
                p.mul_(mask.to(p.dtype))
            else:
                p.copy_(mask.to(device=p.device, dtype=p.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                model.get_parameter(name).copy_(value)


def output_variances(dense_outputs: Sequence[Any]) -> dict[str, float]:
    """Variance of every output over all its elements across the calibration frames."""
    flat = [flatten_outputs(o) for o in dense_outputs]
    return {
        k: max(float(torch.cat([f[k].double().flatten() for f in flat]).var(unbiased=False)), 1e-12)
        for k in flat[0]
    }


def frame_distortion(dense: Any, pruned: Any, variances: Mapping[str, float]) -> float:
    """(1/O) Σ_o mean squared error of output o divided by var_o, for one frame."""
    a, b = flatten_outputs(dense), flatten_outputs(pruned)
    return float(np.mean([float(((a[k].double() - b[k].double()) ** 2).mean()) / variances[k] for k in a]))


class _SiteHooks:
    """Forward hooks that keep each feature site's output per frame. A site that did not run in a
    replay (an ancestor module was reused) has, by construction, its dense output for that frame."""

    def __init__(
        self,
        model: torch.nn.Module,
        sites: Mapping[str, str],
        dense: dict[str, dict[int, torch.Tensor]] | None = None,
    ) -> None:
        self.sites = dict(sites)
        self.model = model
        self.dense = dense or {}
        self.tensors: dict[str, dict[int, torch.Tensor]] = {}
        self.frame = 0
        self.handles: list[Any] = []

    def __enter__(self):
        self.tensors = {s: {} for s in self.sites}
        for site, path in self.sites.items():
            module = self.model.get_submodule(path)
            self.handles.append(module.register_forward_hook(self._hook(site)))
        return self

    def _hook(self, site: str):
        def hook(_module, _inputs, output):
            t = (
                output
                if isinstance(output, torch.Tensor)
                else next(
                    x
                    for x in (output.values() if isinstance(output, dict) else output)
                    if isinstance(x, torch.Tensor)
                )
            )
            self.tensors[site][self.frame] = t.detach()

        return hook

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def stats(self, frames: int) -> dict[str, ChannelStats]:
        out = {}
        for site, per_frame in self.tensors.items():
            ts = [per_frame.get(f, self.dense.get(site, {}).get(f)) for f in range(frames)]
            if all(t is not None for t in ts):
                out[site] = site_stats(ts)
        return out


def measure_sensitivity(
    model: torch.nn.Module,
    frames: Sequence[Any],
    forward: Callable[[torch.nn.Module, Any], Any],
    layers: Sequence[PrunableLayer],
    candidates: Sequence[Sequence[Candidate]],
    masks_fn: MasksFn,
    sites: Mapping[str, str] | None = None,
    worst_case: bool = False,
    use_cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
    level_progress: Callable[[int, int, int], None] | None = None,
) -> Sensitivity:
    """δᵈ[i,k] for every layer and candidate (level-0 candidates cost nothing: δᵈ = 0).
    ``progress(done, layers)`` after each layer; ``level_progress(layer, k, candidates)`` before
    measuring candidate k of a layer (for a display)."""
    start = time.perf_counter()
    sites = dict(sites or {})
    layer_flops = _module_call_flops(model, layers, frames, forward)
    with _SiteHooks(model, sites) as hooks:
        hooks.frame = -1  # the recorder sets frames itself; capture per frame below
        cache = _record(model, frames, forward, layer_flops, hooks)
    dense_tensors = hooks.tensors
    dense_stats = hooks.stats(len(frames))
    variances = output_variances(cache.dense_outputs)
    dist: list[list[float]] = []
    stats: list[list[dict[str, ChannelStats]]] = []
    evaluated = 0
    for i, (layer, cands) in enumerate(zip(layers, candidates, strict=True)):
        row, srow = [], []
        for cand in cands:
            if cand.level == 0:
                row.append(0.0)
                srow.append(dense_stats)
                continue
            if level_progress:
                level_progress(i, len(row), len(cands))
            masks = masks_fn(layer, cand)
            per_frame = []
            with masked(model, masks), _SiteHooks(model, sites, dense_tensors) as hooks:
                for f in range(len(frames)):
                    hooks.frame = f
                    out = cache.replay(f, list(masks)) if use_cache else cache.full_forward(f)
                    per_frame.append(frame_distortion(cache.dense_outputs[f], out, variances))
            evaluated += 1
            row.append(float(max(per_frame) if worst_case else np.mean(per_frame)))
            srow.append(hooks.stats(len(frames)))
        dist.append(row)
        stats.append(srow)
        if progress:
            progress(i + 1, len(layers))
    total_flops = sum(layer.flops for layer in layers) or 1.0
    counts = {
        "frames": len(frames),
        "layers": len(layers),
        "candidates_evaluated": evaluated,
        "naive_full_forwards": float(sum(len(c) for c in candidates) * len(frames)),
        "needed_full_forwards_without_cache": float(evaluated * len(frames)),
        "recording_forwards": float(len(frames)),
        "flop_probe_forwards": 1.0,
        "equivalent_full_forwards": float(cache.stats.layer_flops_executed / total_flops) + len(frames),
        "module_calls_executed": float(cache.stats.executed),
        "module_calls_reused": float(cache.stats.reused),
        "used_cache": float(use_cache),
    }
    return Sensitivity(dist, stats, dense_stats, counts, time.perf_counter() - start)


def _record(model, frames, forward, layer_flops, hooks: _SiteHooks) -> ReplayCache:
    """Record the dense run frame by frame so the site hooks know which frame they see."""

    def frame_forward(m, frame):
        hooks.frame = next(i for i, f in enumerate(frames) if f is frame)
        return forward(m, frame)

    return ReplayCache(model, frames, frame_forward, layer_flops)


def _module_call_flops(
    model: torch.nn.Module, layers: Sequence[PrunableLayer], frames: Sequence[Any], forward: Callable
) -> dict[str, float]:
    """Module name -> FLOPs of one call of its prunable layer (layer FLOPs / calls per frame)."""
    counts: dict[str, int] = {}
    handles = []
    owners = {layer.name.rpartition(".")[0]: layer for layer in layers}
    for name in owners:
        module = model.get_submodule(name)
        handles.append(
            module.register_forward_pre_hook(
                lambda _m, _a, n=name: counts.__setitem__(n, counts.get(n, 0) + 1)
            )
        )
    try:
        with torch.no_grad():
            forward(model, frames[0])
    finally:
        for h in handles:
            h.remove()
    return {n: owners[n].flops / max(counts.get(n, 1), 1) for n in owners}
