"""Analysis: everything measured once per (model, calibration set, pattern) and shared by allocators.

discover layers -> channel chains -> candidates -> sensitivity δᵈ (+ feature-site statistics) ->
λ per candidate (MMPrune4U). Allocation with any allocator and budget reuses one Analysis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sparsefuse.passes.sparsity.calib import default_forward
from sparsefuse.passes.sparsity.candidates import Candidate, candidate_masks, candidates_for
from sparsefuse.passes.sparsity.channel import ChannelChain, find_chains
from sparsefuse.passes.sparsity.discover import PrunableLayer, discover_layers, modality_of
from sparsefuse.passes.sparsity.obs import DEFAULT_BLOCK, DEFAULT_PERCDAMP
from sparsefuse.passes.sparsity.reconstruct import ObsOperator, candidate_changes
from sparsefuse.passes.sparsity.regularizer import combine_lambda, site_lambdas
from sparsefuse.passes.sparsity.sensitivity import Sensitivity, measure_sensitivity


@dataclass(frozen=True)
class Analysis:
    layers: list[PrunableLayer]
    candidates: list[list[Candidate]]
    chains: dict[str, ChannelChain | str]
    sensitivity: Sensitivity | None
    site_lambda: list[list[dict[str, float]]]  # [L][K] site -> bound
    pattern: str
    sites: dict[str, str] = field(default_factory=dict)
    operator: ObsOperator | None = None  # None = magnitude masking

    def lam(self, weights: Mapping[str, float]) -> list[list[float]]:
        """λ[i][k] = Σ_m w_m · bound_m (zeros when nothing was measured). ``weights`` are keyed by
        site name or by modality (the first component of the site's module path, e.g. camera)."""
        per_site = {
            site: float(weights.get(site, weights.get(path.split(".", 1)[0], 1.0)))
            for site, path in self.sites.items()
        }
        return [[combine_lambda(per, per_site) for per in row] for row in self.site_lambda]

    def distortion(self) -> list[list[float]]:
        if self.sensitivity is None:
            return [[0.0] * len(c) for c in self.candidates]
        return self.sensitivity.distortion


def feature_sites(model: torch.nn.Module, override: Mapping[str, str] | None = None) -> dict[str, str]:
    """Site name -> module path: ``override``, else ``model.feature_site_paths``, else
    ``model.feature_sites()`` (site -> module), else none (λ = 0)."""
    if override:
        return dict(override)
    paths = getattr(model, "feature_site_paths", None)
    if isinstance(paths, Mapping):
        return {str(k): str(v) for k, v in paths.items()}
    attr = getattr(model, "feature_sites", None)
    attr = attr() if callable(attr) else attr
    if isinstance(attr, Mapping):
        names = {id(m): n for n, m in model.named_modules()}
        return {str(k): (names[id(v)] if isinstance(v, torch.nn.Module) else str(v)) for k, v in attr.items()}
    return {}


def analyze(
    model: torch.nn.Module,
    frames: Sequence[Any],
    pattern: str,
    levels: int = 21,
    nm_policy: str = "valid",
    forward: Callable[[torch.nn.Module, Any], Any] = default_forward,
    measure: bool = True,
    worst_case: bool = False,
    sites: Mapping[str, str] | None = None,
    use_cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
    level_progress: Callable[[int, int, int], None] | None = None,
    before_measure: Callable[[Analysis], None] | None = None,
    modality: Callable[[str], str] | None = None,
    operator: str = "magnitude",
    percdamp: float = DEFAULT_PERCDAMP,
    block: int = DEFAULT_BLOCK,
) -> Analysis:
    """Discover, build candidates and (when ``measure``) measure δᵈ and per-site λ bounds.
    ``operator="obs"`` collects each supported layer's Hessian once on ``frames`` and measures every
    candidate with its OBS-reconstructed weights (reconstruct.py)."""
    model.eval()
    layers, traces = discover_layers(model, frames, forward, modality=modality or modality_of)
    chains = find_chains(traces[0], layers)
    cands = [candidates_for(layer, pattern, levels, nm_policy, chains.get(layer.name)) for layer in layers]
    weights = dict(model.named_parameters())
    site_map = feature_sites(model, sites)

    obs: ObsOperator | None = None

    def masks_fn(layer: PrunableLayer, cand: Candidate) -> dict[str, torch.Tensor]:
        if obs is not None:
            return candidate_changes(layer, weights, cand, chains.get(layer.name), obs)
        return candidate_masks(layer, weights, cand, chains.get(layer.name))

    sens = None
    site_lambda = [[{} for _ in c] for c in cands]
    if before_measure is not None:  # e.g. a budget check, before the expensive part
        before_measure(Analysis(layers, cands, chains, None, site_lambda, pattern, site_map))
    if operator == "obs":  # after the budget check: the Hessians cost one forward per frame
        obs = ObsOperator(model, frames, forward, layers, percdamp, block, chains)
    if measure:
        sens = measure_sensitivity(
            model, frames, forward, layers, cands, masks_fn, site_map, worst_case, use_cache, progress,
            level_progress,
        )
        site_lambda = [[site_lambdas(sens.dense_site_stats, st) for st in row] for row in sens.site_stats]
        sens.forward_counts["discovery_traced_forwards"] = float(len(traces))
        if obs is not None:
            sens.forward_counts["hessian_forwards"] = float(len(frames))
            sens.forward_counts["hessian_seconds"] = obs.seconds
    return Analysis(layers, cands, chains, sens, site_lambda, pattern, site_map, obs)
