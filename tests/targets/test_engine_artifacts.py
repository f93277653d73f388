from __future__ import annotations

import json

import numpy as np
import pytest
from onnx_toys import toy_feeds

from sparsefuse.compiler.cli import main
from sparsefuse.targets.backends import tensorrt as trt_backend
from sparsefuse.targets.engine import emit_engine_artifacts, profile_onnxruntime
from sparsefuse.targets.trt_plan import TrtOptions


@pytest.fixture(autouse=True)
def no_tensorrt(monkeypatch):
    monkeypatch.setattr(trt_backend, "tensorrt_available", lambda: False)


def test_emit_engine_artifacts_for_jetson(toy_onnx, tmp_path):
    frames = [toy_feeds(3000), toy_feeds(5000, seed=1), toy_feeds(4000, seed=2)]
    engine_dir = tmp_path / "engine" / "jetson_agx-orin-64gb"
    art = emit_engine_artifacts(
        toy_onnx,
        "jetson/agx-orin-64gb",
        None,
        engine_dir,
        feeds_list=frames,
        profile_path=tmp_path / "profile.json",
    )
    assert art.engine_path is None and art.label == "estimated"
    assert art.build_script.is_file() and art.profile_script.is_file()
    assert sorted(p.name for p in engine_dir.iterdir()) == ["build_engine.sh", "profile_engine.sh"]
    script = art.build_script.read_text()
    assert "--minShapes=points:2816x4" in script and "--optShapes=points:4000x4" in script
    assert "--maxShapes=points:6400x4" in script
    doc = json.loads((tmp_path / "profile.json").read_text())
    assert doc["label"] == "estimated" and doc["target"] == "jetson/agx-orin-64gb"
    assert doc["cost_model"]["name"] == "sparsefuse-roofline" and doc["lidar_points_per_frame"] == [4000]
    assert (tmp_path / "profile.png").is_file()
    assert dict(art.dynamic_dims) == {"num_points": 4000}
    assert art.to_dict() == {
        "target": "jetson/agx-orin-64gb",
        "engine": None,
        "build_script": "build_engine.sh",
        "profile_script": "profile_engine.sh",
        "profile_label": "estimated",
        "dynamic_dims": {"num_points": 4000},
        "sparse_layers": [],
        "warnings": [],
    }
    json.dumps(art.to_dict())


def test_emit_engine_artifacts_keeps_explicit_options(toy_onnx, tmp_path):
    art = emit_engine_artifacts(
        toy_onnx,
        "desktop/a100",
        TrtOptions.with_point_counts([100], precision="fp32"),
        tmp_path / "eng",
        dims={"num_points": 100},
    )
    script = art.build_script.read_text()
    assert "--fp16" not in script and "--optShapes=points:100x4" in script
    assert art.profile.to_json()["lidar_points_per_frame"] == [100]


def test_profile_onnxruntime_measured(toy_onnx, tmp_path):
    prof = profile_onnxruntime(
        toy_onnx,
        "cpu",
        [toy_feeds(10), toy_feeds(20, seed=1)],
        tmp_path / "p.json",
        runs=4,
        warmup=1,
        node_runs=1,
        intra_op_threads=1,
    )
    doc = json.loads((tmp_path / "p.json").read_text())
    assert prof.label == "measured" and doc["label"] == "measured" and doc["latency_ms"]["runs"] == 4
    assert set(doc["per_module_ms"]) >= {"camera_backbone", "bev_pool", "heads"}


def test_cli_targets_build_profile(toy_onnx, tmp_path, capsys):
    assert main(["targets", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert len(listing) == 11 and {"tag", "sm", "tensorrt", "dram_gbps"} <= set(listing[0])
    assert main(["targets", "--show", "jetson/agx-orin-64gb", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["sources"]["int8_sparse_tops"].startswith("vendor")

    assert (
        main(
            [
                "build",
                "--onnx",
                str(toy_onnx),
                "--target",
                "jetson/orin-nx-16gb",
                "--out",
                str(tmp_path / "e"),
                "--points",
                "100",
                "200",
            ]
        )
        == 0
    )
    assert "--useDLACore" not in (tmp_path / "e" / "build_engine.sh").read_text()
    assert main(["build", "--onnx", str(toy_onnx), "--target", "cpu", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "model.ort.onnx").is_file()

    np.savez(tmp_path / "in.npz", **toy_feeds(33))
    assert (
        main(
            [
                "profile",
                "--onnx",
                str(toy_onnx),
                "--target",
                "cpu",
                "--out",
                str(tmp_path / "cpu.json"),
                "--inputs",
                str(tmp_path / "in.npz"),
                "--runs",
                "3",
                "--warmup",
                "1",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "cpu.json").read_text())["lidar_points_per_frame"] == [33, 33, 33]
    assert (
        main(
            [
                "profile",
                "--onnx",
                str(toy_onnx),
                "--target",
                "desktop/l4",
                "--out",
                str(tmp_path / "l4.json"),
                "--inputs",
                str(tmp_path / "in.npz"),
                "--latency-table",
                str(tmp_path / "t.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "l4.json").read_text())["label"] == "estimated"
    table = json.loads((tmp_path / "t.json").read_text())
    assert set(table) == {"camera.backbone.conv0.weight", "camera.backbone.conv1.weight", "head.conv.weight"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["targets", "--show", "nope"], "unknown target 'nope'"),
        (["build", "--onnx", "missing.onnx", "--target", "cpu", "--out", "x"], "ONNX model not found"),
        (
            [
                "build",
                "--onnx",
                "{onnx}",
                "--target",
                "jetson/orin-nano-8gb",
                "--out",
                "{tmp}/e",
                "--dla-core",
                "0",
                "--points",
                "5",
            ],
            "0 DLA cores",
        ),
        (["build", "--onnx", "{onnx}", "--target", "desktop/h100", "--out", "{tmp}/e"], "no observed sizes"),
        (["profile", "--target", "cpu", "--out", "{tmp}/p.json"], "--onnx is required"),
        (
            ["profile", "--target", "cpu", "--out", "{tmp}/p.json", "--import-trtexec", "{tmp}/none"],
            "not found",
        ),
    ],
)
def test_cli_user_errors_exit_2_without_traceback(argv, message, toy_onnx, tmp_path, capsys):
    argv = [a.replace("{onnx}", str(toy_onnx)).replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_user_target_file_through_cli(toy_onnx, tmp_path):
    toml = tmp_path / "lab.toml"
    toml.write_text(
        'tag = "lab/orin"\nname = "lab"\nkind = "jetson"\nbackend = "tensorrt"\nsm = 87\n'
        'tensorrt = "10.3"\nfp16_dense_tflops = 10.0\nfp32_tflops = 1.0\ndram_gbps = 50.0\n'
        '[sources]\nsm = "lab"\ntensorrt = "lab"\nfp16_dense_tflops = "lab"\nfp32_tflops = "lab"\n'
        'dram_gbps = "lab"\n'
    )
    assert (
        main(
            [
                "build",
                "--onnx",
                str(toy_onnx),
                "--target",
                str(toml),
                "--out",
                str(tmp_path / "e"),
                "--points",
                "64",
            ]
        )
        == 0
    )
    assert "lab/orin" in (tmp_path / "e" / "build_engine.sh").read_text()


def test_profile_for_target_picks_measured_or_estimated(toy_onnx, tmp_path):
    from sparsefuse.targets.engine import profile_for_target

    frames = [toy_feeds(30)]
    cpu = profile_for_target(toy_onnx, "cpu", frames, tmp_path / "cpu.json", runs=2, warmup=1)
    orin = profile_for_target(toy_onnx, "jetson/orin-nx-16gb", frames, tmp_path / "orin.json")
    assert (cpu.label, orin.label) == ("measured", "estimated")
    assert json.loads((tmp_path / "orin.json").read_text())["lidar_points_per_frame"] == [30]
    assert json.loads((tmp_path / "cpu.json").read_text())["latency_ms"]["runs"] == 2
