"""The ONNX facade: schemas agree with the torch ops, translations cover them, FunctionProtos are
attached / stripped correctly and run in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper
from onnx.defs import OpSchema

import sparsefuse.plugins  # noqa: F401  (registers the torch ops)
from sparsefuse.errors import SparsefuseError
from sparsefuse.plugins import onnx_ops

TORCH_NAMES = {
    "Voxelize": "voxelize",
    "SparseConv3d": "sparse_conv3d",
    "SparseInverseConv3d": "sparse_inverse_conv3d",
    "ScatterDense": "scatter_dense",
    "BEVPool": "bev_pool",
}


def onnx_attr_type(torch_type: str) -> OpSchema.AttrType:
    return {
        "int": OpSchema.AttrType.INT,
        "bool": OpSchema.AttrType.INT,
        "float": OpSchema.AttrType.FLOAT,
        "str": OpSchema.AttrType.STRING,
        "List[int]": OpSchema.AttrType.INTS,
        "List[float]": OpSchema.AttrType.FLOATS,
    }[torch_type]


def test_register_schemas_is_idempotent():
    onnx_ops.register_schemas()
    onnx_ops.register_schemas()
    for op_type in TORCH_NAMES:
        schema = onnx.defs.get_schema(op_type, 1, "sparsefuse")
        assert (schema.name, schema.domain, schema.since_version) == (op_type, "sparsefuse", 1)


@pytest.mark.parametrize("op_type", sorted(TORCH_NAMES))
def test_schema_agrees_with_torch_signature(op_type):
    onnx_ops.register_schemas()
    schema = onnx.defs.get_schema(op_type, 1, "sparsefuse")
    torch_schema = getattr(torch.ops.sparsefuse, TORCH_NAMES[op_type]).default._schema
    tensors = [a for a in torch_schema.arguments if "Tensor" in str(a.type)]
    scalars = [a for a in torch_schema.arguments if "Tensor" not in str(a.type)]
    # Tensor arguments are the inputs, in order; Tensor? is an optional input.
    assert [a.name for a in tensors] == [p.name for p in schema.inputs]
    for arg, param in zip(tensors, schema.inputs, strict=True):
        optional = str(arg.type).startswith("Optional")
        assert (param.option == OpSchema.FormalParameterOption.Optional) == optional
    # Only the tensorrt lowering uses plugin_namespace and SparseConv3d's optional num_out output;
    # Voxelize's optional num_points_per_voxel is the fourth return of torch's voxelize_with_counts.
    optional_outputs = {"num_out", "num_points_per_voxel"}
    assert len(torch_schema.returns) == len([p for p in schema.outputs if p.name not in optional_outputs])
    # Every other argument is an attribute of the same name and type; defaults agree.
    assert {a.name for a in scalars} == set(schema.attributes) - {"plugin_namespace"}
    for arg in scalars:
        attr = schema.attributes[arg.name]
        assert attr.type == onnx_attr_type(str(arg.type)), arg.name
        if arg.has_default_value():
            default = helper.get_attribute_value(attr.default_value)
            assert (default.decode() if isinstance(default, bytes) else default) == arg.default_value
    # Integer index tensors are int32, features float / float16.
    for param in [*schema.inputs, *schema.outputs]:
        allowed = param.types
        assert allowed == {"tensor(int32)"} or allowed == {"tensor(float)", "tensor(float16)"}, param.name


def test_translation_table_covers_every_op():
    table = onnx_ops.custom_translation_table()
    expected = {getattr(torch.ops.sparsefuse, name).default for name in TORCH_NAMES.values()}
    assert set(table) == expected | {torch.ops.sparsefuse.voxelize_with_counts.default}


@pytest.mark.parametrize("opset", [18, 20])
def test_function_protos_mirror_the_schemas(opset):
    onnx_ops.register_schemas()
    functions = onnx_ops.function_protos(opset)
    assert sorted(f.name for f in functions) == sorted(TORCH_NAMES)
    for function in functions:
        schema = onnx.defs.get_schema(function.name, 1, "sparsefuse")
        assert function.domain == "sparsefuse"
        assert list(function.input) == [p.name for p in schema.inputs]
        assert list(function.output) == [p.name for p in schema.outputs]
        required = {name for name, a in schema.attributes.items() if a.required}
        assert set(function.attribute) == required
        defaults = {a.name: helper.get_attribute_value(a) for a in function.attribute_proto}
        assert defaults == {
            name: helper.get_attribute_value(a.default_value)
            for name, a in schema.attributes.items()
            if not a.required
        }
        assert [(o.domain, o.version) for o in function.opset_import] == [("", opset)]
        for node in function.node:  # the body uses standard ops only
            assert node.domain in ("", "ai.onnx")
    with pytest.raises(ValueError, match="opset"):
        onnx_ops.function_protos(17)


def scatter_relu_model(opset: int, ir_version: int = 8) -> onnx.ModelProto:
    """ScatterDense -> Relu, with no function attached."""
    nodes = [
        helper.make_node(
            "ScatterDense", ["features", "coords"], ["dense"], domain="sparsefuse", spatial_shape=[2, 3, 4]
        ),
        helper.make_node("Relu", ["dense"], ["out"]),
    ]
    inputs = [
        helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["N", 2]),
        helper.make_tensor_value_info("coords", onnx.TensorProto.INT32, ["N", 4]),
    ]
    outputs = [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 4, 3, 4])]
    graph = helper.make_graph(nodes, "scatter_relu", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def run(model: onnx.ModelProto) -> np.ndarray:
    features = np.array([[1.0, -2.0], [3.0, 4.0]], np.float32)
    coords = np.array([[0, 1, 2, 3], [0, 0, 0, 0]], np.int32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"features": features, "coords": coords})[0]


@pytest.mark.parametrize("opset", [17, 18, 20])
def test_attach_functions_makes_the_model_runnable(opset):
    plain = scatter_relu_model(opset)
    with pytest.raises(Exception, match="ScatterDense"):
        run(plain)
    model = onnx_ops.attach_functions(plain)
    assert len(plain.functions) == 0  # the input is not modified
    assert [(f.domain, f.name) for f in model.functions] == [("sparsefuse", "ScatterDense")]
    imports = {o.domain: o.version for o in model.opset_import}
    assert imports["sparsefuse"] == 1 and imports[""] == max(opset, 18)
    assert model.ir_version >= 10
    onnx.checker.check_model(model, full_check=True)
    out = run(model)
    expected = np.zeros((1, 4, 3, 4), np.float32)
    expected[0, 0 * 2 + 1, 2, 3] = 1.0  # channel c*Z + z
    expected[0, 0, 0, 0], expected[0, 2, 0, 0] = 3.0, 4.0
    np.testing.assert_array_equal(out, expected)


def test_attach_twice_then_strip():
    once = onnx_ops.attach_functions(scatter_relu_model(20))
    twice = onnx_ops.attach_functions(once)
    assert len(twice.functions) == 1
    stripped = onnx_ops.strip_functions(twice)
    assert len(stripped.functions) == 0
    assert [n.op_type for n in stripped.graph.node] == ["ScatterDense", "Relu"]
    assert any(o.domain == "sparsefuse" for o in stripped.opset_import)


def test_attach_rejects_unknown_custom_op():
    model = scatter_relu_model(20)
    model.graph.node[0].op_type = "SparseConv4d"
    with pytest.raises(SparsefuseError, match="SparseConv4d"):
        onnx_ops.attach_functions(model)


def test_attach_leaves_models_without_custom_ops_alone():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    model = onnx_ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))
    assert len(model.functions) == 0
    assert [o.domain for o in model.opset_import] == [""]


def test_custom_op_types_sees_subgraphs():
    inner = helper.make_graph(
        [helper.make_node("BEVPool", ["a"], ["b"], domain="sparsefuse")],
        "inner",
        [],
        [helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, None)],
    )
    outer = helper.make_node("If", ["cond"], ["b"], then_branch=inner, else_branch=inner)
    graph = helper.make_graph([outer], "g", [], [])
    assert onnx_ops.custom_op_types(helper.make_model(graph)) == {"BEVPool"}


def test_schemas_infer_output_types():
    """Shape inference through our nodes (schemas carry an inference rule)."""
    onnx_ops.register_schemas()
    plain = scatter_relu_model(20)
    plain.opset_import.append(helper.make_opsetid("sparsefuse", 1))
    model = onnx.shape_inference.infer_shapes(plain, strict_mode=True)
    dense = next(v for v in model.graph.value_info if v.name == "dense")
    assert dense.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in dense.type.tensor_type.shape.dim] == [1, 4, 3, 4]


def test_function_bodies_never_reduce_with_scatter():
    """ORT's CPU ScatterND / ScatterElements with a reduction race on duplicate indices across
    threads (microsoft/onnxruntime#23396): outputs changed run to run. Bodies must not use them."""
    for proto in onnx_ops.function_protos():
        for node in proto.node:
            reduction = {a.name: a.s for a in node.attribute}.get("reduction", b"none")
            assert not (node.op_type.startswith("Scatter") and reduction != b"none"), proto.name


def test_bev_pool_function_is_bitwise_deterministic_on_many_threads():
    rng = np.random.default_rng(0)
    cams, depth_bins, height, width, channels, cells = 2, 6, 8, 11, 16, 12
    ranks_bev = np.sort(rng.integers(0, cells, 4000)).astype(np.int32)  # heavy duplicates per cell
    starts = np.flatnonzero(np.r_[True, ranks_bev[1:] != ranks_bev[:-1]]).astype(np.int32)
    lengths = np.diff(np.r_[starts, len(ranks_bev)]).astype(np.int32)
    feeds = {
        "depth": rng.random((cams, depth_bins, height, width), np.float32),
        "feat": rng.standard_normal((cams, height, width, channels)).astype(np.float32),
        "ranks_depth": rng.integers(0, cams * depth_bins * height * width, 4000).astype(np.int32),
        "ranks_feat": rng.integers(0, cams * height * width, 4000).astype(np.int32),
        "ranks_bev": ranks_bev,
        "interval_starts": starts,
        "interval_lengths": lengths,
    }
    model = onnx_ops.single_node_model("BEVPool", feeds, {"bev_shape": [1, 3, 4]})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 4
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    first = session.run(None, feeds)[0]
    for _ in range(20):
        assert np.array_equal(session.run(None, feeds)[0], first)
    contrib = feeds["depth"].reshape(-1)[feeds["ranks_depth"]][:, None] * feeds["feat"].reshape(
        -1, channels)[feeds["ranks_feat"]]
    want = np.zeros((cells, channels))
    np.add.at(want, ranks_bev, contrib.astype(np.float64))
    got = first.transpose(0, 2, 3, 1).reshape(cells, channels)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
