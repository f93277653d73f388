"""The sparsity stage: analyze -> decide -> plan -> apply (torch masks, ONNX initializers) -> artifacts.

``run_sparsity_stage(model, onnx_model, config, out_dir, frames)`` is what the compile pipeline and
``sparsefuse prune`` call. The caller's model is not modified; a pruned copy is returned.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.sparsity.allocate import solve_mckp
from sparsefuse.passes.sparsity.analysis import Analysis, analyze
from sparsefuse.passes.sparsity.apply_torch import apply_plan_torch
from sparsefuse.passes.sparsity.calib import consumer_forward, default_forward, synthetic_frames
from sparsefuse.passes.sparsity.candidates import candidate_cost
from sparsefuse.passes.sparsity.channel import ChannelChain, permute_chain
from sparsefuse.passes.sparsity.config import SparsityConfig
from sparsefuse.passes.sparsity.decide import Decision, check_budget, check_latency_table, decide, final_masks
from sparsefuse.passes.sparsity.discover import discover_layers
from sparsefuse.passes.sparsity.patterns import retained_magnitude, search_permutation
from sparsefuse.passes.sparsity.plan import (
    WEIGHTS_FILE,
    LayerPlan,
    SparsityPlan,
    write_curves,
    write_plan,
    write_weights,
)
from sparsefuse.passes.sparsity.reconstruct import reconstructed_weights
from sparsefuse.passes.sparsity.regularizer import FORMULA, regularized_distortion


def load_latency_table(path: str | Path) -> dict[str, dict[str, float]]:
    """{layer: {candidate_key: ms}} from JSON (a top-level "layers" key is also accepted)."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SparsefuseError(
            f"cannot read latency table {path}: {exc}", "give a JSON file {layer: {candidate_key: ms}}"
        ) from None
    obj = obj.get("layers", obj)
    return {str(k): {str(c): float(v) for c, v in row.items()} for k, row in obj.items()}


def search_permutations(
    model: torch.nn.Module, frames: Sequence[Any], forward: Callable, nm_policy: str, seed: int = 0
) -> dict[str, dict]:
    """For every 2:4-eligible layer fed by a straight chain, find and APPLY (in place) a channel
    permutation raising the magnitude its 2:4 mask keeps. Returns {consumer: {"order", "tensors",
    "gain"}} in the plan's format; the model's function is unchanged."""
    from sparsefuse.passes.sparsity.channel import find_chains

    layers, traces = discover_layers(model, frames[:1], forward, max_frames=1)
    by_consumer = {
        c.consumer: c for c in find_chains(traces[0], layers).values() if isinstance(c, ChannelChain)
    }
    out = {}
    for layer in layers:
        ok = layer.nm_recommended if nm_policy == "tensorrt" else layer.nm_valid
        chain = by_consumer.get(layer.name)
        if not ok or chain is None:
            continue
        w = model.get_parameter(layer.name)
        before = retained_magnitude(w, layer.in_axis)
        order = search_permutation(w, layer.in_axis, seed=seed)
        perm = torch.as_tensor(order, dtype=torch.long)
        if np.array_equal(order, np.arange(order.size)):
            continue
        permute_chain(model, chain, perm)
        gain = retained_magnitude(model.get_parameter(layer.name), layer.in_axis) / max(before, 1e-300) - 1.0
        out[layer.name] = {"order": order.tolist(), "tensors": chain.tensors(), "gain": gain}
    return out


def build_plan(
    analysis: Analysis,
    decision: Decision,
    config: SparsityConfig,
    weights: Mapping[str, torch.Tensor],
    forward_counts: Mapping[str, float],
    permutations: Mapping[str, dict] | None = None,
) -> SparsityPlan:
    masks = final_masks(analysis, weights, decision.candidates)
    layer_plans, kept_total, params_total = [], 0, 0
    for i, (layer, cand) in enumerate(zip(analysis.layers, decision.candidates, strict=True)):
        kept = int(masks[layer.name].sum()) if layer.name in masks else layer.params
        kept_total += kept
        params_total += layer.params
        chain = analysis.chains.get(layer.name)
        channel = (
            (
                {"consumer": chain.consumer, "tensors": chain.tensors()}
                if isinstance(chain, ChannelChain)
                else {"refused": chain}
            )
            if analysis.pattern == "channel"
            else None
        )
        perm = dict((permutations or {}).get(layer.name) or {}) or None
        layer_plans.append(
            LayerPlan(
                name=layer.name,
                kind=layer.kind,
                modality=layer.modality,
                shape=list(layer.shape),
                pattern=cand.pattern,
                level=float(cand.level),
                params=layer.params,
                params_kept=kept,
                flops=layer.flops,
                flops_kept=layer.flops * kept / layer.params,
                distortion=decision.distortion[i],
                lam=decision.lam[i],
                delta=decision.delta[i],
                cost=decision.cost[i],
                nm_valid=layer.nm_valid,
                nm_recommended=layer.nm_recommended,
                nm_reason=layer.nm_reason,
                in_axis=layer.in_axis,
                out_axis=layer.out_axis,
                channel=channel,
                permutation=perm,
            )
        )
    site_totals = _site_totals(analysis, decision)
    dp = None
    if decision.dp is not None:
        dp = {
            "unit": decision.dp.unit,
            "error_bound": decision.dp.error_bound,
            "solve_seconds": decision.dp.solve_seconds,
            "objective": decision.dp.total_distortion,
            "resolution": config.dp_resolution,
        }
    cfg = asdict(config)
    cfg["modality_weights"] = dict(config.modality_weights)
    return SparsityPlan(
        allocator=config.allocator,
        pattern=config.pattern,
        budget_kind=config.budget_kind,
        budget_fraction=config.budget,
        budget_total=decision.budget_total,
        dense_total=decision.dense_total,
        achieved_total=decision.achieved_total,
        achieved_fraction=decision.achieved_total / decision.dense_total,
        achieved_sparsity=1.0 - kept_total / max(params_total, 1),
        beta=config.effective_beta,
        modality_weights=config.weights(),
        regularizer=FORMULA,
        normalizers={"distortion_ref": decision.d_ref, "lambda_ref": decision.l_ref},
        dp=dp,
        forward_counts=dict(forward_counts),
        sensitivity_seconds=(analysis.sensitivity.seconds if analysis.sensitivity else 0.0),
        site_lambda=site_totals,
        layers=layer_plans,
        config=cfg,
    )


def _site_totals(analysis: Analysis, decision: Decision) -> dict[str, float]:
    """Σ over layers of each site's bound at the chosen candidate (additive estimate)."""
    totals: dict[str, float] = {}
    for i, cand in enumerate(decision.candidates):
        levels = [c.level for c in analysis.candidates[i]]
        for site in analysis.sites:
            row = [per.get(site, 0.0) for per in analysis.site_lambda[i]]
            totals[site] = totals.get(site, 0.0) + float(np.interp(cand.level, levels, row))
    return totals


def nm_alternatives(analysis: Analysis, unpermuted: Mapping[str, float]) -> dict[str, list[float | None]]:
    """Label -> δ per layer of each 2:4 alternative (None where the layer did not have it). With
    permutations, ``analysis`` measured the permuted weights and ``unpermuted`` holds plain 2:4's δ
    of the permuted layers; a layer without a permutation has the same 2:4 either way."""
    measured = [
        next((d for c, d in zip(cands, row, strict=True) if c.pattern == "2:4"), None)
        for cands, row in zip(analysis.candidates, analysis.distortion(), strict=True)
    ]
    if not unpermuted:
        return {"2:4": measured}
    names = [layer.name for layer in analysis.layers]
    return {
        "2:4": [unpermuted.get(n, d) for n, d in zip(names, measured, strict=True)],
        "2:4 + permutation": [d if n in unpermuted else None for n, d in zip(names, measured, strict=True)],
    }


def unpermuted_nm_distortion(
    model: torch.nn.Module,
    frames: Sequence[Any],
    forward: Callable,
    analysis: Analysis,
    permuted: Sequence[str],
) -> dict[str, float]:
    """δ of plain 2:4 (magnitude, no permutation) for each permuted layer, on the caller's unpermuted
    model: what the permutation search bought, for the 2:4 plot. Costs one replayed candidate per layer."""
    from sparsefuse.passes.sparsity.candidates import DENSE, Candidate, candidate_masks
    from sparsefuse.passes.sparsity.sensitivity import measure_sensitivity

    layers = [layer for layer in analysis.layers if layer.name in permuted]
    if not layers:
        return {}
    base = copy.deepcopy(model).eval()
    weights = dict(base.named_parameters())
    cands = [[Candidate(DENSE, 0.0), Candidate("2:4", 0.5)] for _ in layers]
    sens = measure_sensitivity(base, frames, forward, layers, cands,
                               lambda layer, cand: candidate_masks(layer, weights, cand, None))
    return {layer.name: row[1] for layer, row in zip(layers, sens.distortion, strict=True)}


def write_artifacts(
    analysis: Analysis, plan: SparsityPlan, config: SparsityConfig, out_dir: Path, latency: Mapping | None,
    unpermuted: Mapping[str, float] | None = None,
) -> list[Path]:
    from sparsefuse.passes.sparsity import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    names = [layer.name for layer in analysis.layers]
    levels = [[c.level for c in cands] for cands in analysis.candidates]
    dist = analysis.distortion()
    lam = analysis.lam(config.weights())
    costs = [
        [candidate_cost(layer, c, config.budget_kind, latency) for c in cands]
        for layer, cands in zip(analysis.layers, analysis.candidates, strict=True)
    ]
    paths = [
        write_plan(plan, out_dir),
        write_curves(out_dir, names, levels, dist, lam, costs),
        plots.plot_layer_sparsity(plan, out_dir / "layer_sparsity.png"),
    ]
    if analysis.sensitivity is not None:
        if analysis.pattern == "2:4":  # one level: per-layer bars of its alternatives, not RD curves
            alternatives = nm_alternatives(analysis, unpermuted or {})
            chosen = [layer.pattern for layer in plan.layers]
            paths.append(plots.plot_nm_alternatives(names, alternatives, chosen, out_dir / "rd_curves.png"))
        else:
            modalities = [layer.modality for layer in analysis.layers]
            paths.append(plots.plot_rd_curves(names, modalities, levels, dist, out_dir / "rd_curves.png"))
        delta, _, _ = regularized_distortion(dist, lam, config.effective_beta)
        dense = sum(row[0] for row in costs)
        budgets = [b for b in np.linspace(0.05, 1.0, 20) if b * dense >= sum(min(r) for r in costs)]
        totals = [solve_mckp(costs, delta, b * dense, config.dp_resolution).total_distortion for b in budgets]
        paths.append(
            plots.plot_budget_curve(
                budgets, totals, config.budget, out_dir / "budget_distortion.png", config.budget_kind
            )
        )
    return paths


class _LayerReporter:
    """Runs the budget check once the layers are known, then reports each measured layer."""

    def __init__(self, check: Callable[[Analysis], None], progress: Callable[[int, int], None] | None,
                 layer_progress: Callable[[int, int, str], None] | None) -> None:
        self.check, self.progress, self.layer_progress = check, progress, layer_progress
        self.names: list[str] = []

    def before_measure(self, analysis: Analysis) -> None:
        self.check(analysis)
        self.names = [layer.name for layer in analysis.layers]
        self.done(0, len(self.names))

    def done(self, done: int, total: int) -> None:
        if self.progress and done:
            self.progress(done, total)
        if self.layer_progress:
            self.layer_progress(done, total, self.names[done] if done < len(self.names) else "")

    def level(self, layer: int, k: int, candidates: int) -> None:
        """Before candidate k of a layer: the label also says which level (of the layer's own list)."""
        if self.layer_progress:
            self.layer_progress(layer, len(self.names), f"{self.names[layer]} · level {k}/{candidates - 1}")


def run_sparsity_stage(
    model: torch.nn.Module,
    onnx_model: Any | None,
    config: SparsityConfig,
    out_dir: str | Path,
    frames: Sequence[Any],
    forward: Callable[[torch.nn.Module, Any], Any] = default_forward,
    progress: Callable[[int, int], None] | None = None,
    transforms: Sequence[Any] | None = None,
    modality: Callable[[str], str] | None = None,
    layer_progress: Callable[[int, int, str], None] | None = None,
) -> tuple[torch.nn.Module, Any | None, SparsityPlan]:
    """-> (pruned torch model with masks applied, pruned ONNX model or None, plan).

    ``frames``: calibration frames (the first ``config.calib`` are used); with ``config.synthetic``
    only their shapes and value ranges are used (random frames of the same form).
    ``transforms``: the model spec's OutputSpecs; with ``config.distortion == "consumer"`` (the
    default) δ is measured after each output's consumer transform, else on the raw outputs.
    ``modality``: parameter name -> modality tag (the model spec's ``modality_of``; default: the
    first path component when it is camera / lidar / fusion / head).
    ``progress(done, total)``: after each layer's sensitivity; ``layer_progress(done, total, label)``
    (for a display) also names the layer measured next (done = 0 before the first), as
    ``"<name> · level k/K"`` while its candidates are measured.
    """
    space = "consumer" if transforms and config.distortion == "consumer" else "raw"
    if space == "consumer":
        forward = consumer_forward(forward, list(transforms or ()))
    if not frames:
        raise SparsefuseError("no calibration frames", "pass --calib N ≥ 1 (or --synthetic)")
    latency = load_latency_table(config.latency_table) if config.budget_kind == "latency" else None
    if latency is not None:  # from the table alone: an infeasible budget is refused before any forward
        check_latency_table(config, latency)
    calib = (
        synthetic_frames(frames[0], config.calib, config.seed)
        if config.synthetic
        else list(frames)[: config.calib]
    )
    work = copy.deepcopy(model).eval()
    permutations = (
        search_permutations(work, calib, forward, config.nm_policy, config.seed)
        if config.pattern == "2:4" and config.permute
        else {}
    )
    reporter = _LayerReporter(lambda a: check_budget(a, config, latency), progress, layer_progress)
    analysis = analyze(
        work,
        calib,
        config.pattern,
        config.levels,
        config.nm_policy,
        forward,
        measure=True,
        worst_case=config.worst_case,
        progress=reporter.done,
        level_progress=reporter.level,
        before_measure=reporter.before_measure,
        modality=modality,
        operator=config.operator,
        percdamp=config.obs_percdamp,
        block=config.obs_block,
    )
    weights = {n: p.detach() for n, p in work.named_parameters()}
    decision = decide(analysis, weights, config, latency)
    counts = analysis.sensitivity.forward_counts if analysis.sensitivity else {}
    recon = (
        reconstructed_weights(analysis.operator, analysis.layers, weights, decision.candidates)
        if analysis.operator is not None
        else {}
    )
    # Masks and kept counts are computed from the reconstructed weights, as apply does.
    plan = build_plan(analysis, decision, config, weights | recon, counts, permutations)
    if recon:
        write_weights(recon, Path(out_dir))
        plan = replace(plan, weights_file=WEIGHTS_FILE, reconstructed=recon)
    plan.config["distortion_space"] = space
    plan.config["output_transforms"] = {t.name: t.transform + (f"({t.weight_by})" if t.weight_by else "")
                                        for t in (transforms or ())}
    unpermuted = (  # only the magnitude operator: OBS reconstructs, so plain 2:4 is not its alternative
        unpermuted_nm_distortion(model, calib, forward, analysis, list(permutations))
        if permutations and config.operator == "magnitude"
        else {}
    )
    write_artifacts(analysis, plan, config, Path(out_dir), latency, unpermuted)
    pruned = copy.deepcopy(model).eval()
    apply_plan_torch(pruned, plan)
    pruned_onnx = None
    if onnx_model is not None:
        from sparsefuse.passes.sparsity.apply_onnx import apply_plan_onnx

        pruned_onnx = apply_plan_onnx(onnx_model, plan)
    return pruned, pruned_onnx, plan
