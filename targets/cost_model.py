"""Roofline cost model: estimated per-layer latency of an ONNX graph on any registry target.

Per node: t = max(FLOPs / (peak x compute_eff), bytes / (DRAM bandwidth x memory_eff)) + launch.
Peak is the tensor-core rate for Conv / Gemm / MatMul / SparseConv3d / SparseInverseConv3d at the
target's precision (FP16 on TensorRT targets, FP32 on the cpu target) and the FP32 CUDA-core rate for
the rest.

2:4 sparsity (docs/sources.md S4, S5) changes only eligible layers on targets with sparse tensor
cores: NVIDIA reports "about 15% (usually less)" end to end for CNNs (TensorRT#2310) and sparse
kernels win only when C and K are large, about 256 or more (#3849, #4065). We model the compute
term of an eligible layer as SPARSE_SPEEDUP_LARGE faster when C, K >= 256 and
SPARSE_SPEEDUP_SMALL otherwise (far below the 2x peak ratio), and its weight bytes as 9/16
(half the values plus 2-bit indices). Unstructured sparsity gains nothing (TensorRT#3282).
Eligibility follows the V2XFusion / TensorRT filter: C % 4 == 0, R*S <= 32, C*R*S >= 512 for
R*S > 1 and >= 4096 for 1x1.

Everything here is labelled "estimated"; imported measured per-node times replace estimates.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sparsefuse.atomic import write_json
from sparsefuse.errors import SparsefuseError
from sparsefuse.targets.modules import module_of, node_scopes
from sparsefuse.targets.onnx_stats import (
    FREE_OPS,
    SPARSE_CONV_WEIGHT_SLOT,
    TENSOR_CORE_OPS,
    NodeWork,
    default_dims,
    node_work,
)
from sparsefuse.targets.profiler import NodeTime, Profile
from sparsefuse.targets.registry import Target

COST_MODEL_NAME = "sparsefuse-roofline"
COST_MODEL_VERSION = "1"
SPARSE_SPEEDUP_LARGE = 1.5
SPARSE_SPEEDUP_SMALL = 1.1
SPARSE_LARGE_CHANNELS = 256
SPARSE_WEIGHT_BYTES = 9 / 16
# Gather-GEMM-scatter sparse conv reaches about half the efficiency of a dense GEMM.
SPARSE_CONV_EFFICIENCY = 0.5
DEFAULT_CANDIDATES = ("dense@0", "2:4@0.5", "channel@0.25", "channel@0.5", "unstructured@0.5")
PARAM_MAP_KEY = "sparsefuse.param_map"


@dataclass(frozen=True)
class Efficiency:
    """Achieved fraction of peak compute and bandwidth, and fixed cost per kernel [ms]."""

    compute: float
    memory: float
    launch_ms: float


# Calibration choices, not vendor numbers; bench/cost_model_rank.py checks the resulting ranking.
# cpu: ORT fp32 convs on the 2-core dev VM reach 15-70 GFLOP/s (~5-20% of the AVX-512 peak), and
# the graph's small tensors stay cache-resident, moving ~2x faster than the measured DRAM copy rate
# (per-node data of bench/cost_model_rank.py, 2026-11-22). GPU values are untested guesses.
EFFICIENCY: dict[str, Efficiency] = {
    "cpu": Efficiency(compute=0.1, memory=2.0, launch_ms=0.005),
    "desktop": Efficiency(compute=0.55, memory=0.75, launch_ms=0.004),
    "jetson": Efficiency(compute=0.45, memory=0.65, launch_ms=0.008),
}


@dataclass(frozen=True)
class Rates:
    tensor_flops: float  # FLOP/s
    vector_flops: float
    bytes_per_s: float
    bytes_per_element: float
    sparse_tensor_cores: bool
    efficiency: Efficiency


def target_rates(target: Target, precision: str | None = None) -> Rates:
    """Peak rates used for ``target`` at ``precision`` ("fp16" default on TensorRT, "fp32" on CPU)."""
    precision = precision or ("fp32" if target.backend == "onnxruntime" else "fp16")
    fp32 = target.fp32_tflops * 1e12
    if precision == "fp32":
        tensor, elem = fp32, 4.0
    elif precision == "fp16":
        tensor, elem = target.fp16_dense_tflops * 1e12, 2.0
    elif precision == "int8":
        tensor, elem = target.int8_dense_tops * 1e12, 1.0
    else:
        raise SparsefuseError(f"precision '{precision}' has no rate", "use fp32, fp16 or int8")
    if tensor <= 0 or fp32 <= 0 or target.dram_gbps <= 0:
        raise SparsefuseError(
            f"target '{target.tag}' lacks the rates the cost model needs at {precision}",
            "set fp32_tflops, dram_gbps and the tensor rate for this precision in its TOML",
        )
    return Rates(
        tensor, fp32, target.dram_gbps * 1e9, elem, target.features()["sparse_2to4"], EFFICIENCY[target.kind]
    )


def eligible_2to4(work: NodeWork) -> bool:
    """TensorRT-style 2:4 eligibility of a layer with weights (docs/sources.md S4, V2XFusion)."""
    if work.op_type not in TENSOR_CORE_OPS or work.weight is None or work.in_channels <= 0:
        return False
    c, rs = work.in_channels, work.kernel_volume
    if c % 4 or rs > 32:
        return False
    return c * rs >= (512 if rs > 1 else 4096)


def node_latency_ms(work: NodeWork, rates: Rates, candidate: str = "dense@0") -> float:
    """Estimated time of one node [ms] with one sparsity candidate applied to its weight."""
    if work.op_type in FREE_OPS:
        return 0.0
    pattern, level = parse_candidate(candidate)
    flops, weight_bytes, act_bytes = work.flops, work.weight_bytes, work.act_bytes
    if pattern == "channel":  # fewer output filters: less math, fewer weights, smaller output
        flops *= 1.0 - level
        weight_bytes *= 1.0 - level
        act_bytes -= work.out_bytes * level
    scale = rates.bytes_per_element / 4.0  # graph bytes are float32
    data = (act_bytes + weight_bytes) * scale
    if work.op_type in TENSOR_CORE_OPS:
        peak = rates.tensor_flops * rates.efficiency.compute
        if work.op_type in SPARSE_CONV_WEIGHT_SLOT:
            peak *= SPARSE_CONV_EFFICIENCY
    else:
        peak = rates.vector_flops * rates.efficiency.compute
    compute_s = flops / peak
    if pattern == "2:4" and rates.sparse_tensor_cores and eligible_2to4(work):
        large = min(work.in_channels, work.out_channels) >= SPARSE_LARGE_CHANNELS
        compute_s /= SPARSE_SPEEDUP_LARGE if large else SPARSE_SPEEDUP_SMALL
        data -= work.weight_bytes * scale * (1.0 - SPARSE_WEIGHT_BYTES)
    memory_s = data / (rates.bytes_per_s * rates.efficiency.memory)
    return max(compute_s, memory_s) * 1e3 + rates.efficiency.launch_ms


def parse_candidate(key: str) -> tuple[str, float]:
    """ "2:4@0.5" -> ("2:4", 0.5); "dense@0" -> ("dense", 0.0)."""
    pattern, _, level = key.partition("@")
    try:
        value = float(level) if level else 0.0
    except ValueError:
        value = -1.0
    if pattern not in ("dense", "unstructured", "2:4", "channel") or not 0.0 <= value < 1.0 + 1e-9:
        raise SparsefuseError(
            f"unknown sparsity candidate '{key}'", "use dense@0, unstructured@L, 2:4@0.5, channel@L"
        )
    return pattern, value


def _load(model_or_onnx: Any) -> Any:
    import onnx

    if isinstance(model_or_onnx, (str, os.PathLike)):
        return onnx.load(str(model_or_onnx), load_external_data=True)
    return model_or_onnx


def estimate_nodes(
    model_or_onnx: Any, target: Target, dims: Mapping[str, int] | None = None, precision: str | None = None
) -> list[NodeTime]:
    """Estimated per-node times [ms] (dense weights), with module paths and modules."""
    model = _load(model_or_onnx)
    rates = target_rates(target, precision)
    sizes = {**default_dims(model), **(dims or {})}
    scopes = node_scopes(model)
    out = []
    for work in node_work(model, sizes):
        scope = scopes.get(work.name, "")
        out.append(
            NodeTime(
                work.name,
                work.op_type,
                node_latency_ms(work, rates),
                module_of(scope or work.name, work.op_type),
                scope,
            )
        )
    return out


def replace_with_measured(estimated: Sequence[NodeTime], measured: Sequence[NodeTime]) -> list[NodeTime]:
    """Per node: the measured time where a measured node of the same name exists, else the estimate."""
    times = {m.name: m.time_ms for m in measured}
    return [replace(n, time_ms=times[n.name]) if n.name in times else n for n in estimated]


def estimated_profile(
    model_or_onnx: Any,
    target: Target,
    dims: Mapping[str, int] | None = None,
    precision: str | None = None,
    measured: Sequence[NodeTime] = (),
) -> Profile:
    """A Profile labelled "estimated" (cost model name and version); measured nodes replace estimates."""
    nodes = replace_with_measured(estimate_nodes(model_or_onnx, target, dims, precision), measured)
    sizes = {**default_dims(_load(model_or_onnx)), **(dims or {})}
    notes = [
        f"roofline estimate at {precision or ('fp32' if target.backend == 'onnxruntime' else 'fp16')}",
        "dynamic dims: " + ", ".join(f"{k}={v}" for k, v in sorted(sizes.items())),
    ]
    if measured:
        notes.append(
            f"{sum(1 for n in nodes if n.name in {m.name for m in measured})} nodes use measured times"
        )
    return Profile(
        label="estimated",
        target=target.tag,
        backend=target.backend,
        device=target.name,
        per_node=tuple(nodes),
        lidar_points=(int(sizes.get("num_points", 0)),),
        estimated_total_ms=sum(n.time_ms for n in nodes),
        cost_model=(COST_MODEL_NAME, COST_MODEL_VERSION),
        notes=tuple(notes),
    )


def _param_names(model: Any) -> dict[str, str]:
    """initializer name -> torch parameter name, from the export's param map (identity if absent)."""
    import json

    for prop in model.metadata_props:
        if prop.key == PARAM_MAP_KEY:
            return {init: torch_name for torch_name, init in json.loads(prop.value).items()}
    return {}


def latency_table(
    model_or_onnx: Any,
    target: Target,
    candidates: Sequence[str] | Mapping[str, Sequence[str]] = DEFAULT_CANDIDATES,
    dims: Mapping[str, int] | None = None,
    precision: str | None = None,
    measured: Sequence[NodeTime] = (),
) -> dict[str, dict[str, float]]:
    """{weight name: {candidate key: latency_ms}} for every layer with a weight (the sparsity
    allocator's latency budget table). Keys are torch parameter names (= initializer names).

    With ``measured`` node times, a layer's dense time is the measured one and each candidate
    keeps the cost model's ratio to dense. ``channel@L`` removes a fraction L of this layer's
    output filters; the saving in the consuming layer (fewer input channels) is not attributed,
    consistent with the allocator's per-layer additivity.
    """
    model = _load(model_or_onnx)
    rates = target_rates(target, precision)
    sizes = {**default_dims(model), **(dims or {})}
    renamed = _param_names(model)
    measured_ms = {m.name: m.time_ms for m in measured}
    table: dict[str, dict[str, float]] = {}
    for work in node_work(model, sizes):
        if work.weight is None or work.op_type not in TENSOR_CORE_OPS:
            continue
        name = renamed.get(work.weight, work.weight)
        keys = candidates.get(name, ()) if isinstance(candidates, Mapping) else candidates
        dense = node_latency_ms(work, rates)
        base = measured_ms.get(work.name, dense)
        row = table.setdefault(name, {})
        for key in keys:
            row[key] = row.get(key, 0.0) + base * node_latency_ms(work, rates, key) / dense
    return table


def write_latency_table(
    table: Mapping[str, Mapping[str, float]], path: str | os.PathLike[str], target: Target | None = None
) -> Path:
    """Write the table as JSON: {layer: {candidate: ms}} exactly (what the allocator reads).

    Provenance goes into a sibling "<name>.meta.json" so the table itself stays a plain mapping.
    """
    path = Path(path)
    write_json(path, {k: dict(v) for k, v in table.items()})
    meta = {
        "schema_version": 1,
        "label": "estimated",
        "cost_model": {"name": COST_MODEL_NAME, "version": COST_MODEL_VERSION},
        "target": target.tag if target else None,
        "units": "ms",
    }
    write_json(path.with_suffix(".meta.json"), meta)
    return path
