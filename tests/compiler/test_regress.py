"""`sparsefuse regress`: baselines and keys, profile formats, exit codes, reports, accuracy gate,
and one real interleaved measurement on ONNX Runtime."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsefuse.compiler.cli import main
from sparsefuse.compiler.regress.accuracy import Tolerance, check_metric, check_output, default_tolerance
from sparsefuse.compiler.regress.baseline import BaselineKey, load_entries, select_entry, update_baseline
from sparsefuse.compiler.regress.samples import samples_from_json
from sparsefuse.errors import SparsefuseError

KEY = BaselineKey("abc123", "cpu", "onnxruntime", "1.31.1", "fp32", (("x", (1, 8, 16, 16)),))


def profile_doc(median: float, seed: int, n: int = 120, slow_module: str = "", **extra) -> dict:
    rng = np.random.default_rng(seed)
    mods = {m: 2.5 * np.exp(rng.normal(0, 0.02, n)) for m in ("camera", "lidar", "fusion", "head")}
    if slow_module:
        mods[slow_module] += median - 10.0
    total = sum(mods.values())
    return {
        "schema_version": 1,
        "label": "measured",
        "clock": "wall",
        "samples_ms": total.tolist(),
        "modules": {m: {"samples_ms": v.tolist()} for m, v in mods.items()},
        "key": {**KEY.to_json()},
        **extra,
    }


def write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_baseline_update_keeps_other_keys_and_refuses_mismatches(tmp_path):
    path = tmp_path / "base.json"
    samples = samples_from_json(profile_doc(10.0, 0), "p")
    update_baseline(path, KEY, samples)
    other = BaselineKey("abc123", "jetson/agx-orin-64gb", "tensorrt", "10.3", "fp16", KEY.input_shapes)
    update_baseline(path, other, samples)
    entries = load_entries(path)
    assert {e.key for e in entries} == {KEY, other}
    assert select_entry(entries, KEY, path).samples.total_ms == samples.total_ms
    assert not list(tmp_path.glob(".base.json.*"))  # atomic write left no temp file
    wrong = BaselineKey("abc123", "cpu", "onnxruntime", "1.20.0", "fp32", (("x", (1, 8, 32, 32)),))
    with pytest.raises(SparsefuseError) as err:
        select_entry(entries, wrong, path)
    assert "backend_version: '1.31.1' != '1.20.0'" in err.value.message
    assert "input_shapes" in err.value.message and "target" not in err.value.message


def test_estimated_and_sample_free_profiles_are_refused():
    with pytest.raises(SparsefuseError, match="labelled 'estimated'"):
        samples_from_json({"label": "estimated", "latency_ms": {"total": 3.0}}, "p")
    with pytest.raises(SparsefuseError, match="no per-run latency samples"):
        samples_from_json({"label": "measured", "latency_ms": {"median": 3.0}}, "p")


def test_targets_profile_format_is_read(tmp_path):
    """OUT/profile.json as targets/profiler.py writes it, keyed through compile.json beside it."""
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "compile.json").write_text(
        json.dumps({"config": {"model": "bevfusion-tiny", "seed": 0}, "inputs": {"rig": "builtin"}})
    )
    doc = {
        "schema_version": 1,
        "label": "measured",
        "target": "cpu",
        "backend": "onnxruntime",
        "versions": {"onnxruntime": "1.31.1"},
        "samples_ms": [10.0, 10.2, 9.9, 10.1],
        "per_module_ms": {"lidar_backbone": 4.0, "heads": 1.0},
        "latency_ms": {"median": 10.05},
    }
    profile = write(out / "profile.json", doc)
    samples = samples_from_json(doc, "p")
    assert samples.total_ms == (10.0, 10.2, 9.9, 10.1) and samples.module_point_ms["heads"] == 1.0
    base = tmp_path / "base.json"
    assert main(["regress", "--profile", str(profile), "--baseline", str(base), "--update-baseline"]) == 0
    (entry,) = load_entries(base)
    assert (
        entry.key.target == "cpu"
        and entry.key.backend_version == "1.31.1"
        and len(entry.key.model_hash) == 64
    )
    doc["per_module_ms"]["lidar_backbone"] = 6.0
    doc["samples_ms"] = [x * 1.2 for x in doc["samples_ms"]]
    write(profile, doc)
    assert (
        main(
            [
                "regress",
                "--profile",
                str(profile),
                "--baseline",
                str(base),
                "--report-dir",
                str(tmp_path / "r"),
                "--bootstrap",
                "300",
                "--no-plot",
            ]
        )
        == 1
    )
    report = json.loads((tmp_path / "r" / "regress.json").read_text())
    assert report["modules"]["lidar_backbone"]["delta_ms"] == pytest.approx(2.0)
    assert report["modules"]["lidar_backbone"]["ci"] is None


def test_exit_codes_and_reports(tmp_path, capsys):
    base = tmp_path / "base.json"
    assert (
        main(
            [
                "regress",
                "--profile",
                str(write(tmp_path / "p0.json", profile_doc(10.0, 0))),
                "--baseline",
                str(base),
                "--update-baseline",
            ]
        )
        == 0
    )
    same = write(tmp_path / "p1.json", profile_doc(10.0, 1))
    slow = write(tmp_path / "p2.json", profile_doc(11.0, 2, slow_module="lidar"))
    rd = tmp_path / "r"
    common = ["--baseline", str(base), "--report-dir", str(rd), "--bootstrap", "500"]
    assert main(["regress", "--profile", str(same), *common]) == 0
    capsys.readouterr()
    assert main(["regress", "--profile", str(slow), *common]) == 1
    assert "slower modules: lidar" in capsys.readouterr().out
    suite = ET.parse(rd / "regress.junit.xml").getroot().find("testsuite")
    cases = {c.get("name"): c.find("failure") is not None for c in suite.findall("testcase")}
    assert cases == {
        "latency.total": True,
        "latency.camera": False,
        "latency.fusion": False,
        "latency.head": False,
        "latency.lidar": True,
    }
    assert suite.get("tests") == "5" and suite.get("failures") == "2"
    md = (rd / "regress.md").read_text()
    assert "— FAIL" in md and "Attributed to: lidar" in md
    assert (rd / "regress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # +10% does not fail a 15% threshold.
    assert main(["regress", "--profile", str(slow), *common, "--threshold", "15", "--no-plot"]) == 0
    # Usage and key errors exit 2 with one line.
    mismatched = write(
        tmp_path / "p3.json", {**profile_doc(10.0, 3), "key": {**KEY.to_json(), "precision": "fp16"}}
    )
    capsys.readouterr()
    assert main(["regress", "--profile", str(mismatched), *common]) == 2
    assert "precision: 'fp32' != 'fp16'" in capsys.readouterr().err
    assert main(["regress", "--baseline", str(base)]) == 2
    assert main(["regress", "--profile", str(same), "--baseline", str(tmp_path / "none.json")]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["regress", "--threshold"])
    assert exc.value.code == 2


def test_update_baseline_refreshes_the_entry(tmp_path):
    base = tmp_path / "base.json"
    main(
        [
            "regress",
            "--profile",
            str(write(tmp_path / "a.json", profile_doc(10.0, 0))),
            "--baseline",
            str(base),
            "--update-baseline",
        ]
    )
    slow = write(tmp_path / "b.json", profile_doc(12.0, 1, slow_module="head"))
    args = [
        "regress",
        "--profile",
        str(slow),
        "--baseline",
        str(base),
        "--report-dir",
        str(tmp_path),
        "--no-plot",
    ]
    assert main([*args, "--update-baseline"]) == 0
    assert main(args) == 0  # the slower run is now the baseline
    (entry,) = load_entries(base)
    assert entry.samples.total_ms == tuple(json.loads(slow.read_text())["samples_ms"])


def test_accuracy_rules():
    ref = np.array([0.0, 10.0, -20.0], np.float32)
    tol = default_tolerance(ref.dtype)
    assert tol == Tolerance(1e-4, 1e-5)
    assert check_output("y", ref + 0.0019, ref, tol).passed  # 1e-4*20 + 1e-5 = 0.00201
    assert not check_output("y", ref + 0.0021, ref, tol).passed
    assert default_tolerance(np.dtype(np.float16)) == Tolerance(1e-2, 1e-3)
    coords = np.array([[0, 1, 2, 3]], np.int32)
    assert not check_output(
        "c", coords + np.array([[0, 0, 0, 1]], np.int32), coords, default_tolerance(coords.dtype)
    ).passed
    assert "shape" in check_output("y", ref[:2], ref, tol).message
    assert check_metric("mAP", 0.61, 0.615, 0.01).passed and not check_metric("mAP", 0.60, 0.615, 0.01).passed
    assert not check_metric("mAP", 0.63, 0.615, 0.01).passed  # ±: also flags an unexplained jump


def test_accuracy_gate_on_the_cli(tmp_path, capsys):
    base = tmp_path / "base.json"
    p = write(tmp_path / "p.json", profile_doc(10.0, 0))
    main(["regress", "--profile", str(p), "--baseline", str(base), "--update-baseline"])
    golden = {"heatmap": np.linspace(-1, 1, 50, dtype=np.float32), "coords": np.arange(8, dtype=np.int32)}
    np.savez(tmp_path / "golden.npz", **golden)
    np.savez(tmp_path / "good.npz", heatmap=golden["heatmap"] + 5e-5, coords=golden["coords"])
    np.savez(tmp_path / "bad.npz", heatmap=golden["heatmap"], coords=golden["coords"] + 1)
    args = [
        "regress",
        "--profile",
        str(p),
        "--baseline",
        str(base),
        "--golden",
        str(tmp_path / "golden.npz"),
        "--report-dir",
        str(tmp_path / "r"),
        "--bootstrap",
        "300",
        "--no-plot",
    ]
    assert main([*args, "--outputs", str(tmp_path / "good.npz")]) == 0
    capsys.readouterr()
    assert main([*args, "--outputs", str(tmp_path / "bad.npz")]) == 1
    assert "accuracy failed: coords" in capsys.readouterr().out
    assert main([*args, "--outputs", str(tmp_path / "good.npz"), "--metric", "NDS=0.70:0.72:0.01"]) == 1
    assert main([*args, "--outputs", str(tmp_path / "good.npz"), "--metric", "NDS=0.715:0.72:0.01"]) == 0
    assert main([*args, "--outputs", str(tmp_path / "good.npz"), "--metric", "NDS=bad"]) == 2


def conv_model(extra_convs: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for module in ("camera", "lidar", "head"):
        count = 2 + (extra_convs if module == "lidar" else 0)
        for i in range(count):
            w = numpy_helper.from_array(
                (rng.standard_normal((8, 8, 3, 3)) * 0.1).astype(np.float32), f"{module}.w{i}"
            )
            inits.append(w)
            nodes.append(
                helper.make_node(
                    "Conv", [x, w.name], [f"{module}.c{i}"], name=f"/{module}/conv{i}/Conv", pads=[1, 1, 1, 1]
                )
            )
            x = f"{module}.c{i}"
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_measured_interleaved_run_catches_and_attributes_a_real_slowdown(tmp_path, capsys):
    """Real ORT timing: lidar gets 6 extra convs (the total roughly triples)."""
    onnx.save(conv_model(), str(tmp_path / "a.onnx"))
    onnx.save(conv_model(extra_convs=6), str(tmp_path / "b.onnx"))
    rd = tmp_path / "r"
    code = main(
        [
            "regress",
            "--onnx",
            str(tmp_path / "b.onnx"),
            "--baseline-onnx",
            str(tmp_path / "a.onnx"),
            "--runs",
            "30",
            "--warmup",
            "3",
            "--report-dir",
            str(rd),
            "--bootstrap",
            "500",
            "--no-plot",
        ]
    )
    assert code == 1
    report = json.loads((rd / "regress.json").read_text())
    assert report["mode"] == "paired" and report["total"]["ratio"] > 1.5
    assert report["culprits"] == ["lidar"]
    assert report["key"]["input_shapes"] == {"x": [1, 8, 16, 16]}
    # Stored baseline from a measured run, then the same model measured again: same key, compared
    # as a ratio of ratios with the in-run reference kernel.
    base = tmp_path / "base.json"
    a = [
        "regress",
        "--onnx",
        str(tmp_path / "a.onnx"),
        "--baseline",
        str(base),
        "--runs",
        "20",
        "--warmup",
        "3",
        "--model-hash",
        "toy",
        "--report-dir",
        str(rd),
        "--bootstrap",
        "300",
        "--no-plot",
    ]
    assert main([*a, "--update-baseline"]) == 0
    assert main([*a, "--threshold", "60"]) == 0
    report = json.loads((rd / "regress.json").read_text())
    assert report["mode"] == "reference-normalized" and 0.5 < report["total"]["ratio"] < 1.6


def test_profiler_events_are_attributed_to_modules():
    from sparsefuse.compiler.regress.modules import ModuleMap, per_run_module_ms

    model = conv_model()
    mm = ModuleMap(model)
    assert mm.modules == ("camera", "head", "lidar")
    assert mm.module_of("/lidar/conv1/Conv_kernel_time") == "lidar"  # node name
    assert mm.module_of("head.c0_nchwc_kernel_time") == "head"  # NCHWc node named after its output
    assert mm.module_of("ReorderOutput_token_7_kernel_time") == "other"

    def ev(name, ts, dur, cat="Node"):
        return {"cat": cat, "name": name, "ts": ts, "dur": dur}

    events = [
        ev("model_run", 0, 100, "Session"),
        ev("ReorderInput_kernel_time", 1, 5),
        ev("camera.c0_nchwc_kernel_time", 10, 20),
        ev("ReorderOutput_token_3_kernel_time", 31, 4),
        ev("/lidar/conv0/Conv_kernel_time", 40, 30),
        ev("model_run", 200, 100, "Session"),
        ev("/head/conv0/Conv_kernel_time", 210, 50),
        ev("/head/conv0/Conv_fence_before", 205, 1),
    ]
    runs = per_run_module_ms(events, mm, skip_runs=0)
    # Unnamed optimizer kernels join their neighbour: the input reorder the next kernel's module,
    # the reorder after a camera conv the camera.
    assert runs[0] == pytest.approx({"camera": 0.029, "lidar": 0.030, "head": 0.0})
    assert runs[1] == pytest.approx({"camera": 0.0, "lidar": 0.0, "head": 0.050})
    assert per_run_module_ms(events, mm, skip_runs=1) == [runs[1]]


def test_bevfusion_module_scheme_uses_the_targets_split():
    from sparsefuse.compiler.regress.modules import ModuleMap

    node = helper.make_node("ScatterDense", ["f", "c"], ["d"], domain="sparsefuse", name="node_scatter_1")
    conv = helper.make_node("Conv", ["d", "w"], ["y"], name="/camera/backbone/conv1/Conv")
    graph = helper.make_graph([node, conv], "g", [], [])
    mm = ModuleMap(helper.make_model(graph), scheme="bevfusion")
    assert mm.by_node == {
        "node_scatter_1": "lidar_backbone",
        "/camera/backbone/conv1/Conv": "camera_backbone",
    }
    assert mm.module_of("d_nchwc_kernel_time") == "lidar_backbone"


def test_accuracy_gate_runs_the_candidate_on_golden_inputs(tmp_path, capsys):
    import onnxruntime as ort

    model = conv_model()
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).standard_normal((1, 8, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", x=x)
    (out_name,) = [o.name for o in model.graph.output]
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.savez(tmp_path / "golden.npz", **{out_name: ref})
    np.savez(tmp_path / "off.npz", **{out_name: ref * 1.001})
    # The bundle's tolerances.json layout: one section per precision.
    tol = {"fp32": {out_name: {"rtol_of_max": 1e-4, "atol": 1e-5, "exact": False}}}
    (tmp_path / "tol.json").write_text(json.dumps(tol))
    args = ["regress", "--onnx", str(tmp_path / "m.onnx"), "--baseline-onnx", str(tmp_path / "m.onnx"),
            "--inputs", str(tmp_path / "inputs.npz"), "--tolerances", str(tmp_path / "tol.json"),
            "--runs", "10", "--warmup", "2", "--threshold", "50", "--bootstrap", "200", "--no-plot",
            "--report-dir", str(tmp_path / "r")]  # fmt: skip
    assert main([*args, "--golden", str(tmp_path / "golden.npz")]) == 0
    capsys.readouterr()
    assert main([*args, "--golden", str(tmp_path / "off.npz")]) == 1
    assert f"accuracy failed: {out_name}" in capsys.readouterr().out
    suite = ET.parse(tmp_path / "r" / "regress.junit.xml").getroot().find("testsuite")
    failed = [c.get("name") for c in suite.findall("testcase") if c.find("failure") is not None]
    assert failed == [f"accuracy.{out_name}"]


def test_a_compile_directory_stands_for_its_lowered_model_and_verify_frames(tmp_path):
    import base64
    import io

    out = tmp_path / "OUT"
    (out / "lowered").mkdir(parents=True)
    (out / "verify").mkdir()
    onnx.save(conv_model(), str(out / "lowered" / "cpu.onnx"))
    record = {"config": {"model": "bevfusion-tiny", "seed": 3, "target": "cpu"}, "inputs": {"rig": "builtin"}}
    (out / "compile.json").write_text(json.dumps(record))
    buf = io.BytesIO()
    np.save(buf, np.full((1, 8, 16, 16), 0.5, np.float32))
    frame = {"x": {"array": base64.b64encode(buf.getvalue()).decode(), "polygraphy_class": "ndarray"}}
    (out / "verify" / "inputs.json").write_text(json.dumps([frame]))
    rd = tmp_path / "r"
    args = ["regress", "--onnx", str(out), "--baseline-onnx", str(out), "--runs", "10", "--warmup", "2",
            "--threshold", "50", "--bootstrap", "200", "--no-plot", "--report-dir", str(rd)]  # fmt: skip
    assert main(args) == 0
    key = json.loads((rd / "regress.json").read_text())["key"]
    from sparsefuse.compiler.regress.run import source_model_hash

    assert key["model_hash"] == source_model_hash(record) and key["target"] == "cpu"
    assert main([*args[:2], str(tmp_path), *args[3:]]) == 2  # a folder that is no compile directory


def test_regress_refuses_model_in_one_line(tmp_path, capsys):
    from sparsefuse.compiler.cli import main

    assert main(["regress", "--model", "x.onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--onnx x.onnx" in err[0] and err[0].startswith("error: ")


# --- realistic inputs: verify frames, synthetic preset frames, or --inputs; never one LiDAR point ---


def preset_shaped_model(image_size: tuple[int, int] = (64, 176)) -> onnx.ModelProto:
    """Inputs as a bevfusion-tiny graph (images [6,3,64,176], points [num_points,4]); cheap
    reductions named by module, so attribution has camera, lidar and head."""
    nodes = [
        helper.make_node("ReduceSum", ["images"], ["cam"], name="/camera/pool/ReduceSum", keepdims=0),
        helper.make_node("ReduceSum", ["points"], ["pts"], name="/lidar/pool/ReduceSum", keepdims=0),
        helper.make_node("Add", ["cam", "pts"], ["y"], name="/head/add/Add"),
    ]
    graph = helper.make_graph(
        nodes,
        "preset_like",
        [
            helper.make_tensor_value_info("images", TensorProto.FLOAT, [6, 3, *image_size]),
            helper.make_tensor_value_info("points", TensorProto.FLOAT, ["num_points", 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def polygraphy_feeds(*frames: dict[str, np.ndarray]) -> str:
    """verify/inputs.json's layout: a list of {name: {"array": base64 of np.save, ...}}."""
    import base64
    import io

    def encode(a: np.ndarray) -> dict:
        buf = io.BytesIO()
        np.save(buf, a)
        return {"array": base64.b64encode(buf.getvalue()).decode(), "polygraphy_class": "ndarray"}

    return json.dumps([{k: encode(v) for k, v in f.items()} for f in frames])


FAST = ["--runs", "6", "--warmup", "1", "--bootstrap", "100", "--threshold", "90", "--no-plot"]


def test_a_preset_shaped_graph_is_measured_on_synthetic_frames_at_the_typical_point_count(tmp_path, capsys):
    from sparsefuse.compiler.regress.inputs import resolve_frames

    model = preset_shaped_model()
    frames = resolve_frames(model, tmp_path / "a.onnx", None)
    assert frames.source == "synthetic bevfusion-tiny frames at 10000 points (3 frames)"
    assert [f["points"].shape for f in frames.feeds] == [(10000, 4)] * 3
    assert frames.feeds[0]["images"].shape == (6, 3, 64, 176)
    assert not np.array_equal(frames.feeds[0]["points"], frames.feeds[1]["points"])  # different scenes
    onnx.save(model, str(tmp_path / "a.onnx"))
    rd = tmp_path / "r"
    args = ["regress", "--onnx", str(tmp_path / "a.onnx"), "--baseline-onnx", str(tmp_path / "a.onnx"), *FAST]
    assert main([*args, "--report-dir", str(rd)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("inputs: synthetic bevfusion-tiny frames at 10000 points (3 frames)\n")
    assert "- inputs: synthetic bevfusion-tiny frames at 10000 points" in (rd / "regress.md").read_text()
    report = json.loads((rd / "regress.json").read_text())
    assert report["key"]["input_shapes"] == {"images": [6, 3, 64, 176], "points": [10000, 4]}
    # Every module is owned by name: no time lands in "other".
    assert sorted(report["modules"]) == ["camera", "head", "lidar"]


def test_a_dynamic_user_graph_without_frames_is_refused_before_measuring(tmp_path, capsys, monkeypatch):
    import sparsefuse.compiler.regress.run as run_module

    model = preset_shaped_model(image_size=(32, 32))  # no preset has 32x32 images
    onnx.save(model, str(tmp_path / "u.onnx"))

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured before refusing")

    monkeypatch.setattr(run_module, "measure_models", no_measuring)
    args = ["regress", "--onnx", str(tmp_path / "u.onnx"), "--baseline-onnx", str(tmp_path / "u.onnx"), *FAST]
    assert main([*args, "--report-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "points['num_points', 4]" in err[0]
    assert "--inputs FRAMES.npz" in err[0]
    monkeypatch.undo()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", images=rng.random((6, 3, 32, 32), np.float32),
             points=rng.random((777, 4), np.float32))  # fmt: skip
    capsys.readouterr()
    assert main([*args, "--inputs", str(tmp_path / "f.npz"), "--report-dir", str(tmp_path / "r")]) == 0
    assert f"inputs: --inputs file {tmp_path / 'f.npz'} (1 frame, points 777)" in capsys.readouterr().out


def test_verify_frames_next_to_a_lowered_model_are_used(tmp_path, capsys):
    """OUT/lowered/cpu.onnx with OUT/verify/frames/<i>_inputs.json (no inputs.json): all frames."""
    from sparsefuse.compiler.regress.inputs import resolve_frames

    out = tmp_path / "OUT"
    (out / "lowered").mkdir(parents=True)
    (out / "verify" / "frames").mkdir(parents=True)
    model = preset_shaped_model()
    onnx.save(model, str(out / "lowered" / "cpu.onnx"))
    rng = np.random.default_rng(1)
    for i, n in enumerate((8540, 5981)):
        frame = {"images": rng.random((6, 3, 64, 176), np.float32), "points": rng.random((n, 4), np.float32)}
        (out / "verify" / "frames" / f"{i}_inputs.json").write_text(polygraphy_feeds(frame))
    frames = resolve_frames(model, out / "lowered" / "cpu.onnx", None)
    assert frames.source == f"verify frames of {out} (2 frames, points 5981–8540)"
    assert [f["points"].shape[0] for f in frames.feeds] == [8540, 5981]
    assert dict(frames.key_shapes())["points@1"] == (5981, 4)
    rd = tmp_path / "r"
    lowered = str(out / "lowered" / "cpu.onnx")
    args = ["regress", "--onnx", lowered, "--baseline-onnx", lowered, *FAST, "--report-dir", str(rd)]
    assert main(args) == 0
    assert f"inputs: verify frames of {out} (2 frames, points 5981–8540)" in capsys.readouterr().out


def test_a_stored_baseline_is_checked_before_measuring(tmp_path, capsys, monkeypatch):
    import sparsefuse.compiler.regress.run as run_module

    onnx.save(conv_model(), str(tmp_path / "m.onnx"))
    monkeypatch.setattr(run_module, "measure_models", lambda *a, **k: pytest.fail("measured"))
    args = ["regress", "--onnx", str(tmp_path / "m.onnx"), "--baseline"]
    assert main([*args, str(tmp_path / "none.json")]) == 2
    assert "baseline" in (err := capsys.readouterr().err) and "does not exist" in err
    base = tmp_path / "base.json"
    key = BaselineKey("other-model", "cpu", "onnxruntime", "1.0", "fp32", (("x", (1, 8, 16, 16)),))
    update_baseline(base, key, samples_from_json(profile_doc(10.0, 0), "p"))
    assert main([*args, str(base)]) == 2
    assert "has no entry for this measurement" in capsys.readouterr().err
    # --update-baseline adds the new key's entry beside the other one.
    monkeypatch.undo()
    fast = ["--runs", "5", "--warmup", "1", "--model-hash", "toy", "--report-dir", str(tmp_path / "r")]
    assert main([*args, str(base), *fast, "--update-baseline"]) == 0
    assert sorted(e.key.model_hash for e in load_entries(base)) == ["other-model", "toy"]


def test_torch_module_paths_attribute_dynamo_named_nodes():
    """dynamo names nodes "node_conv2d_3"; the module path is in the node metadata."""
    from sparsefuse.compiler.regress.modules import OTHER, ModuleMap

    def node(name, scopes, op="Relu", outputs=None):
        n = helper.make_node(op, ["a"], outputs or [f"{name}_out"], name=name)
        if scopes is not None:
            n.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=repr(scopes))
        return n

    nodes = [
        node("node_conv2d", ["", "camera", "camera.backbone", "conv2d"], outputs=["conv2d"]),
        node("node_voxelize__2", ["", "lidar", "voxelize"], op="Voxelize"),
        node("node_sparse_conv3d__2", ["", "lidar", "lidar.encoder", "sparse_conv3d"], op="SparseConv3d"),
        node("node_cat", ["", "cat"]),  # top level: no module owns it
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))
    mm = ModuleMap(model)
    assert mm.by_node == {
        "node_conv2d": "camera",
        "node_voxelize__2": "lidar",
        "node_sparse_conv3d__2": "lidar",
    }
    assert ModuleMap(model, depth=2).by_node["node_conv2d"] == "camera/backbone"
    assert mm.module_of("conv2d_nchwc_kernel_time") == "camera"  # NCHWc node named after its output
    inlined = "_inlfunc_SparseConv3d__site2_node_sparse_conv3d__2/Gather_401_kernel_time"
    assert mm.module_of(inlined) == "lidar"  # a custom op's body, inlined by ORT
    assert mm.module_of("node_conv2d/FusedConv_kernel_time") == "camera"
    assert mm.module_of("node_cat_kernel_time") == OTHER
    # The BEVFusion split still sees Voxelize after prepare_for_profiling renamed its op type.
    nodes[1].op_type = "Voxelize__site1"
    assert ModuleMap(model, scheme="bevfusion").by_node["node_voxelize__2"] == "voxelize"


def test_stored_baseline_report_labels_the_normalised_change_and_explains_the_drift(tmp_path, capsys):
    """Stored mode: the machine slowed 6%, the model 4%: medians rise, the gated change is -1.9%."""
    base_doc = profile_doc(10.0, 0, n=60)
    base_doc["reference_samples_ms"] = [1.0] * 60
    cand_doc = profile_doc(10.0, 0, n=60)
    cand_doc["samples_ms"] = [1.04 * x for x in cand_doc["samples_ms"]]
    cand_doc["reference_samples_ms"] = [1.06] * 60
    base = tmp_path / "base.json"
    assert main(["regress", "--profile", str(write(tmp_path / "a.json", base_doc)), "--baseline", str(base),
                 "--update-baseline"]) == 0  # fmt: skip
    rd = tmp_path / "r"
    args = ["regress", "--profile", str(write(tmp_path / "b.json", cand_doc)), "--baseline", str(base),
            "--report-dir", str(rd), "--bootstrap", "200", "--no-plot"]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "total -1.9% by ratio of reference-normalised medians" in out
    assert "the machine was 6.0% slower during the candidate's run" in out
    md = (rd / "regress.md").read_text().splitlines()
    total = next(line for line in md if line.startswith("| total |"))
    b_med, c_med = np.median(base_doc["samples_ms"]), np.median(cand_doc["samples_ms"])
    assert total.startswith(f"| total | {b_med:.3f} | {c_med:.3f} | -1.9% |") and "6.0% slower" in total
    report = json.loads((rd / "regress.json").read_text())
    assert report["statistic"] == "ratio of reference-normalised medians"
    assert report["total"]["medians_ratio"] == pytest.approx(1.04)
    assert "6.0% slower" in report["total"]["explanation"]
