"""`sparsefuse compile` for a TensorRT target on a machine without TensorRT (jetson/agx-orin-64gb):
the lowered ONNX binds the plugins, the engine recipes are written, verify checks the lowered graph
in ONNX Runtime (and says so) and the profile is estimated. One compile shared by the module."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from sparsefuse.compiler.cli import main
from sparsefuse.compiler.config import make_config
from sparsefuse.errors import SparsefuseError
from sparsefuse.plugins.common import DOMAIN

TAG = "jetson/agx-orin-64gb"
SLUG = "jetson_agx-orin-64gb"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("jetson") / "out"
    assert main(["compile", "--model", "bevfusion-tiny", "--target", TAG, "--out", str(out)]) == 0
    return out


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_lowered_onnx_binds_the_tensorrt_plugins(compiled):
    lowered = onnx.load(compiled / f"lowered/{SLUG}.onnx")
    assert len(lowered.functions) == 0  # TensorRT implements the nodes with its plugins
    custom = [n for n in lowered.graph.node if n.domain == DOMAIN]
    assert {n.op_type for n in custom} == {"Voxelize", "SparseConv3d", "ScatterDense", "BEVPool"}
    for node in custom:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == b"sparsefuse"
        if node.op_type == "SparseConv3d":
            assert len(node.output) == (2 if attrs["subm"] else 3), node.name
    assert any(n.op_type == "SparseConv3d" and len(n.output) == 3 for n in custom)  # strided convs exist


def test_engine_recipes_are_written_and_no_engine_is_faked(compiled):
    engine = compiled / "engine" / SLUG
    assert sorted(p.name for p in engine.iterdir()) == ["build_engine.sh", "profile_engine.sh"]
    build = (engine / "build_engine.sh").read_text()
    assert f'$HERE/../../lowered/{SLUG}.onnx' in build and "--saveEngine" in build
    assert "--minShapes" in build and "points:" in build
    assert "nvpmodel" in (engine / "profile_engine.sh").read_text()  # Jetson: power mode recorded
    details = _json(compiled / "compile.json")["stages"]["build"]["details"]
    assert details["backend"] == "tensorrt" and details["built"]["engine"] is None
    assert details["dynamic_dims"]["num_points"] > 0


def test_verify_checks_the_lowered_graph_and_says_it_is_not_an_engine(compiled):
    report = _json(compiled / "verify.json")
    assert report["pass"] is True and report["polygraphy"]["pass"] is True
    assert "NOT a TensorRT engine" in report["checked"] and "none was built" in report["checked"]
    assert report["onnx"] == "verify/lowered_with_functions.onnx"
    assert report["polygraphy"]["command"].startswith("polygraphy run verify/lowered_with_functions.onnx")
    runnable = onnx.load(compiled / report["onnx"])
    functions = sorted(f.name for f in runnable.functions)
    assert functions == ["BEVPool", "ScatterDense", "SparseConv3d", "Voxelize"]


def test_profile_is_estimated_with_modules(compiled):
    profile = _json(compiled / "profile.json")
    assert profile["label"] == "estimated" and profile["target"] == TAG
    assert profile["cost_model"]["name"] and "samples_ms" not in profile
    total = profile["latency_ms"]["total"]
    assert total > 0
    modules = profile["per_module_ms"]
    assert {"camera_backbone", "lidar_backbone", "heads"} <= set(modules)
    assert sum(modules.values()) == pytest.approx(total, rel=1e-6)
    assert (compiled / "profile.png").is_file()


def test_report_labels_the_latency_estimated_and_links_the_recipes(compiled):
    text = (compiled / "report.md").read_text()
    assert f"| target | {TAG} |" in text
    assert "## Latency (estimated)" in text and "## Per module (estimated)" in text
    assert "measured" not in text.split("## Latency")[1].split("## Engine")[0].replace("for measured", "")
    assert f"bash engine/{SLUG}/build_engine.sh" in text and "no engine was built" in text
    assert "NOT a TensorRT engine" in text


def test_every_registry_target_is_accepted_and_unknown_ones_are_refused(tmp_path):
    from sparsefuse.targets.registry import list_targets

    for target in list_targets():
        assert make_config("bevfusion-tiny", target.tag, tmp_path / "out").target == target.tag
    with pytest.raises(SparsefuseError):
        make_config("bevfusion-tiny", "jetson/no-such-board", tmp_path / "out")


def test_a_user_target_toml_is_accepted_by_its_path(tmp_path):
    from importlib.resources import files

    source = files("sparsefuse.targets").joinpath("registry", "jetson-agx-orin-64gb.toml")
    user = tmp_path / "lab-orin.toml"
    user.write_text(source.read_text())
    config = make_config("bevfusion-tiny", str(user), tmp_path / "out")
    assert config.target == user.resolve().as_posix()
