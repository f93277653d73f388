"""build_engine.sh / profile_engine.sh: checked flag by flag, and executed against a stand-in
trtexec that records its arguments (it writes no engine)."""

from __future__ import annotations

import os
import stat
import subprocess

import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx_toys import conv_stack_model

from sparsefuse.errors import SparsefuseError
from sparsefuse.targets.backends import trtexec
from sparsefuse.targets.registry import get_target
from sparsefuse.targets.trt_plan import (
    SHAPE_GRANULARITY,
    SHAPE_HEADROOM,
    ShapeRange,
    TrtOptions,
    make_plan,
    range_from_counts,
)

# trtexec flag names of TensorRT 10, transcribed from the help text in NVIDIA/TensorRT
# samples/common/sampleOptions.cpp (BuildOptions / InferenceOptions / ReportingOptions / SystemOptions).
TRT10_FLAGS = {
    "--onnx",
    "--minShapes",
    "--optShapes",
    "--maxShapes",
    "--shapes",
    "--memPoolSize",
    "--profilingVerbosity",
    "--sparsity",
    "--fp16",
    "--int8",
    "--saveEngine",
    "--loadEngine",
    "--timingCacheFile",
    "--builderOptimizationLevel",
    "--useDLACore",
    "--allowGPUFallback",
    "--staticPlugins",
    "--dynamicPlugins",
    "--setPluginsToSerialize",
    "--skipInference",
    "--warmUp",
    "--duration",
    "--iterations",
    "--useCudaGraph",
    "--noDataTransfers",
    "--useSpinWait",
    "--separateProfileRun",
    "--dumpProfile",
    "--dumpLayerInfo",
    "--exportTimes",
    "--exportProfile",
    "--exportLayerInfo",
    "--verbose",
}
# TensorRT 8.5 (JetPack 5, Xavier): plugins through --plugins; no --builderOptimizationLevel (8.6+),
# no --staticPlugins/--dynamicPlugins (10.0+).
TRT85_FLAGS = (
    TRT10_FLAGS
    - {"--builderOptimizationLevel", "--staticPlugins", "--dynamicPlugins", "--setPluginsToSerialize"}
) | {"--plugins"}


def flag_names(argv):
    return [a.split("=", 1)[0] for a in argv]


@pytest.fixture
def onnx_path(tmp_path):
    path = tmp_path / "lowered" / "jetson_agx-orin-64gb.onnx"
    path.parent.mkdir()
    onnx.save(conv_stack_model(), str(path))
    return path


def orin_plan(onnx_path, tmp_path, **kwargs):
    options = TrtOptions.with_point_counts([20000, 31000, 35000], **kwargs)
    return make_plan(onnx_path, get_target("jetson/agx-orin-64gb"), options, tmp_path / "engine" / "orin")


def test_orin_build_flags_exact(onnx_path, tmp_path):
    argv = trtexec.build_argv(orin_plan(onnx_path, tmp_path))
    assert argv == [
        "--onnx=$ONNX",
        "--staticPlugins=$PLUGIN_LIB",
        "--fp16",
        "--sparsity=enable",
        "--minShapes=points:19968x4",
        "--optShapes=points:31000x4",
        "--maxShapes=points:43776x4",
        "--timingCacheFile=$HERE/timing.cache",
        "--memPoolSize=workspace:8192",
        "--builderOptimizationLevel=3",
        "--profilingVerbosity=detailed",
        "--saveEngine=$HERE/model.plan",
        "--exportLayerInfo=$HERE/layers.json",
        "--skipInference",
    ]
    assert set(flag_names(argv)) <= TRT10_FLAGS


def test_orin_profile_flags_exact(onnx_path, tmp_path):
    argv = trtexec.profile_argv(orin_plan(onnx_path, tmp_path))
    assert argv == [
        "--loadEngine=$HERE/model.plan",
        "--staticPlugins=$PLUGIN_LIB",
        "--shapes=points:31000x4",
        "--warmUp=500",
        "--duration=10",
        "--useCudaGraph",
        "--noDataTransfers",
        "--useSpinWait",
        "--separateProfileRun",
        "--dumpProfile",
        "--exportProfile=$HERE/profile_trtexec.json",
        "--exportTimes=$HERE/times_trtexec.json",
        "--exportLayerInfo=$HERE/layers_runtime.json",
    ]
    assert set(flag_names(argv)) <= TRT10_FLAGS


def test_dla_dynamic_plugins_and_pool(onnx_path, tmp_path):
    plan = orin_plan(
        onnx_path,
        tmp_path,
        dla_core=1,
        plugin_loading="dynamic",
        workspace_mib=1024,
        builder_optimization_level=5,
    )
    argv = trtexec.build_argv(plan)
    assert "--useDLACore=1" in argv and "--allowGPUFallback" in argv
    assert "--dynamicPlugins=$PLUGIN_LIB" in argv and "--memPoolSize=workspace:1024" in argv
    assert "--builderOptimizationLevel=5" in argv
    assert "--useDLACore=1" in trtexec.profile_argv(plan)
    assert set(flag_names(argv)) <= TRT10_FLAGS


def test_xavier_uses_trt85_flags_and_warns(onnx_path, tmp_path):
    plan = make_plan(
        onnx_path, get_target("jetson/agx-xavier"), TrtOptions.with_point_counts([9000]), tmp_path
    )
    argv = trtexec.build_argv(plan)
    assert "--plugins=$PLUGIN_LIB" in argv
    assert "--sparsity=enable" not in argv  # Volta has no 2:4 tensor cores
    assert not any(a.startswith("--builderOptimizationLevel") for a in argv)
    assert set(flag_names(argv)) <= TRT85_FLAGS
    assert set(flag_names(trtexec.profile_argv(plan))) <= TRT85_FLAGS
    assert any("IPluginV3" in w for w in plan.warnings)
    assert "IPluginV3" in trtexec.render_build_script(plan)


def test_int8_needs_qdq_and_sparsity_needs_ampere(onnx_path, tmp_path):
    with pytest.raises(SparsefuseError, match="Q"):
        orin_plan(onnx_path, tmp_path, precision="int8")
    with pytest.raises(SparsefuseError, match="2:4"):
        make_plan(
            onnx_path,
            get_target("jetson/agx-xavier"),
            TrtOptions.with_point_counts([9], sparsity=True),
            tmp_path,
        )
    with pytest.raises(SparsefuseError, match="DLA cores"):
        make_plan(
            onnx_path,
            get_target("jetson/orin-nano-8gb"),
            TrtOptions.with_point_counts([9], dla_core=0),
            tmp_path,
        )
    with pytest.raises(SparsefuseError, match="no observed sizes"):
        make_plan(onnx_path, get_target("desktop/a100"), TrtOptions(), tmp_path)
    with pytest.raises(SparsefuseError, match="onnxruntime backend"):
        make_plan(onnx_path, get_target("cpu"), TrtOptions(), tmp_path)


def test_explicit_shape_range_wins(onnx_path, tmp_path):
    explicit = ShapeRange("points", (100, 4), (2000, 4), (9000, 4))
    plan = make_plan(
        onnx_path,
        get_target("desktop/l4"),
        TrtOptions(shape_ranges=(explicit,), dynamic_dims=(("points", (5,)),)),
        tmp_path,
    )
    assert plan.profiles == (explicit,)
    with pytest.raises(SparsefuseError, match="not ordered"):
        ShapeRange("points", (10, 4), (5, 4), (20, 4))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=300_000), min_size=1, max_size=50))
def test_range_from_counts_covers_observations(counts):
    lo, opt, hi = range_from_counts(counts)
    assert 1 <= lo <= max(1, min(counts)) and lo <= opt <= hi
    assert lo == 1 or lo % SHAPE_GRANULARITY == 0
    assert hi % SHAPE_GRANULARITY == 0 and hi >= max(counts) * SHAPE_HEADROOM - 1e-9
    assert opt == max(lo, sorted(counts)[len(counts) // 2])


def _fake_trtexec(path):
    path.write_text(
        "#!/usr/bin/env bash\n"
        'printf "%s\\n" "$@" > "$FAKE_ARGS"\n'
        'echo "[I] TensorRT v100300"\n'
        'echo "[I] [TRT] (Sparsity) Layers eligible for sparse math: /fuser/conv"\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_build_script_runs_with_exact_arguments(onnx_path, tmp_path):
    plan = orin_plan(onnx_path, tmp_path)
    recipes = trtexec.write_recipes(plan)
    assert os.access(recipes.build_script, os.X_OK) and os.access(recipes.profile_script, os.X_OK)
    fake = tmp_path / "trtexec"
    _fake_trtexec(fake)
    lib = tmp_path / "libsparsefuse_trt_plugins.so"
    lib.write_bytes(b"")
    env = {
        **os.environ,
        "TRTEXEC": str(fake),
        "FAKE_ARGS": str(tmp_path / "args.txt"),
        "SPARSEFUSE_TRT_PLUGINS": str(lib),
    }
    done = subprocess.run(["bash", str(recipes.build_script)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    here = str(plan.out_dir)
    expected = [
        a.replace("$ONNX", here + "/../../lowered/jetson_agx-orin-64gb.onnx")
        .replace("$PLUGIN_LIB", str(lib))
        .replace("$HERE", here)
        for a in recipes.build_argv
    ]
    assert (tmp_path / "args.txt").read_text().splitlines() == expected
    assert os.path.samefile(expected[0].split("=", 1)[1], onnx_path)
    assert "(Sparsity) Layers eligible" in (plan.out_dir / "sparsity.log").read_text()
    assert not (plan.out_dir / "model.plan").exists()
    # Without the plugin library the script stops with a clear message.
    env.pop("SPARSEFUSE_TRT_PLUGINS")
    done = subprocess.run(["bash", str(recipes.build_script)], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "plugin library" in done.stderr
    # The profile script refuses to run before an engine exists.
    env["SPARSEFUSE_TRT_PLUGINS"] = str(lib)
    done = subprocess.run(["bash", str(recipes.profile_script)], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "build_engine.sh first" in done.stderr


def test_profile_script_records_jetson_state(onnx_path, tmp_path):
    jetson = trtexec.render_profile_script(orin_plan(onnx_path, tmp_path))
    assert "nvpmodel -q" in jetson and "jetson_clocks --show" in jetson and "tegrastats" in jetson
    desktop = make_plan(
        onnx_path, get_target("desktop/rtx-3090"), TrtOptions.with_point_counts([5]), tmp_path
    )
    text = trtexec.render_profile_script(desktop)
    assert "nvidia-smi" in text and "nvpmodel" not in text


def test_plugin_library_default_path(onnx_path, tmp_path):
    relative = trtexec.render_build_script(orin_plan(onnx_path, tmp_path))
    assert 'PLUGIN_LIB="${SPARSEFUSE_TRT_PLUGINS:-$HERE/libsparsefuse_trt_plugins.so}"' in relative
    absolute = trtexec.render_build_script(orin_plan(onnx_path, tmp_path, plugin_library="/opt/sf/libsf.so"))
    assert 'PLUGIN_LIB="${SPARSEFUSE_TRT_PLUGINS:-/opt/sf/libsf.so}"' in absolute


# TensorRT 11 removed weak typing: these trtexec flags are gone, --stronglyTyped is implied.
TRT11_REMOVED = {"--fp16", "--int8", "--best", "--calib", "--bf16", "--fp8"}
TRT11_FLAGS = (TRT10_FLAGS - TRT11_REMOVED) | {"--stronglyTyped"}


def _typed(model: onnx.ModelProto, kind: str) -> onnx.ModelProto:
    """The toy graph as the precision stage would leave it: an fp16 Cast, or a Q/DQ pair."""
    from onnx import TensorProto, helper

    first = model.graph.node[0]
    name = first.input[0]
    if kind == "fp16":
        nodes = [helper.make_node("Cast", [name], ["x16"], to=TensorProto.FLOAT16),
                 helper.make_node("Cast", ["x16"], ["x32"], to=TensorProto.FLOAT)]
    else:
        model.graph.initializer.extend([helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
                                        helper.make_tensor("z", TensorProto.INT8, [], [0])])
        nodes = [helper.make_node("QuantizeLinear", [name, "s", "z"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["x32"])]
    first.input[0] = "x32"
    model.graph.node.insert(0, nodes[1])
    model.graph.node.insert(0, nodes[0])
    return model


def _target_with_trt(tmp_path, version: str):
    from pathlib import Path

    registry = Path(__file__).resolve().parents[2] / "targets" / "registry"
    text = (registry / "desktop-h100.toml").read_text()
    text = text.replace('tag = "desktop/h100"', f'tag = "lab/h100-trt{version.replace(".", "-")}"')
    lines = [f'tensorrt = "{version}"' if line.startswith("tensorrt = ") else line
             for line in text.splitlines()]
    path = tmp_path / f"h100-{version}.toml"
    path.write_text("\n".join(lines) + "\n")
    return get_target(str(path))


@pytest.mark.parametrize("version,graph,requested,expected", [
    # TensorRT 11: only strong typing, whatever the graph and the request.
    ("11.1", "fp32", None, {"--stronglyTyped"}),
    ("11.1", "fp16", None, {"--stronglyTyped"}),
    ("11.1", "int8", None, {"--stronglyTyped"}),
    ("11.1", "fp32", "fp16", {"--stronglyTyped"}),
    # TensorRT 10.12+: typed graphs strongly typed, untyped ones the legacy flags.
    ("10.16", "fp16", None, {"--stronglyTyped"}),
    ("10.16", "int8", None, {"--stronglyTyped"}),
    ("10.16", "fp32", None, {"--fp16"}),
    ("10.16", "fp32", "fp32", set()),
    # TensorRT 10.3 (JetPack 6): no --stronglyTyped yet, legacy flags.
    ("10.3", "fp16", None, {"--fp16"}),
    ("10.3", "int8", None, {"--fp16", "--int8"}),
    ("10.3", "fp32", None, {"--fp16"}),
])
def test_precision_flags_follow_the_tensorrt_version_and_the_graph(onnx_path, tmp_path, version, graph,
                                                                    requested, expected):
    model = onnx.load(str(onnx_path))
    if graph != "fp32":
        onnx.save(_typed(model, graph), str(onnx_path))
    target = _target_with_trt(tmp_path, version)
    plan = make_plan(onnx_path, target, TrtOptions.with_point_counts([20000], precision=requested),
                     tmp_path / "engine")
    argv = set(flag_names(trtexec.build_argv(plan)))
    assert argv & {"--stronglyTyped", "--fp16", "--int8", "--best"} == expected
    allowed = TRT11_FLAGS if version.startswith("11") else TRT10_FLAGS | {"--stronglyTyped"}
    assert argv <= allowed, argv - allowed
    if version == "11.1" and graph == "fp32" and requested == "fp16":
        assert any("strongly typed" in w for w in plan.warnings)
    if version == "10.3" and graph != "fp32":
        assert any("--stronglyTyped" in w for w in plan.warnings)


def test_jetson_recipes_are_tensorrt_10_syntax_and_carry_no_strong_typing_flag(onnx_path, tmp_path):
    onnx.save(_typed(onnx.load(str(onnx_path)), "fp16"), str(onnx_path))
    argv = trtexec.build_argv(orin_plan(onnx_path, tmp_path))
    assert "--stronglyTyped" not in argv and "--fp16" in argv  # JetPack 6 ships TensorRT 10.3
    assert set(flag_names(argv)) <= TRT10_FLAGS
