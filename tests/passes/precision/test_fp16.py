"""FP16 islands from measured error: a node that overflows FP16 and one that cancels catastrophically
stay FP32; benign nodes run FP16; the converted graph keeps FP32 inputs/outputs and a Cast only at
each island boundary."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsefuse.passes.manager import Pass, PassContext, run_passes
from sparsefuse.passes.precision import capture, islands
from sparsefuse.passes.precision.fp16 import to_fp16


def _crafted() -> onnx.ModelProto:
    """x[4,8] in [0,1] -> relu -> big = x*1e5 (overflows FP16: 1e5 > 65504) -> small = big*1e-5;
    shift = x + 2048 (benign: relative error 2^-11) -> back = shift - 2048 (cancellation: the FP16
    spacing at 2048 is 2, x is lost); y = small + back."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "k_big"], ["big"], name="overflow"),
        helper.make_node("Mul", ["big", "k_small"], ["small"], name="rescale"),
        helper.make_node("Add", ["r", "offset"], ["shift"], name="shift"),
        helper.make_node("Sub", ["shift", "offset"], ["back"], name="cancel"),
        helper.make_node("Add", ["small", "back"], ["y"], name="sum"),
    ]
    inits = [numpy_helper.from_array(np.array(1e5, np.float32), "k_big"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "k_small"),
             numpy_helper.from_array(np.array(2048.0, np.float32), "offset")]
    graph = helper.make_graph(nodes, "crafted",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _frames(n: int = 3) -> list[dict[str, np.ndarray]]:
    return [{"x": np.random.default_rng(i).uniform(0.0, 1.0, (4, 8)).astype(np.float32)} for i in range(n)]


def test_islands_are_the_nodes_that_really_lose_precision():
    model = _crafted()
    frames = _frames()
    errors = {e.node: e for e in islands.measure(model, capture.capture(model, frames),
                                                 capture.tensor_types(model), 1e-3)}
    assert not errors["overflow"].fp16 and errors["overflow"].error == float("inf")
    assert "overflows" in errors["overflow"].reason
    assert not errors["cancel"].fp16 and errors["cancel"].error > 1e-2
    # rescale reads the FP32 graph's (finite) 'big' rounded to FP16: 1e5 -> inf, so it is an island too
    assert not errors["rescale"].fp16
    for benign in ("relu", "shift", "sum"):
        assert errors[benign].fp16, errors[benign]
        assert errors[benign].error <= 1e-3


def test_converted_graph_is_typed_with_casts_only_at_boundaries():
    model = _crafted()
    frames = _frames()
    errors = islands.measure(model, capture.capture(model, frames), capture.tensor_types(model), 1e-3)
    fp32_nodes = [e.node for e in errors if not e.fp16]
    converted, _ = run_passes([Pass("fp16", to_fp16)], model,
                              PassContext(options={"fp16": {"fp32_nodes": fp32_nodes}}))
    graph = converted.graph
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    types = capture.tensor_types(converted)
    by_name = {n.name: n for n in graph.node}
    assert types[by_name["relu"].output[0]] == TensorProto.FLOAT16
    assert types[by_name["overflow"].output[0]] == TensorProto.FLOAT
    assert types[by_name["cancel"].output[0]] == TensorProto.FLOAT
    casts = [n for n in graph.node if n.op_type == "Cast"]
    # x -> fp16 (relu), r -> fp32 (overflow), shift -> fp32 (cancel), small and back -> fp16 (sum),
    # y__fp16 -> y: one per island boundary and graph edge, none for constants
    assert sorted(c.input[0] for c in casts) == ["back", "r", "shift", "small", "x", "y__fp16"]
    inits = {i.name: i.data_type for i in graph.initializer}
    assert inits["k_big"] == TensorProto.FLOAT  # read by an FP32 island only: stays FP32, no cast
    out = capture.session(converted).run(None, frames[0])[0]
    ref = capture.session(model).run(None, frames[0])[0]
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert np.max(np.abs(out - ref)) / np.max(np.abs(ref)) < 2e-3
