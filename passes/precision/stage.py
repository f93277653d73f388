"""The precision stage: FP32 graph + calibration frames -> FP16 / INT8 graph, report and tolerances.

report.json holds per node (fp16) or per tensor (int8) what was decided and why, the end-to-end error
on the calibration frames, and the verify tolerance per output with its derivation
(docs/tolerances.md, "int8 (Q/DQ) graphs").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from sparsefuse.passes.manager import Pass, PassContext, run_passes
from sparsefuse.passes.precision import calibrate, capture, int8, islands
from sparsefuse.passes.precision.config import PrecisionConfig
from sparsefuse.passes.precision.fp16 import to_fp16
from sparsefuse.plugins.common import DOMAIN

SCHEMA_VERSION = 1
FP32_REL, FP32_ABS = 1e-4, 1e-5  # the float32 rule (docs/tolerances.md), added to the int8 bound


@dataclass(frozen=True)
class PrecisionResult:
    model: onnx.ModelProto
    report: dict[str, Any]
    scales: dict[str, Any]  # int8 only: the scales table (else {})


def run_precision_stage(model: onnx.ModelProto, config: PrecisionConfig,
                        frames: Sequence[Mapping[str, np.ndarray]], backend: str,
                        log: Callable[[str], None] = lambda _m: None) -> PrecisionResult:
    """Convert ``model`` (FP32, custom ops as single nodes) to ``config.precision``."""
    capture.check_finite(frames)
    if config.precision == "fp16":
        return _fp16(model, config, frames, log)
    if config.precision == "int8":
        return _int8(model, config, frames, backend, log)
    raise ValueError(f"precision stage called for {config.precision!r}")


def _fp16(model: onnx.ModelProto, config: PrecisionConfig, frames: Sequence[Mapping[str, np.ndarray]],
          log: Callable[[str], None]) -> PrecisionResult:
    captured = capture.capture(model, frames)
    types = capture.tensor_types(model)
    errors = islands.measure(model, captured, types, config.fp16_threshold)
    fp32_nodes = [e.node for e in errors if not e.fp16]
    ctx = PassContext(options={"fp16": {"fp32_nodes": fp32_nodes}}, log=log)
    converted, records = run_passes([Pass("fp16", to_fp16)], model, ctx)
    outputs = [o.name for o in model.graph.output]
    custom = {e.node: {"op": e.op_type, "precision": "fp16" if e.fp16 else "fp32",
                       "reason": e.reason or _FP16_CUSTOM_REASON}
              for e in errors if _is_custom(model, e.node)}
    report = {
        "schema_version": SCHEMA_VERSION, "precision": "fp16", "config": config.to_dict(),
        "calibration_frames": len(frames),
        "rule": {"island": f"a node stays FP32 when max|y16 - y32| / max|y32| > {config.fp16_threshold:g} "
                           "on any calibration frame (measured in ORT CPU, node alone, FP32 inputs rounded)",
                 "verify": "float16: max|a-b| <= 1e-2*max|ref| + 1e-3 (docs/tolerances.md)"},
        "nodes": {e.node: {"op": e.op_type, "error": _num(e.error),
                           "precision": "fp16" if e.fp16 else "fp32", "reason": e.reason} for e in errors},
        "islands": fp32_nodes, "custom_ops": custom,
        "casts": sum(1 for n in converted.graph.node if n.op_type == "Cast") -
        sum(1 for n in model.graph.node if n.op_type == "Cast"),
        "calibration_error": _end_to_end(converted, frames, captured, outputs),
        "tolerance": {o: {"rule": "float16", "rel": 1e-2, "abs": 1e-3} for o in outputs},
        "passes": [r.to_dict() for r in records],
    }
    return PrecisionResult(converted, report, {})


_FP16_CUSTOM_REASON = ("schema T allows float16, the TensorRT plugin takes kHALF, and its function body "
                       "ran in FP16 in ORT within the threshold")


def _is_custom(model: onnx.ModelProto, name: str) -> bool:
    return any(n.name == name and n.domain == DOMAIN for n in model.graph.node)


def _int8(model: onnx.ModelProto, config: PrecisionConfig, frames: Sequence[Mapping[str, np.ndarray]],
          backend: str, log: Callable[[str], None]) -> PrecisionResult:
    outputs = [o.name for o in model.graph.output]
    full_plan = int8.plan_int8(model, backend)
    captured = capture.capture(model, frames, [*full_plan.calibrated, *outputs])
    hists = {t: calibrate.histogram(captured[t]) for t in full_plan.calibrated}
    amax = {t: calibrate.calibrate(h, config.calibrator, config.percentile) for t, h in hists.items()}
    nonneg = {t for t in full_plan.calibrated if min(float(a.min()) for a in captured[t] if a.size) >= 0}
    options = {"amax": amax, "nonnegative": sorted(nonneg)}
    sensitivity = _sensitivity(model, full_plan.calibrated, options, frames, captured, outputs, backend)
    ranges = {o: max(float(np.max(np.abs(a))) if a.size else 0.0 for a in captured[o]) for o in outputs}
    worst = {t: max((e / ranges[o] if ranges[o] > 0 else 0.0 for o, e in errors.items()), default=0.0)
             for t, errors in sensitivity.items()}
    keep_float = sorted(t for t, err in worst.items() if err > config.int8_sensitivity)
    options["keep_float"] = keep_float
    ctx = PassContext(target_backend=backend, options={"int8": options}, log=log)
    quantized, records = run_passes([Pass("int8", int8.quantize_int8)], model, ctx)
    plan = int8.plan_int8(model, backend, frozenset(keep_float))
    scales = _scales_table(plan, amax, nonneg, hists, backend == "onnxruntime")
    weights_only = _end_to_end(_probe(model, {**options, "only": []}, backend), frames, captured, outputs,
                               absolute=True)
    tolerance = int8_tolerance(plan, sensitivity, weights_only)
    report = {
        "schema_version": SCHEMA_VERSION, "precision": "int8", "config": config.to_dict(),
        "backend": backend,
        "calibration_frames": len(frames),
        "calibration": {"calibrator": config.calibrator, "percentile": config.percentile
                        if config.calibrator == "percentile" else None, "histogram_bins": calibrate.NUM_BINS,
                        "weights": "per output channel, symmetric, max", "activations": "per tensor"},
        "plan": int8.describe(plan),
        "sensitivity": sensitivity, "weights_only_error": weights_only,
        "kept_float": {t: f"quantized alone it moves an output by {worst[t]:.3g} of its range "
                          f"(> {config.int8_sensitivity:g})" for t in keep_float},
        "custom_ops": {n.name: {"op": n.op_type, "precision": "fp32",
                                "reason": "no INT8 I/O in its op contract (docs/design.md §4)"}
                       for n in model.graph.node if n.domain == DOMAIN},
        "calibration_error": _end_to_end(quantized, frames, captured, outputs),
        "tolerance": tolerance,
        "passes": [r.to_dict() for r in records],
    }
    return PrecisionResult(quantized, report, scales)


def _sensitivity(model: onnx.ModelProto, tensors: Sequence[str], options: dict[str, Any],
                 frames: Sequence[Mapping[str, np.ndarray]],
                 captured: Mapping[str, Sequence[np.ndarray]], outputs: Sequence[str],
                 backend: str) -> dict[str, dict[str, float]]:
    """{activation: {output: max|error|}}: the output's worst absolute error over the calibration
    frames when only that activation is quantized at its calibrated scale (weights float). This
    propagates each quantization step through the network by running it."""
    result = {}
    for tensor in tensors:
        probe = _probe(model, {**options, "only": [tensor], "weights": False}, backend)
        result[tensor] = _end_to_end(probe, frames, captured, outputs, absolute=True)
    return result


def _probe(model: onnx.ModelProto, options: dict[str, Any], backend: str) -> onnx.ModelProto:
    return int8.quantize_int8(model, PassContext(target_backend=backend, options={"int8": options},
                                                 log=lambda _m: None))


def _end_to_end(model: onnx.ModelProto, frames: Sequence[Mapping[str, np.ndarray]],
                captured: Mapping[str, Sequence[np.ndarray]], outputs: Sequence[str],
                absolute: bool = False) -> dict[str, float]:
    """Worst max|a-b| / max|ref| (``absolute``: max|a-b|) per output of ``model`` against the FP32
    graph on ``frames``."""
    sess = capture.session(model, optimize=False)
    names = [i.name for i in model.graph.input]
    worst: dict[str, float] = {o: 0.0 for o in outputs}
    for f, frame in enumerate(frames):
        got = sess.run(list(outputs), {k: np.ascontiguousarray(frame[k]) for k in names})
        for name, value in zip(outputs, got, strict=True):
            ref = captured[name][f]
            err = (float(np.max(np.abs(np.asarray(value, np.float64) - ref))) if absolute and ref.size
                   else 0.0 if absolute else islands.relative_error(np.asarray(value), ref))
            worst[name] = max(worst[name], err)
    return {k: _num(v) for k, v in worst.items()}


def _scales_table(plan: int8.QuantPlan, amax: Mapping[str, float], nonneg: set[str],
                  hists: Mapping[str, calibrate.Histogram], unsigned: bool) -> dict[str, Any]:
    """Per quantized activation: amax, scale, zero point, calibrated max |x| (the clipping margin)."""
    table = {}
    for t in plan.calibrated:
        scale, zero = int8.activation_qparams(amax[t], unsigned, t in nonneg)
        table[t] = {"amax": amax[t], "scale": scale, "zero_point": int(zero), "dtype": str(zero.dtype),
                    "observed_max_abs": hists[t].top}
    return {"schema_version": SCHEMA_VERSION, "activations": table}


def int8_tolerance(plan: int8.QuantPlan, sensitivity: Mapping[str, Mapping[str, float]],
                   weights_only: Mapping[str, float]) -> dict[str, Any]:
    """Per output o: bound = 1e-4*max|ref| + 1e-5 + eps_W[o] + sum_t eps[t][o] (docs/tolerances.md).
    eps[t][o]: o's worst absolute error on the calibration frames with only activation t quantized
    at its calibrated scale; eps_W[o]: with only the weights quantized (per channel). To first order
    the errors of the quantized tensors add, and the max norm of a sum is at most the sum of the max
    norms: the bound is each calibrated step propagated through the network, summed."""
    result = {}
    for out, w_err in weights_only.items():
        terms = {t: float(sensitivity[t][out]) for t in plan.calibrated if t in sensitivity}
        propagated = float(w_err) + sum(terms.values())
        result[out] = {"rule": "int8: bound = 1e-4*max|ref| + 1e-5 + eps_W + sum_t eps_t (calibrated steps "
                               "propagated through the network, summed)",
                       "rel": FP32_REL, "abs": FP32_ABS + propagated, "weights_term": float(w_err),
                       "activation_terms": {t: e for t, e in terms.items() if e > 0}}
    return result


def _num(value: float) -> float | str:
    """JSON-safe float (inf / nan as strings)."""
    return value if np.isfinite(value) else str(value)
