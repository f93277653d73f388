from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator
from onnx_toys import conv_stack_model, toy_feeds

from sparsefuse.errors import SparsefuseError
from sparsefuse.targets.backends import onnxruntime as ort_backend
from sparsefuse.targets.profiler import write_profile
from sparsefuse.targets.registry import get_target


def test_build_run_matches_reference_and_saves_optimized_model(toy_onnx, tmp_path):
    built = ort_backend.build(
        toy_onnx, get_target("cpu"), ort_backend.OrtOptions(intra_op_threads=1), tmp_path / "eng"
    )
    assert built.providers == ("CPUExecutionProvider",)
    assert built.optimized_path == tmp_path / "eng" / "model.ort.onnx"
    assert built.optimized_path.is_file()
    assert not list((tmp_path / "eng").glob("*.tmp"))
    feeds = toy_feeds(37)
    out = ort_backend.run(built, feeds)
    expected = ReferenceEvaluator(conv_stack_model()).run(None, feeds)
    np.testing.assert_allclose(out["heatmap"], expected[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["points_sum"], feeds["points"].sum(), rtol=1e-5)


def test_build_errors_are_user_errors(tmp_path):
    with pytest.raises(SparsefuseError, match="not found"):
        ort_backend.build(tmp_path / "missing.onnx", get_target("cpu"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(SparsefuseError, match="cannot load"):
        ort_backend.build(bad, get_target("cpu"))
    with pytest.raises(SparsefuseError, match="graph_optimization"):
        ort_backend.OrtOptions(graph_optimization="max")


def test_run_reports_missing_inputs(toy_onnx):
    built = ort_backend.build(toy_onnx, get_target("cpu"))
    with pytest.raises(SparsefuseError, match="missing model inputs: points"):
        ort_backend.run(built, {"images": toy_feeds(3)["images"]})


def test_choose_providers_prefers_gpu_eps_only_for_gpu_targets():
    offered = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    gpu = get_target("jetson/agx-orin-64gb")
    assert ort_backend.choose_providers(gpu, offered) == tuple(offered)
    assert ort_backend.choose_providers(gpu, ["CPUExecutionProvider"]) == ("CPUExecutionProvider",)
    assert ort_backend.choose_providers(get_target("cpu"), offered) == ("CPUExecutionProvider",)


def test_profile_measures_and_breaks_down_by_module(toy_onnx, tmp_path):
    built = ort_backend.build(toy_onnx, get_target("cpu"), ort_backend.OrtOptions(intra_op_threads=1))
    frames = [toy_feeds(50), toy_feeds(80, seed=1)]
    prof = ort_backend.profile(built, frames, runs=6, warmup=1, node_runs=2)
    doc = prof.to_json()
    assert doc["label"] == "measured" and doc["backend"] == "onnxruntime"
    assert doc["latency_ms"]["runs"] == 6
    assert (
        doc["latency_ms"]["min"]
        <= doc["latency_ms"]["median"]
        <= doc["latency_ms"]["p90"]
        <= doc["latency_ms"]["max"]
    )
    assert doc["lidar_points_per_frame"] == [50, 80, 50, 80, 50, 80]
    modules = doc["per_module_ms"]
    assert set(modules) == {"camera_backbone", "bev_pool", "heads", "lidar_backbone"}
    assert all(v > 0 for v in modules.values())
    names = [n["name"] for n in doc["per_node"]]
    assert "/camera/backbone/conv0/Conv" in names and "/head/conv/Conv" in names
    # The function body is attributed to its call site, not left as "other".
    pooled = [n for n in doc["per_node"] if n["module"] == "bev_pool"]
    assert pooled and all("/camera/bev_pool/BEVPoolCall" in n["name"] for n in pooled)
    path = write_profile(prof, tmp_path / "profile.json")
    assert json.loads(path.read_text())["schema_version"] == 1
    assert (tmp_path / "profile.png").stat().st_size > 1000


def test_name_function_bodies_keeps_semantics():
    model = conv_stack_model()
    named = ort_backend.name_function_bodies(model)
    onnx.checker.check_model(named)
    assert [f.name for f in named.functions] == ["Scale__site4"]
    assert all(n.name.startswith("/camera/bev_pool/BEVPoolCall/") for n in named.functions[0].node)
    feeds = toy_feeds(5)
    a = ReferenceEvaluator(model).run(None, feeds)
    b = ReferenceEvaluator(named).run(None, feeds)
    np.testing.assert_array_equal(a[0], b[0])


def test_gpu_provider_options(tmp_path):
    listed = ort_backend.provider_list(
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], tmp_path, "/x/lib.so"
    )
    name, opts = listed[0]
    assert name == "TensorrtExecutionProvider" and opts["trt_fp16_enable"] == "True"
    assert opts["trt_engine_cache_path"] == str(tmp_path / "ort_trt_cache")
    assert opts["trt_extra_plugin_lib_paths"] == "/x/lib.so"
    assert listed[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_backend.provider_list(["CPUExecutionProvider"], None) == ["CPUExecutionProvider"]
