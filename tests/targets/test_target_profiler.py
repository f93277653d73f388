from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from sparsefuse.errors import SparsefuseError
from sparsefuse.targets.backends.ort_profiling import attach_scopes, parse_ort_profile
from sparsefuse.targets.modules import module_of, node_scopes
from sparsefuse.targets.profile_import import import_trtexec, parse_trtexec_layers
from sparsefuse.targets.profiler import (
    NodeTime,
    Profile,
    aggregate_modules,
    latency_stats,
    time_runs,
    write_profile,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0.01, max_value=1e4, allow_nan=False), min_size=1, max_size=200))
def test_latency_stats_match_numpy(samples):
    stats = latency_stats(samples)
    x = np.asarray(samples)
    assert stats["median"] == pytest.approx(np.median(x))
    assert stats["p90"] == pytest.approx(np.percentile(x, 90))
    assert stats["p99"] == pytest.approx(np.percentile(x, 99))
    assert stats["std"] == pytest.approx(x.std(), abs=1e-9)
    assert stats["min"] <= stats["median"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    assert stats["runs"] == len(samples)


def test_latency_stats_empty_is_user_error():
    with pytest.raises(SparsefuseError):
        latency_stats([])


def test_profile_labels_are_enforced():
    with pytest.raises(ValueError, match="cost model"):
        Profile(label="estimated", target="cpu", backend="onnxruntime")
    with pytest.raises(ValueError, match="no cost model"):
        Profile(label="measured", target="cpu", backend="onnxruntime", cost_model=("x", "1"))
    with pytest.raises(ValueError, match="label"):
        Profile(label="guessed", target="cpu", backend="onnxruntime")


def test_measured_and_estimated_json(tmp_path):
    nodes = (
        NodeTime("a", "Conv", 2.0, scope="camera/camera.backbone/camera.backbone.stem.0"),
        NodeTime("b", "Voxelize", 1.0),
        NodeTime("c", "Conv", 3.0, scope="head/head.seg/head.seg.0"),
    )
    measured = Profile(
        "measured",
        "cpu",
        "onnxruntime",
        device="CPU",
        samples_ms=(10.0, 12.0, 11.0),
        per_node=nodes,
        lidar_points=(5, 6, 7),
    )
    doc = measured.to_json()
    assert doc["schema_version"] == 1 and doc["label"] == "measured"
    assert doc["latency_ms"]["median"] == 11.0 and doc["throughput_fps"] == pytest.approx(1000 / 11)
    assert doc["per_module_ms"] == {"voxelize": 1.0, "camera_backbone": 2.0, "heads": 3.0}
    assert "cost_model" not in doc
    estimated = Profile(
        "estimated", "jetson/agx-orin-64gb", "tensorrt", per_node=nodes, cost_model=("m", "1")
    )
    edoc = estimated.to_json()
    assert edoc["latency_ms"] == {"total": 6.0} and edoc["cost_model"] == {"name": "m", "version": "1"}
    assert "samples_ms" not in edoc and "peak_memory_mb" not in edoc
    path = write_profile(estimated, tmp_path / "profile.json")
    assert json.loads(path.read_text())["label"] == "estimated"
    assert (tmp_path / "profile.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("name", "op", "module"),
    [
        (
            "camera/camera.backbone/camera.backbone.stages.0/camera.backbone.stages.0.0.conv1",
            "Conv",
            "camera_backbone",
        ),
        ("camera/camera.neck/camera.neck.out", "Conv", "camera_backbone"),
        ("camera/camera.depth_net/camera.depth_net.conv", "Conv", "camera_depth"),
        ("camera/camera.bev/camera.bev.0", "Conv", "vtransform"),
        ("camera/bev_pool", "Reshape", "bev_pool"),
        ("lidar/voxelize", "Slice", "voxelize"),
        ("lidar/lidar.encoder/lidar.encoder.stages.1", "Gather", "lidar_backbone"),
        ("anything", "SparseConv3d", "lidar_backbone"),
        ("fusion/fusion.fuser/fusion.fuser.0", "Conv", "fuser"),
        ("fusion/cat", "Concat", "fuser"),
        ("fusion/fusion.encoder/fusion.encoder.0", "Conv", "bev_encoder"),
        ("head/head.heatmap/head.heatmap.0", "Conv", "heads"),
        ("/camera/backbone/conv1/Conv", "Conv", "camera_backbone"),
        ("node_decoder_blocks_0", "Conv", "bev_encoder"),
        ("node_conv2d_15", "Conv", "other"),
    ],
)
def test_module_table(name, op, module):
    assert module_of(name, op) == module


def test_node_scopes_from_exporter_metadata():
    node = helper.make_node("Relu", ["x"], ["y"], name="node_relu_3")
    prop = node.metadata_props.add()
    prop.key, prop.value = "pkg.torch.onnx.name_scopes", "['', 'fusion', 'fusion.encoder', 'relu']"
    graph = helper.make_graph(
        [node, helper.make_node("Relu", ["y"], ["z"], name="plain")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph)
    assert node_scopes(model) == {"node_relu_3": "fusion/fusion.encoder"}
    # ORT names fused or inlined nodes after the originals; both resolve to the call site's scope.
    nodes = attach_scopes(
        [NodeTime("node_relu_3/SomeFusion", "Relu", 1.0), NodeTime("plain", "Relu", 2.0)], model
    )
    assert [(n.scope, n.module) for n in nodes] == [("fusion/fusion.encoder", "bev_encoder"), ("", "other")]


def test_time_runs_counts_and_cycles_frames():
    calls = []
    samples, frames = time_runs(calls.append, num_frames=3, warmup=2, runs=7)
    assert calls == [0, 1, 0, 1, 2, 0, 1, 2, 0]
    assert frames == [0, 1, 2, 0, 1, 2, 0] and len(samples) == 7 and all(s >= 0 for s in samples)
    samples, _ = time_runs(lambda i: None, num_frames=1, warmup=0, runs=0, duration_s=0.01)
    assert len(samples) >= 1
    with pytest.raises(SparsefuseError):
        time_runs(lambda i: None, num_frames=0)


def test_parse_ort_profile_drops_warmup_and_takes_median(tmp_path):
    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 10, "dur": 9000, "args": {"op_name": "Conv"}},
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 210, "dur": 1000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "relu_kernel_time", "ts": 250, "dur": 500, "args": {"op_name": "Relu"}},
        {"cat": "Node", "name": "relu_kernel_time", "ts": 260, "dur": 500, "args": {"op_name": "Relu"}},
        {"cat": "Session", "name": "model_run", "ts": 400, "dur": 100},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 410, "dur": 3000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "relu_kernel_time", "ts": 450, "dur": 2000, "args": {"op_name": "Relu"}},
        {"cat": "Session", "name": "model_run", "ts": 600, "dur": 100},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 610, "dur": 10000, "args": {"op_name": "Conv"}},
    ]
    path = tmp_path / "prof.json"
    path.write_text(json.dumps(events))
    nodes = parse_ort_profile(path, runs=3, skip_runs=1)
    # conv per run: 1, 3, 10 ms -> median 3; relu per run (two calls summed): 1, 2, 0 -> median 1.
    assert [(n.name, n.op_type, n.time_ms) for n in nodes] == [("conv", "Conv", 3.0), ("relu", "Relu", 1.0)]


def _trtexec_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "profile_trtexec.json").write_text(
        json.dumps(
            [
                {"count": 100},
                {
                    "name": "node_conv2d + node_relu",
                    "timeMs": 50.0,
                    "averageMs": 0.5,
                    "medianMs": 0.5,
                    "percentage": 50,
                },
                {
                    "name": "{ForeignNode[node_sparse...node_scatter]}",
                    "timeMs": 30.0,
                    "averageMs": 0.3,
                    "percentage": 30,
                },
                {
                    "name": "Reformatting CopyNode for Input Tensor 0 to node_head",
                    "timeMs": 20.0,
                    "percentage": 20,
                },
            ]
        )
    )
    (folder / "times_trtexec.json").write_text(
        json.dumps(
            [
                {"startEnqMs": 0, "latencyMs": 1.25, "computeMs": 1.2},
                {"startEnqMs": 2, "latencyMs": 1.0, "computeMs": 1.0},
            ]
        )
    )


def test_import_trtexec_maps_layers_to_onnx_nodes(tmp_path):
    _trtexec_files(tmp_path / "eng")
    (tmp_path / "eng" / "build.log").write_text(
        "[I] [TRT] (Sparsity) Layers eligible for sparse math: node_conv2d, node_head\n"
        "[I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: node_conv2d\n"
    )
    nodes = []
    for name, op, scope in (
        ("node_conv2d", "Conv", "camera/camera.backbone"),
        ("node_relu", "Relu", ""),
        ("node_sparse", "SparseConv3d", "lidar/lidar.encoder"),
        ("node_head", "Conv", "head/head.seg"),
    ):
        node = helper.make_node(op, ["x"], ["y_" + name], name=name)
        if scope:
            prop = node.metadata_props.add()
            prop.key, prop.value = "pkg.torch.onnx.name_scopes", repr([""] + scope.split("/") + ["op"])
        nodes.append(node)
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))
    profile = import_trtexec(
        tmp_path / "eng",
        "jetson/agx-orin-64gb",
        onnx_model=model,
        lidar_points=30000,
        tensorrt_version="10.3",
    )
    doc = profile.to_json()
    assert doc["label"] == "measured" and doc["backend"] == "tensorrt"
    assert doc["latency_ms"]["median"] == pytest.approx(1.125)
    assert [(n["name"], n["module"], n["time_ms"]) for n in doc["per_node"]] == [
        ("node_conv2d", "camera_backbone", 0.5),
        ("node_sparse", "lidar_backbone", 0.3),
        ("node_head", "heads", 0.2),
    ]
    assert doc["lidar_points_per_frame"] == [30000, 30000]
    assert "2 layers eligible, 1 picked sparse kernels (node_conv2d)" in doc["notes"][-1]
    assert parse_trtexec_layers([{"count": 4}, {"name": "x", "timeMs": 2.0}]) == [("x", 0.5)]
    with pytest.raises(SparsefuseError, match="not found"):
        import_trtexec(tmp_path / "missing", "cpu")


def test_aggregate_modules_keeps_module_order():
    nodes = [
        NodeTime("h", "Conv", 1.0, module="heads"),
        NodeTime("v", "Voxelize", 2.0),
        NodeTime("h2", "Conv", 0.5, module="heads"),
    ]
    assert list(aggregate_modules(nodes).items()) == [("voxelize", 2.0), ("heads", 1.5)]


def test_fold_to_graph_nodes():
    from sparsefuse.targets.backends.ort_profiling import fold_to_graph_nodes

    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["a"], name="node_a"),
            helper.make_node("Voxelize", ["a"], ["b"], name="vox"),
        ],
        "g",
        [],
        [],
    )
    model = helper.make_model(graph)
    nodes = [
        NodeTime("_inlfunc_Voxelize__site1_vox/Slice_3", "Slice", 1.0),
        NodeTime("_inlfunc_Voxelize__site1_vox/Unique_9", "Unique", 2.0),
        NodeTime("node_a/SomeFusion", "Relu", 0.5),
        NodeTime("ReorderOutput_token_3", "ReorderOutput", 9.0),
    ]
    assert fold_to_graph_nodes(nodes, model) == {"vox": 3.0, "node_a": 0.5}
