"""The README's bring-your-own-model example, end to end through the CLI: the CenterPoint-style
spconv model in examples/models/ with its shipped frames -> compile (verified against the original
spconv model) -> prune -> hand-off bundle -> bundle verify --run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsefuse.compiler.cli import main

pytest.importorskip("spconv")

ROOT = Path(__file__).resolve().parents[2]
MODEL = f"{ROOT / 'examples' / 'models' / 'centerpoint.py'}:build_with_spec"
FRAMES = str(ROOT / "examples" / "frames" / "centerpoint")


def test_the_readme_example_compiles_prunes_and_hands_off(tmp_path, capsys):
    out = tmp_path / "centerpoint"
    assert main(["compile", "--model", MODEL, "--frames", FRAMES, "--target", "cpu", "--out", str(out)]) == 0
    verify = json.loads((out / "verify.json").read_text())
    assert verify["pass"] and "ORIGINAL" in verify["reference"] and len(verify["frames"]) == 2
    conversion = json.loads((out / "export" / "conversion.json").read_text())
    sources = {row["source"].rsplit(".", 1)[-1] for row in conversion["converted"]}
    assert {"PointToVoxel", "SubMConv3d", "SparseConv3d"} <= sources
    assert conversion["warnings"] == []  # the factory declares its outputs' consumers
    report = (out / "report.md").read_text()
    assert "## Conversion" in report and "PointToVoxel" in report

    pruned = tmp_path / "prune"
    assert main(["prune", "--model", MODEL, "--frames", FRAMES, "--budget", "params=0.5", "--allocator",
                 "rdprune", "--calib", "2", "--levels", "5", "--out", str(pruned)]) == 0
    plan = json.loads((pruned / "sparsity" / "plan.json").read_text())
    assert plan["config"]["distortion_space"] == "consumer"
    modalities = {layer["name"]: layer["modality"] for layer in plan["layers"]}
    assert modalities["heatmap.weight"] == "head" and modalities["neck.0.weight"] == "lidar"

    assert main(["handoff", str(out), "--target", "jetson/agx-orin-64gb"]) == 0
    capsys.readouterr()
    assert main(["verify", str(out / "handoff" / "jetson_agx-orin-64gb"), "--run"]) == 0
    assert "verify: PASS" in capsys.readouterr().out
