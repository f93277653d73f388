"""Contract test: our build plan -> polygraphy/TensorRT API calls, checked with a recording double.

No TensorRT here: the double records every constructor call and never writes an engine file.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import onnx
import pytest
from onnx_toys import conv_stack_model

from sparsefuse.targets.backends import tensorrt as trt_backend
from sparsefuse.targets.registry import get_target
from sparsefuse.targets.trt_plan import TrtOptions, make_plan


class Recorder:
    def __init__(self):
        self.calls: list[tuple[str, tuple, dict]] = []

    def named(self, name):
        return [c for c in self.calls if c[0] == name]


def fake_api(rec: Recorder) -> SimpleNamespace:
    class FakeConfigObj:
        DLA_core = -1

    class Loader:
        """Records its construction; calling it returns a fake product."""

        name = "Loader"

        def __init__(self, *args, **kwargs):
            rec.calls.append((self.name, args, kwargs))
            self.args, self.kwargs = args, kwargs

        def __call__(self, *args, **kwargs):
            rec.calls.append((self.name + "()", args, kwargs))
            return self.product(*args)

        def product(self, *args):
            return None

    class NetworkFromOnnxPath(Loader):
        name = "NetworkFromOnnxPath"

    class CreateConfig(Loader):
        name = "CreateConfig"

        def product(self, *args):
            return FakeConfigObj()

    class PostprocessConfig(Loader):
        name = "PostprocessConfig"

        def product(self, builder=None, network=None):
            config = FakeConfigObj()
            self.args[1](builder, network, config)
            return config

    class Engine:
        def create_engine_inspector(self):
            return SimpleNamespace(
                get_engine_information=lambda fmt: json.dumps({"Layers": ["conv0"], "fmt": fmt})
            )

    class EngineFromNetwork(Loader):
        name = "EngineFromNetwork"

        def product(self, *args):
            return Engine()

    class SaveEngine(Loader):
        name = "SaveEngine"

    class LoadPlugins(Loader):
        name = "LoadPlugins"

    class Profile:
        def __init__(self):
            self.shapes = {}

        def add(self, name, min, opt, max):
            rec.calls.append(("Profile.add", (name,), {"min": min, "opt": opt, "max": max}))
            self.shapes[name] = (min, opt, max)
            return self

    registry = SimpleNamespace(load_library=lambda path: rec.calls.append(("load_library", (path,), {})))
    trt = SimpleNamespace(
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
        ProfilingVerbosity=SimpleNamespace(DETAILED="DETAILED"),
        LayerInformationFormat=SimpleNamespace(JSON="JSON"),
        get_plugin_registry=lambda: registry,
    )
    return SimpleNamespace(
        trt=trt,
        CreateConfig=CreateConfig,
        EngineFromNetwork=EngineFromNetwork,
        LoadPlugins=LoadPlugins,
        NetworkFromOnnxPath=NetworkFromOnnxPath,
        PostprocessConfig=PostprocessConfig,
        Profile=Profile,
        SaveEngine=SaveEngine,
    )


@pytest.fixture
def onnx_path(tmp_path):
    path = tmp_path / "lowered.onnx"
    onnx.save(conv_stack_model(), str(path))
    return path


def test_orin_fp16_sparse_dynamic_points(onnx_path, tmp_path):
    plan = make_plan(
        onnx_path,
        get_target("jetson/agx-orin-64gb"),
        TrtOptions.with_point_counts([30000, 20000, 41000], plugin_loading="dynamic"),
        tmp_path / "eng",
    )
    rec = Recorder()
    trt_backend.build_engine(plan, fake_api(rec), plugin_library="/opt/lib/libsparsefuse_trt_plugins.so")
    # Plugins: TensorRT 10 dynamic loading through the registry (getCreators), before parsing.
    assert rec.calls[0] == ("load_library", ("/opt/lib/libsparsefuse_trt_plugins.so",), {})
    assert rec.named("NetworkFromOnnxPath")[0][1] == (str(onnx_path.resolve()),)
    assert rec.named("Profile.add") == [
        ("Profile.add", ("points",), {"min": (19968, 4), "opt": (30000, 4), "max": (51456, 4)})
    ]
    ((_, _, cfg),) = rec.named("CreateConfig")
    assert cfg["fp16"] is True and cfg["int8"] is False and cfg["sparse_weights"] is True
    assert cfg["builder_optimization_level"] == 3
    assert cfg["memory_pool_limits"] == {"WORKSPACE": 8192 * 2**20}
    assert cfg["profiling_verbosity"] == "DETAILED"
    assert cfg["use_dla"] is False and cfg["load_timing_cache"] is None  # no cache yet
    assert len(cfg["profiles"]) == 1
    assert not rec.named("PostprocessConfig")
    ((_, _, eng),) = rec.named("EngineFromNetwork")
    assert eng["save_timing_cache"] == str(tmp_path.resolve() / "eng" / "timing.cache")
    ((_, save_args, _),) = rec.named("SaveEngine")
    assert save_args[1] == str(tmp_path.resolve() / "eng" / "model.plan.partial")
    assert not (tmp_path / "eng" / "model.plan").exists()  # the double never writes an engine
    assert json.loads((tmp_path / "eng" / "layers.json").read_text())["fmt"] == "JSON"


def test_dla_core_gpu_fallback_and_existing_timing_cache(onnx_path, tmp_path):
    out = tmp_path / "eng"
    out.mkdir()
    (out / "timing.cache").write_bytes(b"cache from an earlier build")
    plan = make_plan(
        onnx_path,
        get_target("jetson/agx-orin-64gb"),
        TrtOptions.with_point_counts([1000], dla_core=1, plugin_loading="static"),
        out,
    )
    rec = Recorder()
    trt_backend.build_engine(plan, fake_api(rec), plugin_library="/x/lib.so")
    assert rec.named("LoadPlugins")[0][2] == {"plugins": ["/x/lib.so"]}
    assert not rec.named("load_library")
    ((_, _, cfg),) = rec.named("CreateConfig")
    assert cfg["use_dla"] is True and cfg["allow_gpu_fallback"] is True
    assert cfg["load_timing_cache"] == str(out.resolve() / "timing.cache")
    ((_, post_args, _),) = rec.named("PostprocessConfig")
    assert callable(post_args[1])
    # Calling the config loader applies the raw-API DLA core index.
    loader = rec.named("EngineFromNetwork")[0][2]["config"]
    assert loader(None, object()).DLA_core == 1
    assert any("DLA needs static shapes" in w for w in plan.warnings)


def test_desktop_without_custom_ops_loads_no_plugin(tmp_path):
    model = conv_stack_model()
    # Replace the custom-domain call by a plain Identity: no plugin library is needed.
    for node in model.graph.node:
        if node.domain == "sparsefuse":
            node.domain, node.op_type = "", "Identity"
    del model.functions[:]
    path = tmp_path / "plain.onnx"
    onnx.save(model, str(path))
    plan = make_plan(
        path,
        get_target("desktop/h100"),
        TrtOptions.with_point_counts([5000], sparsity=False, workspace_mib=4096),
        tmp_path,
    )
    rec = Recorder()
    trt_backend.build_engine(plan, fake_api(rec))
    assert not rec.named("load_library") and not rec.named("LoadPlugins")
    ((_, _, cfg),) = rec.named("CreateConfig")
    assert cfg["sparse_weights"] is False and cfg["memory_pool_limits"] == {"WORKSPACE": 4096 * 2**20}


def test_default_plugin_loading_is_static(onnx_path, tmp_path):
    plan = make_plan(onnx_path, get_target("desktop/rtx-3090"), TrtOptions.with_point_counts([10]), tmp_path)
    rec = Recorder()
    trt_backend.build_engine(plan, fake_api(rec), plugin_library="/x/libsparsefuse_trt_plugins.so")
    assert rec.calls[0] == ("LoadPlugins", (), {"plugins": ["/x/libsparsefuse_trt_plugins.so"]})
    assert not rec.named("load_library")


def test_parse_sparsity_log():
    log = (
        "[I] [TRT] (Sparsity) Layers eligible for sparse math: /camera/conv1, /camera/conv2, /fuser/conv\n"
        "[I] [TRT] other line\n"
        "[I] [TRT] (Sparsity) TRT inference plan picked sparse implementation for layers: /fuser/conv\n"
    )
    eligible, picked = trt_backend.parse_sparsity_log(log)
    assert eligible == ("/camera/conv1", "/camera/conv2", "/fuser/conv")
    assert picked == ("/fuser/conv",)
    assert trt_backend.parse_sparsity_log("nothing") == ((), ())


def test_build_without_tensorrt_writes_recipes_only(onnx_path, tmp_path, monkeypatch):
    monkeypatch.setattr(trt_backend, "tensorrt_available", lambda: False)
    built = trt_backend.build(
        onnx_path, get_target("desktop/rtx-4090"), TrtOptions.with_point_counts([100, 200]), tmp_path / "eng"
    )
    assert built.engine_path is None
    assert sorted(p.name for p in (tmp_path / "eng").iterdir()) == ["build_engine.sh", "profile_engine.sh"]
    from sparsefuse.errors import SparsefuseError

    with pytest.raises(SparsefuseError, match="no TensorRT engine"):
        trt_backend.run(built, {})


@pytest.mark.tensorrt
def test_real_engine_build(tmp_path):
    """Builds a real engine from a plain conv graph (no plugins) where TensorRT + a GPU exist."""
    import numpy as np

    model = conv_stack_model()
    for node in model.graph.node:
        if node.domain == "sparsefuse":
            node.domain, node.op_type = "", "Identity"
    del model.functions[:]
    path = tmp_path / "plain.onnx"
    onnx.save(model, str(path))
    target = get_target("desktop/h100")
    built = trt_backend.build(
        path,
        target,
        TrtOptions.with_point_counts([64, 128], precision="fp32", sparsity=False),
        tmp_path / "eng",
    )
    assert built.engine_path is not None and built.engine_path.stat().st_size > 0
    assert (tmp_path / "eng" / "timing.cache").stat().st_size > 0
    assert json.loads((tmp_path / "eng" / "layers.json").read_text())
    from onnx.reference import ReferenceEvaluator
    from onnx_toys import toy_feeds

    feeds = toy_feeds(100)
    out = trt_backend.run(built, feeds)
    ref = ReferenceEvaluator(model).run(None, feeds)
    np.testing.assert_allclose(out["heatmap"], ref[0], rtol=1e-3, atol=1e-3)


def test_probe_is_false_without_tensorrt_and_imports_nothing():
    import importlib.util
    import sys

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    trt_backend.tensorrt_available.cache_clear()
    assert trt_backend.tensorrt_available() is False
    assert "tensorrt" not in sys.modules
