from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx_toys import conv_stack_model, toy_feeds

from sparsefuse.errors import SparsefuseError
from sparsefuse.targets import cost_model
from sparsefuse.targets.onnx_stats import NodeWork, default_dims, node_work, observe_dynamic_dims
from sparsefuse.targets.profiler import NodeTime
from sparsefuse.targets.registry import get_target, target_from_dict

LAB_GPU = target_from_dict(
    {
        "tag": "lab/gpu",
        "name": "lab",
        "kind": "desktop",
        "backend": "tensorrt",
        "sm": 86,
        "tensorrt": "10.8",
        "fp16_dense_tflops": 10.0,
        "fp16_sparse_tflops": 20.0,
        "fp32_tflops": 1.0,
        "dram_gbps": 100.0,
        "sources": {
            k: "test"
            for k in ("sm", "tensorrt", "fp16_dense_tflops", "fp16_sparse_tflops", "fp32_tflops", "dram_gbps")
        },
    }
)


def conv_model(cin: int, cout: int, size: int, k: int = 3) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.zeros((cout, cin, k, k), np.float32), "fuser.conv.weight")
    node = helper.make_node("Conv", ["x", "fuser.conv.weight"], ["y"], name="node_conv", pads=[k // 2] * 4)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, size, size])],
        [w],
    )
    return onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    )


def test_roofline_by_hand():
    (work,) = node_work(conv_model(256, 256, 32), {})
    flops = 2 * 256 * 32 * 32 * 256 * 9
    assert (
        work.flops == flops
        and work.in_channels == 256
        and work.out_channels == 256
        and work.kernel_volume == 9
    )
    rates = cost_model.target_rates(LAB_GPU)  # fp16 on a TensorRT target
    eff = cost_model.EFFICIENCY["desktop"]
    compute_ms = flops / (10e12 * eff.compute) * 1e3
    data = (2 * 256 * 32 * 32 * 4 + 256 * 256 * 9 * 4) / 2
    memory_ms = data / (100e9 * eff.memory) * 1e3
    assert compute_ms > memory_ms
    assert cost_model.node_latency_ms(work, rates) == pytest.approx(compute_ms + eff.launch_ms)
    sparse = cost_model.node_latency_ms(work, rates, "2:4@0.5")
    assert sparse == pytest.approx(compute_ms / cost_model.SPARSE_SPEEDUP_LARGE + eff.launch_ms)
    assert cost_model.node_latency_ms(work, rates, "unstructured@0.9") == cost_model.node_latency_ms(
        work, rates
    )
    half = cost_model.node_latency_ms(work, rates, "channel@0.5")
    assert half == pytest.approx(compute_ms / 2 + eff.launch_ms)


def test_memory_bound_layer_and_small_channels():
    (work,) = node_work(conv_model(16, 16, 64, k=1), {})
    rates = cost_model.target_rates(LAB_GPU)
    eff = cost_model.EFFICIENCY["desktop"]
    data = (2 * 16 * 64 * 64 * 4 + 16 * 16 * 4) / 2
    assert cost_model.node_latency_ms(work, rates) == pytest.approx(
        data / (100e9 * eff.memory) * 1e3 + eff.launch_ms
    )
    # C*R*S = 16 < 4096 for a 1x1 conv: not 2:4 eligible, so no gain.
    assert not cost_model.eligible_2to4(work)
    assert cost_model.node_latency_ms(work, rates, "2:4@0.5") == cost_model.node_latency_ms(work, rates)


def test_sparse_gain_needs_sparse_tensor_cores():
    (work,) = node_work(conv_model(256, 256, 32), {})
    xavier = cost_model.target_rates(get_target("jetson/agx-xavier"))
    assert cost_model.node_latency_ms(work, xavier, "2:4@0.5") == cost_model.node_latency_ms(work, xavier)
    orin = cost_model.target_rates(get_target("jetson/agx-orin-64gb"))
    assert cost_model.node_latency_ms(work, orin, "2:4@0.5") < cost_model.node_latency_ms(work, orin)


def _reference_eligible(c: int, rs: int) -> bool:
    if c % 4 != 0 or rs > 32:
        return False
    if rs > 1 and c * rs < 512:
        return False
    return not (rs == 1 and c * rs < 4096)


@given(st.integers(1, 2048), st.sampled_from([1, 4, 9, 25, 27, 49]))
def test_eligibility_matches_v2xfusion_filter(c, rs):
    work = NodeWork("n", "Conv", 1.0, 1.0, 1.0, weight="w", in_channels=c, out_channels=64, kernel_volume=rs)
    assert cost_model.eligible_2to4(work) == _reference_eligible(c, rs)


def test_candidate_keys():
    assert cost_model.parse_candidate("2:4@0.5") == ("2:4", 0.5)
    assert cost_model.parse_candidate("dense@0") == ("dense", 0.0)
    for bad in ("magic@0.5", "channel@x", "channel@2"):
        with pytest.raises(SparsefuseError):
            cost_model.parse_candidate(bad)


def test_latency_table_is_keyed_by_weight_name(tmp_path):
    model = conv_model(256, 256, 32)
    table = cost_model.latency_table(
        model, get_target("jetson/agx-orin-64gb"), ("dense@0", "2:4@0.5", "channel@0.5")
    )
    assert list(table) == ["fuser.conv.weight"]
    row = table["fuser.conv.weight"]
    assert row["2:4@0.5"] < row["dense@0"] and row["channel@0.5"] < row["dense@0"]
    # Measured dense time replaces the estimate; candidates keep the model's ratio.
    measured = cost_model.latency_table(
        model,
        get_target("jetson/agx-orin-64gb"),
        ("dense@0", "2:4@0.5"),
        measured=[NodeTime("node_conv", "Conv", 5.0)],
    )
    assert measured["fuser.conv.weight"]["dense@0"] == 5.0
    assert measured["fuser.conv.weight"]["2:4@0.5"] == pytest.approx(5.0 * row["2:4@0.5"] / row["dense@0"])
    path = cost_model.write_latency_table(table, tmp_path / "table.json", get_target("jetson/agx-orin-64gb"))
    assert json.loads(path.read_text()) == table
    meta = json.loads((tmp_path / "table.meta.json").read_text())
    assert meta["label"] == "estimated" and meta["cost_model"]["name"] == cost_model.COST_MODEL_NAME


def test_estimated_profile_every_target_and_replacement():
    model = conv_stack_model()
    totals = {}
    for target in ("cpu", "jetson/orin-nano-8gb", "jetson/agx-orin-64gb", "desktop/h100"):
        prof = cost_model.estimated_profile(model, get_target(target))
        doc = prof.to_json()
        assert doc["label"] == "estimated" and doc["cost_model"]["version"] == cost_model.COST_MODEL_VERSION
        assert doc["latency_ms"]["total"] == pytest.approx(sum(n["time_ms"] for n in doc["per_node"]))
        assert "camera_backbone" in doc["per_module_ms"]
        totals[target] = doc["latency_ms"]["total"]
    assert totals["desktop/h100"] < totals["jetson/agx-orin-64gb"] < totals["jetson/orin-nano-8gb"]
    replaced = cost_model.estimated_profile(
        model, get_target("desktop/h100"), measured=[NodeTime("/head/conv/Conv", "Conv", 7.0)]
    )
    node = next(n for n in replaced.per_node if n.name == "/head/conv/Conv")
    assert node.time_ms == 7.0 and replaced.label == "estimated"


def test_dynamic_dims_defaults_and_observation():
    model = conv_stack_model()
    assert default_dims(model, num_points=123) == {"num_points": 123}
    feeds = [toy_feeds(40), toy_feeds(60, seed=1), toy_feeds(90, seed=2)]
    assert observe_dynamic_dims(model, feeds) == {"num_points": 60}
    reduce_sum = next(w for w in node_work(model, {"num_points": 60}) if w.op_type == "ReduceSum")
    assert reduce_sum.act_bytes == 4.0 * (60 * 4 + 1)


def test_missing_rates_are_user_errors():
    with pytest.raises(SparsefuseError, match="int8"):
        cost_model.target_rates(get_target("cpu"), "int8")


def test_sparse_inverse_conv_counts_as_a_sparse_conv():
    """Weight at input 3, FLOPs from its output sites like SparseConv3d, a tensor-core op."""
    from sparsefuse.plugins import onnx_ops
    from sparsefuse.targets.onnx_stats import SPARSE_NEIGHBOR_FRACTION, TENSOR_CORE_OPS

    feeds = {"features": np.zeros((5, 8), np.float32), "coords": np.zeros((5, 4), np.int32),
             "out_coords": np.zeros((9, 4), np.int32), "weight": np.zeros((16, 3, 3, 3, 8), np.float32)}
    attrs = {"spatial_shape": [8, 8, 8], "kernel_size": [3, 3, 3], "stride": [2, 2, 2], "padding": [1, 1, 1]}
    model = onnx_ops.single_node_model("SparseInverseConv3d", feeds, attrs)
    model.graph.initializer.append(numpy_helper.from_array(feeds["weight"], "weight"))
    rows = model.graph.output[0].type.tensor_type.shape.dim[0]
    rows.dim_param = "out_coords_0"  # as exported: M is out_coords' row count (the fake kernel)
    model.graph.node[0].name = "lidar.up"
    (work,) = node_work(model, {"out_coords_0": 900, "features_0": 100})
    assert work.op_type in TENSOR_CORE_OPS and work.weight == "weight"
    assert (work.in_channels, work.out_channels, work.kernel_volume) == (8, 16, 27)
    assert work.flops == 2.0 * 900 * 27 * SPARSE_NEIGHBOR_FRACTION * 16 * 8
