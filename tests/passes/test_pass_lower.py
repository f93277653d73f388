"""Lowering: TensorRT keeps bare custom nodes; ONNX Runtime gets the function bodies and runs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from sparsefuse.layout import engine_rel, lowered_rel
from sparsefuse.passes.lower import custom_nodes, lower, runnable
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
    ("tag", "lowered", "engine"),
    [
        ("cpu", "lowered/cpu.onnx", "engine/cpu"),
        ("jetson/agx-orin-64gb", "lowered/jetson_agx-orin-64gb.onnx", "engine/jetson_agx-orin-64gb"),
    ],
)
def test_artifact_layout_per_target(tag, lowered, engine):
    assert (lowered_rel(tag), engine_rel(tag)) == (lowered, engine)


def _two_convs_model() -> onnx.ModelProto:
    """A strided SparseConv3d then a submanifold one, two outputs each (as the torch op returns)."""
    conv = dict(spatial_shape=[4, 4, 4], kernel_size=[3, 3, 3], padding=[1, 1, 1], domain=DOMAIN)
    nodes = [
        helper.make_node("SparseConv3d", ["features", "coords", "w1"], ["f1", "c1"], stride=[2, 2, 2], subm=0,
                         **conv),
        helper.make_node("SparseConv3d", ["f1", "c1", "w2"], ["f2", "c2"], spatial_shape=[2, 2, 2],
                         kernel_size=[3, 3, 3], subm=1, domain=DOMAIN),
    ]
    rng = np.random.default_rng(1)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in [("w1", (3, 3, 3, 3, 2)), ("w2", (2, 3, 3, 3, 3))]]
    graph = helper.make_graph(
        nodes, "convs",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 2]),
         helper.make_tensor_value_info("coords", TensorProto.INT32, ["n", 4])],
        [helper.make_tensor_value_info("f2", TensorProto.FLOAT, ["m", 2]),
         helper.make_tensor_value_info("c2", TensorProto.INT32, ["m", 4])],
        inits,
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def _conv_feeds() -> dict[str, np.ndarray]:
    coords = np.array([[0, 0, 0, 0], [0, 1, 2, 3], [0, 3, 3, 1], [0, 2, 0, 2], [0, 3, 1, 1]], dtype=np.int32)
    return {"features": np.random.default_rng(2).standard_normal((5, 2)).astype(np.float32), "coords": coords}


def test_tensorrt_lowering_binds_plugins_and_sizes_strided_outputs():
    """plugin_namespace on every custom node; num_out on strided (subm=0) SparseConv3d only.
    run_pass validates both lowerings (onnx.checker full + strict shape inference)."""
    trt, _ = run_pass(Pass("lower", lower), _two_convs_model(), PassContext(target_backend="tensorrt"))
    strided, subm = custom_nodes(trt)
    for node in (strided, subm):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == b"sparsefuse"
    assert len(strided.output) == 3 and len(subm.output) == 2
    inferred = onnx.shape_inference.infer_shapes(trt, strict_mode=True)
    num_out = next(v for v in inferred.graph.value_info if v.name == strided.output[2])
    assert num_out.type.tensor_type.elem_type == TensorProto.INT32
    assert len(num_out.type.tensor_type.shape.dim) == 0
    # ORT runs its function-attached copy (subm nodes get num_out back) like the ORT lowering.
    ort_ctx = PassContext(target_backend="onnxruntime")
    ort_lowered, _ = run_pass(Pass("lower", lower), _two_convs_model(), ort_ctx)
    assert all(len(n.output) == 3 for n in custom_nodes(ort_lowered))
    feeds = _conv_feeds()
    runnable_trt = run_pass(Pass("runnable", lambda m, _ctx: runnable(m)), trt, PassContext())[0]
    assert len(custom_nodes(trt)[1].output) == 2  # the copy, not the TensorRT graph, changed
    wanted = ["f1", "c1", strided.output[2], "f2", "c2"]
    for m in (runnable_trt, ort_lowered):
        for name in wanted[:3]:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    got = ort.InferenceSession(runnable_trt.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        wanted, feeds)
    ref = ort.InferenceSession(ort_lowered.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["f1", "c1", "f2", "c2"], feeds)
    f1, c1, num_out_value, f2, c2 = got
    assert num_out_value.dtype == np.int32 and num_out_value.shape == ()
    assert int(num_out_value) == c1.shape[0] > 0
    for a, b in zip([f1, c1, f2, c2], ref, strict=True):
        np.testing.assert_array_equal(a, b)
