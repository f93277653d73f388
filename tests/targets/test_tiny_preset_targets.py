"""End to end on the real tiny preset: export -> lower for each backend -> targets/engine.py.

This is what `sparsefuse compile --target jetson/agx-orin-64gb` and `--target cpu` add after
lowering: recipes + an estimated profile, and a measured ORT profile with per-module times.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch

    from sparsefuse.models.frames import random_frame
    from sparsefuse.models.presets import build_model, get_preset
    from sparsefuse.passes.cleanup import cleanup
    from sparsefuse.passes.export import export_model
    from sparsefuse.passes.lower import lower
    from sparsefuse.passes.manager import PassContext

    preset = get_preset("bevfusion-tiny")
    frame = {k: torch.as_tensor(v) for k, v in random_frame(preset, 0).items()}
    clean = cleanup(export_model(build_model("bevfusion-tiny", seed=0).eval(), frame), PassContext())
    root = tmp_path_factory.mktemp("tiny")
    paths = {}
    for backend, slug in (("onnxruntime", "cpu"), ("tensorrt", "jetson_agx-orin-64gb")):
        paths[backend] = root / "lowered" / f"{slug}.onnx"
        paths[backend].parent.mkdir(exist_ok=True)
        onnx.save(lower(clean, PassContext(target_backend=backend)), str(paths[backend]))
    frames = []
    for seed in (11, 12):
        f = random_frame(preset, seed)
        frames.append({k: np.ascontiguousarray(f[k].numpy(), dtype=np.float32) for k in ("images", "points")})
    return root, paths, frames


def test_jetson_recipes_and_estimated_profile(tiny, monkeypatch):
    from sparsefuse.targets.backends import tensorrt as trt_backend
    from sparsefuse.targets.engine import emit_engine_artifacts

    monkeypatch.setattr(trt_backend, "tensorrt_available", lambda: False)
    root, paths, frames = tiny
    art = emit_engine_artifacts(
        paths["tensorrt"],
        "jetson/agx-orin-64gb",
        None,
        root / "engine" / "jetson_agx-orin-64gb",
        feeds_list=frames,
        profile_path=root / "profile.json",
    )
    build = art.build_script.read_text()
    assert "--staticPlugins=$PLUGIN_LIB" in build and "--sparsity=enable" in build and "--fp16" in build
    counts = sorted(int(f["points"].shape[0]) for f in frames)
    assert f"--optShapes=points:{counts[1]}x4" in build
    assert "nvpmodel -q" in art.profile_script.read_text()
    doc = json.loads((root / "profile.json").read_text())
    assert doc["label"] == "estimated" and doc["cost_model"]["name"] == "sparsefuse-roofline"
    assert {
        "voxelize",
        "lidar_backbone",
        "camera_backbone",
        "camera_depth",
        "bev_pool",
        "fuser",
        "bev_encoder",
        "heads",
    } <= set(doc["per_module_ms"])
    assert doc["per_module_ms"].get("other", 0.0) < 0.05 * doc["latency_ms"]["total"]
    sites = dict(art.dynamic_dims)
    assert sites["num_points"] in counts and all(v > 0 for v in sites.values())


def test_cpu_measured_profile_per_module(tiny):
    from sparsefuse.targets.engine import profile_onnxruntime

    root, paths, frames = tiny
    prof = profile_onnxruntime(
        paths["onnxruntime"], "cpu", frames, root / "cpu_profile.json", runs=2, warmup=1, node_runs=1
    )
    doc = json.loads((root / "cpu_profile.json").read_text())
    assert doc["label"] == "measured" and doc["latency_ms"]["runs"] == 2 and prof.device.startswith("CPU")
    modules = doc["per_module_ms"]
    assert {"voxelize", "lidar_backbone", "camera_backbone", "bev_pool", "heads"} <= set(modules)
    assert modules.get("other", 0.0) < 0.05 * sum(modules.values())
    assert doc["lidar_points_per_frame"] == [
        int(frames[0]["points"].shape[0]),
        int(frames[1]["points"].shape[0]),
    ]
