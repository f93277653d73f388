"""A user's spconv model through the CLI: compile (verified against the original spconv model),
prune (discovery finds the converted sparse convs under the user's names), refusals by path."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from sparsefuse.compiler.cli import main

pytest.importorskip("spconv")

ROOT = Path(__file__).resolve().parents[2]
SECOND = ROOT / "examples" / "models" / "second_encoder.py"


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"test_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("second") / "frames"
    folder.mkdir()
    for i, frame in enumerate(_module(SECOND).make_frames(3, seed=4)):
        np.savez(folder / f"{i:03d}.npz", **frame)
    return folder


def test_compile_verifies_a_spconv_encoder_against_the_original(frames_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["compile", "--model", f"{SECOND}:build", "--frames", str(frames_dir), "--target", "cpu",
                 "--out", str(out), "--verify-frames", "2"]) == 0
    verify = json.loads((out / "verify.json").read_text())
    assert verify["pass"] and "ORIGINAL" in verify["reference"] and verify["conversion"]["pass"]
    conversion = json.loads((out / "export" / "conversion.json").read_text())
    sources = {row["source"].rsplit(".", 1)[-1] for row in conversion["converted"]}
    assert {"SubMConv3d", "SparseConv3d", "BatchNorm1d", "SparseSequential"} <= sources
    assert conversion["spec"]["inputs"][0]["dynamic"] == {"0": "num_voxels"}
    assert "spconv" not in json.dumps(conversion["kept"])  # nothing of spconv's is left


def test_prune_finds_the_converted_sparse_convs_by_the_users_names(frames_dir, tmp_path):
    out = tmp_path / "prune"
    assert main(["prune", "--model", f"{SECOND}:build", "--frames", str(frames_dir), "--budget", "params=0.6",
                 "--allocator", "rdprune", "--calib", "2", "--levels", "5", "--out", str(out)]) == 0
    plan = json.loads((out / "sparsity" / "plan.json").read_text())
    kinds = {layer["name"]: layer["kind"] for layer in plan["layers"]}
    assert kinds["conv_input.0.weight"] == "sparseconv3d"
    assert sum(kind == "sparseconv3d" for kind in kinds.values()) == 12
    assert abs(plan["achieved_fraction"] - 0.6) < 0.05


def test_an_unsupported_spconv_module_is_refused_by_its_path(frames_dir, tmp_path, capsys):
    model_file = tmp_path / "pooled.py"
    model_file.write_text(
        "import importlib.util, spconv.pytorch as spconv\n"
        f"spec = importlib.util.spec_from_file_location('second_for_pool', {str(SECOND)!r})\n"
        "second = importlib.util.module_from_spec(spec); spec.loader.exec_module(second)\n"
        "def build():\n"
        "    model = second.build()\n"
        "    model.encoder_layers[1].add_module('pool', spconv.SparseMaxPool3d(1, 1))\n"
        "    return model\n")
    out = tmp_path / "out"
    assert main(["compile", "--model", f"{model_file}:build", "--frames", str(frames_dir), "--target", "cpu",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    assert "encoder_layers.1.pool" in err[0] and "SparseMaxPool3d" in err[0] and "SubMConv3d" in err[0]
    assert not any(p.is_file() for p in out.rglob("*"))
