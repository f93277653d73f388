"""FP32 islands for the FP16 graph, chosen from MEASURED per-node FP16 error.

Each node runs once more on its own in ONNX Runtime CPU, with its float inputs (the FP32 graph's
captured tensors on the calibration frames) and float initializers rounded to FP16, and its outputs
are compared with the FP32 graph's. A node whose error exceeds the threshold on any frame stays FP32
(an island): overflow (|x| > 65504 -> inf), cancellation, long reductions. Integer outputs (e.g.
voxel coordinates) must match exactly. A node ORT cannot run in FP16 stays FP32 with that reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsefuse.plugins.common import DOMAIN

# Custom ops that cannot run FP16 whatever the measurement says, and why.
FORCED_FP32 = {
    "Voxelize": "TensorRT plugin takes FP32 points only (plugins/voxelize/plugin.cpp); point -> voxel index "
                "needs FP32 coordinates (FP16 spacing is 0.03 m at 50 m)",
}


@dataclass(frozen=True)
class NodeError:
    """One node's worst FP16 error over the calibration frames: max|y16 - y32| / max|y32| (inf for
    an overflow or an integer mismatch); ``reason``: why it stays FP32 ("" = runs FP16)."""

    node: str
    op_type: str
    error: float
    reason: str

    @property
    def fp16(self) -> bool:
        return not self.reason


def float_inputs(node: onnx.NodeProto, types: Mapping[str, int], opset: int) -> list[int]:
    """Indices of the node's float inputs that follow its float outputs' type (same type variable
    in the op schema): those become FP16 with the node. Others (Resize scales, ...) keep their type."""
    schema = _schema(node, opset)
    if schema is None:
        return []
    out_vars = {o.type_str for o in schema.outputs}
    picked = []
    for i, name in enumerate(node.input):
        if not name or types.get(name) != TensorProto.FLOAT:
            continue
        formal = schema.inputs[min(i, len(schema.inputs) - 1)]
        if formal.type_str in out_vars:
            picked.append(i)
    return picked


def _schema(node: onnx.NodeProto, opset: int) -> onnx.defs.OpSchema | None:
    domain = node.domain if node.domain not in ("ai.onnx",) else ""
    try:
        return onnx.defs.get_schema(node.op_type, opset if domain == "" else 1, domain)
    except onnx.defs.SchemaError:
        return None


def measure(model: onnx.ModelProto, captured: Mapping[str, Sequence[np.ndarray]], types: Mapping[str, int],
            threshold: float) -> list[NodeError]:
    """NodeError of every node with a float input or output (see the module docstring)."""
    from sparsefuse.plugins import onnx_ops

    onnx_ops.register_schemas()
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    results = []
    for node in model.graph.node:
        picked = float_inputs(node, types, opset)
        if not picked:
            continue
        if node.domain == DOMAIN and node.op_type in FORCED_FP32:
            results.append(NodeError(node.name, node.op_type, float("nan"), FORCED_FP32[node.op_type]))
            continue
        results.append(_measure_node(model, node, picked, inits, captured, types, threshold))
    return results


def _measure_node(model: onnx.ModelProto, node: onnx.NodeProto, picked: list[int],
                  inits: Mapping[str, onnx.TensorProto], captured: Mapping[str, Sequence[np.ndarray]],
                  types: Mapping[str, int], threshold: float) -> NodeError:
    from sparsefuse.passes.precision.capture import session

    outputs = [o for o in node.output if o]
    try:
        one = _single_node_model(model, node, picked, inits, types)
        sess = session(one)
    except Exception as exc:  # noqa: BLE001 (ORT's message is the reason we record)
        return NodeError(node.name, node.op_type, float("inf"),
                         f"ORT CPU cannot run it in FP16: {_first(exc)}")
    worst = 0.0
    frames = len(next(iter(captured.values())))
    for f in range(frames):
        feeds = {}
        for i, name in enumerate(node.input):
            if not name or name in inits:
                continue
            value = np.asarray(captured[name][f])
            feeds[name] = _half(value) if i in picked else value
        try:
            got = sess.run(outputs, feeds)
        except Exception as exc:  # noqa: BLE001
            return NodeError(node.name, node.op_type, float("inf"), f"ORT CPU failed in FP16: {_first(exc)}")
        for name, value in zip(outputs, got, strict=True):
            worst = max(worst, relative_error(np.asarray(value), np.asarray(captured[name][f])))
    if worst > threshold:
        kind = "overflows FP16" if not np.isfinite(worst) else f"FP16 error {worst:.2e} > {threshold:.0e}"
        return NodeError(node.name, node.op_type, worst,
                         f"{kind} of its output range on the calibration frames")
    return NodeError(node.name, node.op_type, worst, "")


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max|got - ref| / max|ref| for floats (inf on a non-finite value or a shape change); integers
    must match exactly (0 or inf)."""
    if got.shape != ref.shape:
        return float("inf")
    if not np.issubdtype(ref.dtype, np.floating):
        return 0.0 if np.array_equal(got, ref) else float("inf")
    got64, ref64 = got.astype(np.float64), ref.astype(np.float64)
    if not np.all(np.isfinite(got64)):
        return float("inf")
    if ref.size == 0:
        return 0.0
    scale = float(np.max(np.abs(ref64)))
    diff = float(np.max(np.abs(got64 - ref64)))
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def _single_node_model(model: onnx.ModelProto, node: onnx.NodeProto, picked: list[int],
                       inits: Mapping[str, onnx.TensorProto], types: Mapping[str, int]) -> onnx.ModelProto:
    """``node`` alone, its ``picked`` inputs FP16 (graph inputs or FP16 initializers), float outputs
    FP16 (the node's type follows them), other inputs as they are."""
    graph_inputs, initializers = [], []
    for i, name in enumerate(node.input):
        if not name:
            continue
        elem = TensorProto.FLOAT16 if i in picked else types[name]
        if name in inits:
            array = numpy_helper.to_array(inits[name])
            array = _half(array) if i in picked else array
            initializers.append(numpy_helper.from_array(array, name))
        elif name not in {g.name for g in graph_inputs}:
            graph_inputs.append(helper.make_tensor_value_info(name, elem, None))
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT16 if types.get(o) == TensorProto.FLOAT
                                          else types.get(o, TensorProto.FLOAT), None)
            for o in node.output if o]
    graph = helper.make_graph([node], "fp16_probe", graph_inputs, outs, initializer=initializers)
    probe = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    probe.functions.extend(model.functions)
    return probe


def _half(array: np.ndarray) -> np.ndarray:
    """``array`` in FP16; values beyond 65504 become inf, which is what the measurement is for."""
    with np.errstate(over="ignore"):
        return array.astype(np.float16)


def _first(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
