"""Lowering: TensorRT keeps bare custom nodes; ONNX Runtime gets the function bodies and runs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from sparsefuse.passes.lower import custom_nodes, lower, lowered_filename
from sparsefuse.passes.manager import Pass, PassContext, run_pass
from sparsefuse.plugins.common import DOMAIN
from sparsefuse.plugins.scatter_dense import scatter_dense

SPATIAL = [2, 3, 4]  # (Z, Y, X)


def _scatter_model() -> onnx.ModelProto:
    """features[N,3], coords[N,4] -> ScatterDense -> Relu, as the exporter would leave it."""
    node = helper.make_node("ScatterDense", ["features", "coords"], ["dense"], domain=DOMAIN,
                            spatial_shape=SPATIAL, batch_size=1)
    graph = helper.make_graph(
        [node, helper.make_node("Relu", ["dense"], ["out"])], "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("coords", TensorProto.INT32, ["n", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 6, 3, 4])],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def test_onnxruntime_lowering_attaches_bodies_and_matches_torch():
    ctx = PassContext(target_backend="onnxruntime")
    lowered, record = run_pass(Pass("lower", lower), _scatter_model(), ctx)
    assert [f.name for f in lowered.functions] == ["ScatterDense"]
    assert [n.op_type for n in custom_nodes(lowered)] == ["ScatterDense"]  # still one node
    assert record.nodes_before == record.nodes_after == 2
    coords = np.array([[0, 0, 0, 0], [0, 1, 2, 3], [0, 1, 0, 2]], dtype=np.int32)
    features = np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32)
    session = ort.InferenceSession(lowered.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(["out"], {"features": features, "coords": coords})[0]
    ref = torch.relu(scatter_dense(torch.from_numpy(features), torch.from_numpy(coords), SPATIAL, 1)).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_tensorrt_lowering_keeps_bare_nodes_and_drops_bodies():
    with_bodies = lower(_scatter_model(), PassContext(target_backend="onnxruntime"))
    lowered, _ = run_pass(Pass("lower", lower), with_bodies, PassContext(target_backend="tensorrt"))
    assert len(lowered.functions) == 0
    assert [(n.op_type, n.domain) for n in lowered.graph.node] == [("ScatterDense", DOMAIN), ("Relu", "")]
    assert {(o.domain, o.version) for o in lowered.opset_import} >= {(DOMAIN, 1)}


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown target backend"):
        lower(_scatter_model(), PassContext(target_backend="tvm"))


@pytest.mark.parametrize(
    ("tag", "name"), [("cpu", "cpu.onnx"), ("jetson/agx-orin-64gb", "jetson_agx-orin-64gb.onnx")]
)
def test_lowered_filename(tag, name):
    assert lowered_filename(tag) == name
