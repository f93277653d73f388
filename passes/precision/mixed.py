"""Mixed precision by the sparsity stage's DP: joint {fp16, int8} x {dense, 2:4} allocation under a
latency budget (docs/design.md §5-§6).

Per layer, candidates ``"<precision>/<sparsity key>"``: ``fp16/dense@0`` always; ``fp16/2:4@0.5`` where
the layer is 2:4-eligible along its reduction axis; ``int8/dense@0`` (and ``int8/2:4@0.5``) where the
layer can carry Q/DQ (conv / linear weights; sparse-conv custom ops stay fp16, their op contract has
no INT8 I/O). Cost: latency [ms] from a ``{layer: {candidate key: ms}}`` table, estimated by the
cost model (:func:`estimated_table`) or measured. Distortion: mixed_measure.py. Allocation:
allocate.solve_mckp (min Σδ s.t. Σ ms ≤ budget); an infeasible budget is refused before any
distortion forward, with the minimum feasible value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx
import torch

from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.precision import mixed_measure
from sparsefuse.passes.sparsity.allocate import Allocation, solve_mckp
from sparsefuse.passes.sparsity.apply_torch import reapply_masks
from sparsefuse.passes.sparsity.discover import PrunableLayer, discover_layers
from sparsefuse.passes.sparsity.patterns import nm_mask

SCHEMA_VERSION = 1
INT8_KINDS = frozenset({"conv1d", "conv2d", "conv3d", "linear", "conv_transpose2d"})
SPARSITY_KEYS = {"dense": "dense@0", "2:4": "2:4@0.5"}
REFERENCE = "fp16/dense@0"


@dataclass(frozen=True)
class MixedCandidate:
    """One (precision, pattern) choice of a layer; ``key`` names it in latency tables."""

    precision: str  # "fp16" | "int8"
    pattern: str  # "dense" | "2:4"

    @property
    def key(self) -> str:
        return f"{self.precision}/{SPARSITY_KEYS[self.pattern]}"


@dataclass(frozen=True)
class MixedBudget:
    """Latency budget: a fraction of the all-fp16-dense latency, or absolute milliseconds."""

    fraction: float | None = None
    ms: float | None = None

    def resolve(self, reference_ms: float) -> float:
        """The budget [ms] given the all-fp16-dense latency [ms]."""
        return float(self.ms) if self.ms is not None else float(self.fraction or 0.0) * reference_ms


def parse_budget(text: str) -> MixedBudget:
    """``"0.7"`` -> 70 % of the all-fp16-dense latency; ``"12ms"`` / ``"12.5 ms"`` -> 12.5 ms."""
    raw = str(text).strip().lower()
    is_ms = raw.endswith("ms")
    try:
        value = float(raw[:-2] if is_ms else raw)
    except ValueError:
        value = -1.0
    if value <= 0 or (not is_ms and value > 1.0):
        raise SparsefuseError(
            f"latency budget '{text}' is neither a fraction in (0, 1] nor a time like '12ms'",
            "use --latency-budget 0.7 (70 % of the all-fp16-dense latency) or --latency-budget 12ms",
        )
    return MixedBudget(ms=value) if is_ms else MixedBudget(fraction=value)


def int8_eligible(layer: PrunableLayer) -> bool:
    """Conv / linear weights can carry Q/DQ; sparse-conv custom ops cannot (no INT8 I/O)."""
    return layer.kind in INT8_KINDS and (layer.kind != "conv_transpose2d" or layer.groups == 1)


def mixed_candidates(layer: PrunableLayer, nm_policy: str = "tensorrt") -> list[MixedCandidate]:
    """The layer's candidates, fp16 dense first (``nm_policy``: "tensorrt" = nm_recommended,
    else nm_valid)."""
    nm_ok = layer.nm_recommended if nm_policy == "tensorrt" else layer.nm_valid
    patterns = ["dense", "2:4"] if nm_ok else ["dense"]
    precisions = ["fp16", "int8"] if int8_eligible(layer) else ["fp16"]
    return [MixedCandidate(p, s) for p in precisions for s in patterns]


def estimated_table(onnx_model: onnx.ModelProto, target: Any,
                    dims: Mapping[str, int] | None = None) -> dict[str, dict[str, float]]:
    """{layer: {mixed key: ms}} from the cost model at FP16 and INT8 rates (labelled estimated)."""
    from sparsefuse.targets.cost_model import latency_table

    table: dict[str, dict[str, float]] = {}
    for precision in ("fp16", "int8"):
        part = latency_table(onnx_model, target, tuple(SPARSITY_KEYS.values()), dims, precision)
        for layer, row in part.items():
            for key, ms in row.items():
                table.setdefault(layer, {})[f"{precision}/{key}"] = ms
    return table


def cost_rows(layers: Sequence[PrunableLayer], candidates: Sequence[Sequence[MixedCandidate]],
              table: Mapping[str, Mapping[str, float]]) -> list[list[float]]:
    """costs[i][k] [ms] from the table; a missing entry is a user error."""
    rows = []
    for layer, cands in zip(layers, candidates, strict=True):
        row = table.get(layer.name, {})
        missing = [c.key for c in cands if c.key not in row]
        if missing:
            raise SparsefuseError(
                f"latency table has no entry for layer {layer.name!r}, candidate {missing[0]!r}",
                "give every (layer, candidate) key, e.g. fp16/dense@0, int8/2:4@0.5",
            )
        rows.append([float(row[c.key]) for c in cands])
    return rows


def check_feasible(costs: Sequence[Sequence[float]], budget_ms: float, reference_ms: float) -> None:
    """Refuse a budget below the cheapest plan (one line, with the minimum feasible value)."""
    cheapest = sum(min(row) for row in costs)
    if budget_ms < cheapest * (1 - 1e-12):
        raise SparsefuseError(
            f"latency budget {budget_ms:.4g} ms is below the fastest mixed plan's {cheapest:.4g} ms",
            f"use --latency-budget {cheapest:.4g}ms or a fraction >= {cheapest / reference_ms:.4f} "
            "of the all-fp16-dense latency",
        )


@dataclass(frozen=True)
class MixedPlan:
    """The chosen candidate per layer with its cost and distortion, and provenance."""

    layers: tuple[PrunableLayer, ...]
    candidates: tuple[tuple[MixedCandidate, ...], ...]
    costs: tuple[tuple[float, ...], ...]
    distortion: tuple[tuple[float, ...], ...]
    allocation: Allocation
    budget_ms: float
    reference_ms: float
    latency_source: dict[str, Any]

    def chosen(self) -> dict[str, MixedCandidate]:
        return {layer.name: self.candidates[i][k] for i, (layer, k) in
                enumerate(zip(self.layers, self.allocation.choice, strict=True))}

    def int8_layers(self) -> list[str]:
        return [name for name, c in self.chosen().items() if c.precision == "int8"]

    def sparse_layers(self) -> list[str]:
        return [name for name, c in self.chosen().items() if c.pattern == "2:4"]

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON (plan.json)."""
        layers = {}
        for i, (layer, k) in enumerate(zip(self.layers, self.allocation.choice, strict=True)):
            cand = self.candidates[i][k]
            layers[layer.name] = {
                "precision": cand.precision, "pattern": cand.pattern, "key": cand.key,
                "kind": layer.kind, "latency_ms": self.costs[i][k], "distortion": self.distortion[i][k],
                "candidates": {c.key: {"latency_ms": self.costs[i][j], "distortion": self.distortion[i][j]}
                               for j, c in enumerate(self.candidates[i])}}
        return {
            "schema_version": SCHEMA_VERSION, "kind": "mixed-precision",
            "budget": {"ms": self.budget_ms, "fraction_of_fp16_dense": self.budget_ms / self.reference_ms},
            "latency": {**self.latency_source, "predicted_ms": self.allocation.total_cost,
                        "all_fp16_dense_ms": self.reference_ms,
                        "all_cheapest_ms": sum(min(r) for r in self.costs)},
            "distortion": {"predicted": self.allocation.total_distortion,
                           "metric": "Σ_i δ[i,k_i], δ = mean over frames of (1/O) Σ_o MSE_o / var_o "
                                     "(consumer space; only layer i changed)"},
            "allocation": {"solver": "solve_mckp", "unit_ms": self.allocation.unit,
                           "error_bound": self.allocation.error_bound,
                           "solve_seconds": self.allocation.solve_seconds},
            "counts": {"int8": len(self.int8_layers()), "2:4": len(self.sparse_layers()),
                       "layers": len(self.layers)},
            "layers": layers,
        }


def allocate_mixed(model: torch.nn.Module, frames: Sequence[Any], forward: mixed_measure.Forward,
                   table: Mapping[str, Mapping[str, float]], budget: MixedBudget,
                   layers: Sequence[PrunableLayer] | None = None, nm_policy: str = "tensorrt",
                   latency_source: Mapping[str, Any] | None = None, resolution: int = 10_000) -> MixedPlan:
    """Joint precision x 2:4 allocation. ``table``: {layer: {key: ms}} (:func:`estimated_table`
    or measured); ``latency_source``: its provenance for the plan (e.g. label "estimated", cost
    model name and version, target). ``layers``: default discovered by one traced forward.
    Layers absent from the table are left out (fp16 dense). The budget is checked before any
    distortion forward."""
    if layers is None:
        layers, _ = discover_layers(model, frames[:1], forward, max_frames=1)
    layers = [layer for layer in layers if layer.name in table]
    if not layers:
        raise SparsefuseError("no layer of the model is in the latency table",
                              "build the table from this model's export (estimated_table)")
    cands = [mixed_candidates(layer, nm_policy) for layer in layers]
    costs = cost_rows(layers, cands, table)
    reference = sum(row[0] for row in costs)  # fp16/dense@0 is first
    budget_ms = budget.resolve(reference)
    check_feasible(costs, budget_ms, reference)
    amax = mixed_measure.calibrate_inputs(model, frames, forward, layers)
    delta = mixed_measure.measure_mixed(model, frames, forward, layers,
                                        [[(c.precision, c.pattern) for c in row] for row in cands], amax)
    alloc = solve_mckp(costs, delta, budget_ms, resolution)
    return MixedPlan(tuple(layers), tuple(tuple(r) for r in cands), tuple(tuple(r) for r in costs),
                     tuple(tuple(r) for r in delta), alloc, budget_ms, reference,
                     dict(latency_source or {"label": "table"}))


def estimated_source(target: Any) -> dict[str, Any]:
    """Provenance of :func:`estimated_table` numbers."""
    from sparsefuse.targets.cost_model import COST_MODEL_NAME, COST_MODEL_VERSION

    return {"label": "estimated", "cost_model": {"name": COST_MODEL_NAME, "version": COST_MODEL_VERSION},
            "target": getattr(target, "tag", str(target)), "units": "ms"}


def apply_mixed_torch(model: torch.nn.Module, plan: MixedPlan) -> dict[str, torch.Tensor]:
    """Zero the 2:4 layers' weights in place (magnitude mask along the reduction axis); returns the
    masks (name -> bool, True = kept) for fine-tuning. INT8 happens on the ONNX graph
    (:func:`int8_options`)."""
    by_name = {layer.name: layer for layer in plan.layers}
    masks = {name: nm_mask(model.get_parameter(name).detach(), by_name[name].in_axis)
             for name in plan.sparse_layers()}
    reapply_masks(model, masks)
    return masks


def apply_mixed_onnx(onnx_model: onnx.ModelProto, plan: MixedPlan) -> onnx.ModelProto:
    """A copy of ``onnx_model`` with the plan's 2:4 masks applied to its initializers (found by the
    export's param map; masks recomputed from the initializer values, as apply_onnx does)."""
    import numpy as np
    from onnx import numpy_helper

    from sparsefuse.passes.sparsity.apply_onnx import param_map_of
    from sparsefuse.passes.sparsity.patterns import nm_satisfied

    mapping = param_map_of(onnx_model)
    by_name = {layer.name: layer for layer in plan.layers}
    out = onnx.ModelProto()
    out.CopyFrom(onnx_model)
    inits = {i.name: i for i in out.graph.initializer}
    for name in plan.sparse_layers():
        init = inits.get(mapping.get(name, name))
        layer = by_name[name]
        value = None if init is None else numpy_helper.to_array(init)
        if value is None or tuple(value.shape) != tuple(layer.shape):
            raise SparsefuseError(f"ONNX model has no initializer of shape {tuple(layer.shape)} for {name!r}",
                                  "apply the plan to the export of the model it was made for")
        w = torch.from_numpy(np.array(value))
        masked = w * nm_mask(w, layer.in_axis).to(w.dtype)
        if not nm_satisfied(masked, layer.in_axis):
            raise SparsefuseError(f"{name}: 2:4 pattern violated after masking", "report this bug")
        init.CopyFrom(numpy_helper.from_array(masked.numpy().astype(value.dtype), init.name))
    return out


def write_plan(plan: MixedPlan, path: Any) -> None:
    """plan.json (atomic)."""
    from sparsefuse.atomic import write_json

    write_json(path, plan.to_dict())


def quantize_selected(onnx_model: onnx.ModelProto, layers: Sequence[str] | None,
                      frames: Sequence[Mapping[str, Any]], backend: str,
                      calibrator: str = "max") -> onnx.ModelProto:
    """The FP32 graph with Q/DQ on ``layers`` only (torch names or initializer names; None: every
    layer), their input activations calibrated on ``frames`` (numpy, the graph's inputs) by
    ``calibrator``."""
    from sparsefuse.passes.manager import PassContext
    from sparsefuse.passes.precision import calibrate, capture, int8

    selected = None if layers is None else frozenset(layers)
    plan = int8.plan_int8(onnx_model, backend, layers=selected)
    captured = capture.capture(onnx_model, frames, plan.calibrated)
    amax = {t: calibrate.calibrate(calibrate.histogram(captured[t]), calibrator) for t in plan.calibrated}
    nonneg = [t for t in plan.calibrated if min(float(a.min()) for a in captured[t] if a.size) >= 0]
    options: dict[str, Any] = {"amax": amax, "nonnegative": nonneg}
    if selected is not None:
        options["layers"] = sorted(selected)
    return int8.quantize_int8(onnx_model, PassContext(target_backend=backend, options={"int8": options}))


def int8_options(plan: MixedPlan, amax: Mapping[str, float], nonnegative: Sequence[str] = ()) -> dict:
    """``ctx.options["int8"]`` for int8.quantize_int8 that puts Q/DQ only on the plan's INT8 layers
    (``amax``: calibrated amax of their input activations, by ONNX tensor name)."""
    return {"amax": dict(amax), "nonnegative": list(nonnegative), "layers": plan.int8_layers()}
