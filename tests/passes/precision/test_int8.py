"""INT8 Q/DQ placement (TensorRT rules), per-channel weights, 2:4 zeros surviving quantization."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsefuse.passes.manager import Pass, PassContext, run_passes
from sparsefuse.passes.precision import capture
from sparsefuse.passes.precision.int8 import plan_int8, quantize_int8, quantize_weight


def _two_four(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A Conv weight [Cout, Cin, k, k] with 2 of every 4 consecutive input channels zero."""
    w = rng.normal(0.0, 0.3, shape).astype(np.float32)
    keep = np.zeros(shape[1], bool)
    keep[0::4] = keep[3::4] = True
    w[:, ~keep] = 0.0
    return w


def _resnet_block() -> onnx.ModelProto:
    """x -> conv0 -> relu -> conv1 -> relu -> conv2 -> add(relu, conv2) -> relu -> y (a residual)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(_two_four((8, 8, 3, 3), rng), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b")]
    conv = {"pads": [1, 1, 1, 1]}
    nodes = [helper.make_node("Conv", ["x", "w0", "b"], ["c0"], name="conv0", **conv),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1", "b"], ["c1"], name="conv1", **conv),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b"], ["c2"], name="conv2", **conv),
             helper.make_node("Add", ["r0", "c2"], ["s"], name="residual"),
             helper.make_node("Relu", ["s"], ["y"], name="relu2")]
    graph = helper.make_graph(nodes, "block",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _quantize(model: onnx.ModelProto, backend: str) -> onnx.ModelProto:
    frames = [{"x": np.random.default_rng(i).uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)}
              for i in range(2)]
    plan = plan_int8(model, backend)
    cap = capture.capture(model, frames, plan.calibrated)
    amax = {t: max(float(np.abs(a).max()) for a in cap[t]) for t in plan.calibrated}
    nonneg = [t for t in plan.calibrated if min(float(a.min()) for a in cap[t]) >= 0]
    ctx = PassContext(target_backend=backend, options={"int8": {"amax": amax, "nonnegative": nonneg}})
    return run_passes([Pass("int8", quantize_int8)], model, ctx)[0]


def test_tensorrt_placement_conv_inputs_and_the_residual_branch_only():
    plan = plan_int8(_resnet_block(), "tensorrt")
    assert plan.activations == ["x", "r0", "r1"]
    assert plan.residuals == ["r0"]  # conv2's own output fuses into the add: no Q/DQ on c2
    assert [(s.node, s.axis) for s in plan.weights] == [("conv0", 0), ("conv1", 0), ("conv2", 0)]
    quantized = _quantize(_resnet_block(), "tensorrt")
    q_inputs = {n.input[0] for n in quantized.graph.node if n.op_type == "QuantizeLinear"}
    assert q_inputs == {"x", "r0", "r1"}  # none on c0/c1/c2, the Add output or the graph output
    add = next(n for n in quantized.graph.node if n.name == "residual")
    assert list(add.input) == ["r0__dq", "c2"]


def test_onnxruntime_placement_quantizes_both_add_inputs():
    plan = plan_int8(_resnet_block(), "onnxruntime")
    assert set(plan.residuals) == {"r0", "c2"}


def test_per_channel_weight_scales():
    w = np.stack([np.full((2, 3, 3), 0.5), np.full((2, 3, 3), -4.0)]).astype(np.float32)
    q, scale = quantize_weight(w, 0)
    np.testing.assert_allclose(scale, [0.5 / 127, 4.0 / 127], rtol=1e-6)
    assert q.dtype == np.int8 and q[0].max() == 127 and q[1].min() == -127


def test_two_four_weight_stays_two_four_after_quantization():
    model = _resnet_block()
    w1 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w1"))
    quantized = _quantize(model, "tensorrt")
    inits = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    q = inits["w1__int8"]
    assert q.dtype == np.int8
    assert np.count_nonzero(w1 == 0) == w1.size // 2
    assert np.all(q[w1 == 0] == 0)  # every pruned weight is an exact int8 zero
    groups = (q.transpose(0, 2, 3, 1).reshape(-1, 4) != 0).sum(axis=1)
    assert groups.max() <= 2  # every group of 4 along Cin keeps at most 2 nonzeros
    dequantized = q.astype(np.float32) * inits["w1__wscale"][:, None, None, None]
    assert np.all(dequantized[w1 == 0] == 0.0)


def test_quantized_graph_runs_close_to_fp32_on_ort():
    model = _resnet_block()
    frame = {"x": np.random.default_rng(7).uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)}
    ref = capture.session(model).run(None, frame)[0]
    for backend in ("tensorrt", "onnxruntime"):
        got = capture.session(_quantize(model, backend), optimize=True).run(None, frame)[0]
        rel = np.max(np.abs(got - ref)) / np.max(np.abs(ref))
        assert 0 < rel < 0.05, (backend, rel)  # quantized (not identical), but close
