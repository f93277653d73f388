"""`sparsefuse compile` end to end on bevfusion-tiny / cpu: artifacts, provenance, verify,
polygraphy reproduction, measured profile, report, stage caching, Ctrl-C and verify failure.

One module-scoped compile is shared; tests that change things work on a copy of it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from sparsefuse.atomic import sha256_file
from sparsefuse.compiler import pipeline
from sparsefuse.compiler.cli import main
from sparsefuse.plugins.common import DOMAIN

STAGES = ["export", "passes", "lower", "build", "verify", "profile"]  # cached on an unchanged recompile
ALL_STAGES = [*STAGES, "report"]  # the report shows this compile's timings: it is always rewritten
ARTIFACTS = ["compile.json", "export/model.onnx", "export/conversion.json", "passes/model.onnx",
             "lowered/cpu.onnx", "engine/cpu/model.ort.onnx", "verify.json", "verify/inputs.json",
             "verify/golden.json", "profile.json", "profile.png", "report.md"]


def _compile(out: Path, *extra: str) -> int:
    return main(["compile", "--model", "bevfusion-tiny", "--target", "cpu", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "out"
    assert _compile(out) == 0
    return out


def _copy(compiled: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(compiled, dest)
    return dest


def _files(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_artifacts_and_custom_nodes(compiled):
    assert set(ARTIFACTS) <= _files(compiled)
    exported = onnx.load(compiled / "export/model.onnx")
    custom = Counter(n.op_type for n in exported.graph.node if n.domain == DOMAIN)
    assert set(custom) == {"Voxelize", "SparseConv3d", "ScatterDense", "BEVPool"}
    assert custom["Voxelize"] == custom["ScatterDense"] == custom["BEVPool"] == 1
    lowered = onnx.load(compiled / "lowered/cpu.onnx")
    assert sorted(f.name for f in lowered.functions) == sorted(custom)
    assert not any(p.name.endswith(".tmp") for p in compiled.rglob("*"))


def test_compile_json_provenance(compiled):
    record = _json(compiled / "compile.json")
    assert record["schema_version"] == 1
    assert record["config"]["model"] == "bevfusion-tiny" and record["config"]["target"] == "cpu"
    assert {"torch", "onnx", "onnxruntime", "python", "sparsefuse"} <= set(record["versions"])
    assert record["stage_order"] == ALL_STAGES and set(record["stages"]) == set(ALL_STAGES)
    assert all(record["timings_s"][s] >= 0 for s in ALL_STAGES)
    assert record["verify_pass"] is True
    outputs = record["outputs"]
    assert set(ARTIFACTS) - {"compile.json"} <= set(outputs)
    for rel, digest in outputs.items():
        assert sha256_file(compiled / rel) == digest, rel
    assert len({record["stages"][s]["key"] for s in ALL_STAGES}) == len(ALL_STAGES)


def test_verify_json(compiled):
    report = _json(compiled / "verify.json")
    export_points = _json(compiled / "compile.json")["stages"]["export"]["details"]["num_points"]
    assert report["schema_version"] == 1 and report["pass"] is True
    assert len(report["frames"]) >= 3
    assert len({f["num_points"] for f in report["frames"]}) == len(report["frames"])
    for frame in report["frames"]:
        assert frame["seed"] != 0  # the export frame's seed
        assert frame["num_points"] != export_points
        assert set(frame["outputs"]) == {"seg_logits", "heatmap", "boxes"}
        for check in frame["outputs"].values():
            assert check["pass"] is True
            assert 0 <= check["max_abs"] <= check["tolerance"]
            assert check["max_rel"] >= 0
    assert report["polygraphy"]["pass"] is True
    assert report["polygraphy"]["command"].startswith("polygraphy run lowered/cpu.onnx --onnxrt")


def test_verify_json_says_what_it_checked(compiled):
    report = _json(compiled / "verify.json")
    assert report["onnx"] == "lowered/cpu.onnx" and "model.ort.onnx" in report["checked"]
    assert report["reference"] == "the PyTorch model"


def test_cpu_profile_is_measured_with_per_module_times(compiled):
    profile = _json(compiled / "profile.json")
    assert profile["label"] == "measured" and profile["target"] == "cpu" and "cost_model" not in profile
    latency = profile["latency_ms"]
    assert latency["runs"] == pipeline.PROFILE_RUNS == len(profile["samples_ms"])
    assert 0 < latency["min"] <= latency["median"] <= latency["p90"] <= latency["max"]
    modules = profile["per_module_ms"]
    assert {"camera_backbone", "lidar_backbone", "voxelize", "bev_pool", "heads"} <= set(modules)
    assert all(ms > 0 for ms in modules.values())
    verify_points = {f["num_points"] for f in _json(compiled / "verify.json")["frames"]}
    assert set(profile["lidar_points_per_frame"]) <= verify_points  # the profile frames are verify's first
    assert (compiled / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_summarizes_the_compile(compiled):
    text = (compiled / "report.md").read_text()
    record = _json(compiled / "compile.json")
    profile = _json(compiled / "profile.json")
    assert text.startswith("# sparsefuse compile report")
    assert "| target | cpu |" in text and "## Verify: PASS" in text
    for stage in STAGES:
        shown = re.search(rf"^\| {stage} \| ([0-9.]+) \|", text, re.M)
        assert shown and abs(float(shown.group(1)) - record["timings_s"][stage]) <= 0.006
    assert "## Latency (measured)" in text and f"median {profile['latency_ms']['median']:.3f} ms" in text
    for module, ms in profile["per_module_ms"].items():
        assert f"| {module} | {ms:.3f} |" in text
    assert "![profile](profile.png)" in text and "## Sparsity" not in text and "## Engine" not in text


VERDICT_MARKS = ("Error Metrics", "Minimum Required Tolerance", "PASSED |", "FAILED |", "Absolute Difference")


def test_polygraphy_command_reproduces_the_comparison(compiled):
    commands = _json(compiled / "verify.json")["polygraphy"]["command"].split(" && ")
    frames = _json(compiled / "verify.json")["frames"]
    assert len(commands) == len(frames)  # one per frame: each frame has its own bounds (docs/tolerances.md)
    exe = Path(sys.executable).with_name("polygraphy")
    for index, (command, frame) in enumerate(zip(commands, frames, strict=True)):
        assert f"verify/frames/{index}_inputs.json" in command
        for name, check in frame["outputs"].items():  # the printed bound is this frame's, never looser
            assert f"{name}:" in command and check["tolerance"] * (1 - 1e-4) <= float(
                command.split(f"{name}:")[1].split()[0]) <= check["tolerance"]
        done = subprocess.run([str(exe), *command.split()[1:]], cwd=compiled, capture_output=True, text=True,
                              timeout=300)
        log = done.stdout + done.stderr
        # on failure, show polygraphy's verdict lines (its histograms would crowd them out)
        verdict = [line for line in log.splitlines() if any(k in line for k in VERDICT_MARKS)]
        assert done.returncode == 0, "\n".join(verdict) or log[-3000:]
        assert "PASSED" in log


def test_recompile_skips_unchanged_stages(compiled, tmp_path):
    out = _copy(compiled, tmp_path)
    kept = [rel for rel in ARTIFACTS if rel not in ("compile.json", "report.md")]  # both rewritten each time
    before = {rel: os.stat(out / rel).st_mtime_ns for rel in kept}
    assert _compile(out) == 0
    stages = _json(out / "compile.json")["stages"]
    assert all(stages[s]["cached"] for s in STAGES)
    assert {rel: os.stat(out / rel).st_mtime_ns for rel in before} == before

    (out / "lowered/cpu.onnx").unlink()  # lower reruns, writes the same bytes: build/verify stay cached
    assert _compile(out) == 0
    stages = _json(out / "compile.json")["stages"]
    assert [s for s in STAGES if not stages[s]["cached"]] == ["lower"]

    assert _compile(out, "--verify-frames", "1") == 0  # only verify depends on the frame count
    stages = _json(out / "compile.json")["stages"]
    assert [s for s in STAGES if not stages[s]["cached"]] == ["verify"]
    assert len(_json(out / "verify.json")["frames"]) == 1


def test_ctrl_c_in_a_stage_leaves_only_complete_earlier_artifacts(compiled, tmp_path, monkeypatch, capsys):
    out = _copy(compiled, tmp_path)
    for rel in ["engine", "verify", "verify.json", "compile.json", "profile.json", "profile.png", "report.md",
                ".cache/build.json", ".cache/verify.json", ".cache/profile.json", ".cache/report.json"]:
        path = out / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    from sparsefuse.targets.backends import onnxruntime as ort_backend

    real_build = ort_backend.build

    def build_then_interrupt(*args, **kwargs):
        real_build(*args, **kwargs)  # the optimized model is written, then the user hits Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(ort_backend, "build", build_then_interrupt)
    assert _compile(out) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
    assert _files(out) == {"export/model.onnx", "export/conversion.json", "passes/model.onnx",
                           "lowered/cpu.onnx", ".cache/export.json", ".cache/passes.json",
                           ".cache/lower.json"}
    for rel in ["export/model.onnx", "passes/model.onnx", "lowered/cpu.onnx"]:
        assert sha256_file(out / rel) == sha256_file(compiled / rel)
    assert not (out / "engine" / "cpu").exists()


def test_ctrl_c_during_export_writes_nothing(tmp_path, monkeypatch):
    import sparsefuse.passes.export as export_pass

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_pass, "export_model", interrupted)
    out = tmp_path / "out"
    assert _compile(out) == 130
    assert _files(out) == set()


def test_verify_failure_exits_1_and_says_why(compiled, tmp_path, monkeypatch):
    out = _copy(compiled, tmp_path)
    real_forward = pipeline.TorchSide.forward

    def off_by_a_bit(self, frame):
        return {k: v + np.float32(0.01) * np.abs(v).max() for k, v in real_forward(self, frame).items()}

    monkeypatch.setattr(pipeline.TorchSide, "forward", off_by_a_bit)
    assert _compile(out, "--verify-frames", "1") == 1
    report = _json(out / "verify.json")
    assert report["pass"] is False and report["polygraphy"]["pass"] is False
    check = report["frames"][0]["outputs"]["heatmap"]
    assert check["pass"] is False and check["max_abs"] > check["tolerance"]
    assert _json(out / "compile.json")["verify_pass"] is False
