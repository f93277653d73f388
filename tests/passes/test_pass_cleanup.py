"""Cleanup: folds constants and dead code, keeps parameter initializers by name and custom nodes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from sparsefuse.passes.cleanup import cleanup
from sparsefuse.passes.export import PARAM_MAP_KEY, read_param_map
from sparsefuse.passes.manager import PassContext
from sparsefuse.plugins.common import DOMAIN

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3)).astype(np.float32)


def _model(with_custom: bool = False) -> onnx.ModelProto:
    """y = x @ T(T(T(w))) + (c1 + c2); a dead Neg; optionally a custom node on a side output."""
    inits = [numpy_helper.from_array(W, "fc.weight"),
             numpy_helper.from_array(np.ones(4, np.float32), "c1"),
             numpy_helper.from_array(np.full(4, 2.0, np.float32), "c2")]
    nodes = [
        helper.make_node("Transpose", ["fc.weight"], ["t1"], perm=[1, 0]),
        helper.make_node("Transpose", ["t1"], ["t2"], perm=[1, 0]),
        helper.make_node("Transpose", ["t2"], ["t3"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "t3"], ["mm"]),
        helper.make_node("Add", ["c1", "c2"], ["c12"]),
        helper.make_node("Add", ["mm", "c12"], ["y"]),
        helper.make_node("Neg", ["mm"], ["dead"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])]
    opsets = [helper.make_opsetid("", 18)]
    if with_custom:
        nodes.append(helper.make_node("Opaque", ["y"], ["z"], domain=DOMAIN))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
        opsets.append(helper.make_opsetid(DOMAIN, 1))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    entry = model.metadata_props.add()
    entry.key, entry.value = PARAM_MAP_KEY, json.dumps({"fc.weight": "fc.weight"})
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["y"], {"x": x})[0]


def test_cleanup_folds_and_removes_dead_code_but_keeps_the_parameter():
    model = _model()
    out = cleanup(model, PassContext())
    names = {init.name for init in out.graph.initializer}
    assert "fc.weight" in names
    np.testing.assert_array_equal(
        numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == "fc.weight")), W)
    ops = [n.op_type for n in out.graph.node]
    assert "Neg" not in ops  # dead
    assert ops.count("Add") == 1  # c1 + c2 folded
    assert ops.count("Transpose") <= 1  # the transpose chain collapsed, still reading fc.weight
    assert any("fc.weight" in n.input for n in out.graph.node)
    assert read_param_map(out) == {"fc.weight": "fc.weight"}
    x = RNG.standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(model, x), rtol=1e-6, atol=1e-6)


def test_cleanup_keeps_custom_nodes_and_graph_inputs():
    out = cleanup(_model(with_custom=True), PassContext())
    custom = [n for n in out.graph.node if n.domain == DOMAIN]
    assert [n.op_type for n in custom] == ["Opaque"]
    assert [i.name for i in out.graph.input] == ["x"]  # the protected initializers are not left as inputs


def test_without_a_param_map_the_weight_may_be_folded():
    """Shows why the protection is needed: unprotected, the optimizer replaces fc.weight."""
    model = _model()
    del model.metadata_props[:]
    out = cleanup(model, PassContext())
    assert "fc.weight" not in {init.name for init in out.graph.initializer}
