"""`sparsefuse compile --sparsity SPEC` on bevfusion-tiny / cpu: the sparsity stage runs after
export, its pruned ONNX feeds the passes, and verify and profile use the PRUNED torch model.
One compile shared by the module (small calibration: 2 frames, 3 levels)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from sparsefuse.compiler.cli import main
from sparsefuse.compiler.config import make_config
from sparsefuse.compiler.pipeline import TorchSide
from sparsefuse.errors import SparsefuseError

SPEC = "budget=params=0.5,allocator=rdprune,pattern=unstructured,calib=2,levels=3"


def _compile(out: Path, spec: str = SPEC) -> int:
    return main(["compile", "--model", "bevfusion-tiny", "--target", "cpu", "--out", str(out),
                 "--sparsity", spec, "--verify-frames", "2"])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sparse") / "out"
    assert _compile(out) == 0
    return out


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_sparsity_stage_runs_after_export_and_writes_its_artifacts(compiled):
    record = _json(compiled / "compile.json")
    assert record["stage_order"] == ["export", "sparsity", "passes", "lower", "build", "verify", "profile",
                                     "report"]
    assert record["config"]["sparsity"]["budget"] == 0.5 and record["config"]["sparsity"]["calib"] == 2
    for name in ["plan.json", "curves.npz", "layer_sparsity.png", "model.onnx"]:
        assert (compiled / "sparsity" / name).is_file(), name
    assert "sparsity/plan.json" in record["outputs"] and "sparsity/model.onnx" in record["outputs"]


def test_achieved_parameter_sparsity_is_within_half_a_percent_of_the_budget(compiled):
    plan = _json(compiled / "sparsity/plan.json")
    assert plan["budget_kind"] == "params" and plan["allocator"] == "rdprune"
    assert abs(plan["achieved_sparsity"] - (1 - 0.5)) <= 0.005
    assert any(layer["level"] > 0 for layer in plan["layers"])


def test_lowered_onnx_initializers_carry_the_zeros(compiled):
    plan = _json(compiled / "sparsity/plan.json")
    def zeros(rel: str) -> int:
        arrays = [numpy_helper.to_array(t) for t in onnx.load(compiled / rel).graph.initializer]
        return sum(int((a == 0).sum()) for a in arrays if a.dtype == np.float32)

    zeros_lowered, zeros_dense = zeros("lowered/cpu.onnx"), zeros("export/model.onnx")
    pruned = sum(layer["params"] - layer["params_kept"] for layer in plan["layers"])
    assert pruned > 0 and zeros_lowered - zeros_dense >= pruned * 0.99  # BN folding may not merge all


def test_verify_passes_against_the_pruned_model_which_differs_from_the_dense_one(compiled):
    report = _json(compiled / "verify.json")
    assert report["pass"] is True and report["reference"].startswith("the PRUNED PyTorch model")
    config = make_config("bevfusion-tiny", "cpu", compiled, sparsity=SPEC)
    side = TorchSide(config)
    frame = side.verify_frames(1)[0][1]
    dense = side.forward(frame)
    side.plan = compiled / "sparsity/plan.json"
    pruned = side.forward(frame)
    assert any(not np.allclose(dense[k], pruned[k], atol=1e-4) for k in dense)
    assert side.model is side.pruned_model
    assert sum(int((p == 0).sum()) for p in side.model.parameters()) > 0


def test_report_has_the_sparsity_summary(compiled):
    text = (compiled / "report.md").read_text()
    plan = _json(compiled / "sparsity/plan.json")
    assert "## Sparsity" in text and f"parameter sparsity {plan['achieved_sparsity']:.4f}" in text
    assert "![layer_sparsity.png](sparsity/layer_sparsity.png)" in text


def test_recompile_reuses_the_sparsity_stage_and_a_new_spec_reruns_it(compiled, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(compiled, out)
    assert _compile(out) == 0
    stages = _json(out / "compile.json")["stages"]
    assert stages["sparsity"]["cached"] and stages["verify"]["cached"]
    from sparsefuse.compiler.pipeline import input_hashes
    from sparsefuse.compiler.provenance import stage_key, tool_versions

    config = make_config("bevfusion-tiny", "cpu", out, sparsity=SPEC)
    inputs = {**input_hashes(config), **stages["export"]["outputs"]}
    key = stages["sparsity"]["key"]
    assert stage_key("sparsity", inputs, config.sparsity_key_dict(), tool_versions()) == key
    other = make_config("bevfusion-tiny", "cpu", out, sparsity=SPEC.replace("params=0.5", "params=0.6"))
    assert stage_key("sparsity", inputs, other.sparsity_key_dict(), tool_versions()) != key


def test_sparsity_file_and_bad_specs(tmp_path):
    spec_file = tmp_path / "sparsity.json"
    spec_file.write_text(json.dumps({"budget": "params=0.25", "allocator": "lamp", "calib": 3}))
    config = make_config("bevfusion-tiny", "cpu", tmp_path / "out", sparsity=str(spec_file))
    assert (config.sparsity.budget, config.sparsity.allocator, config.sparsity.calib) == (0.25, "lamp", 3)
    toml_file = tmp_path / "sparsity.toml"
    toml_file.write_text('budget = "flops=0.4"\npattern = "2:4"\n')
    config = make_config("bevfusion-tiny", "cpu", tmp_path / "out", sparsity=str(toml_file))
    assert (config.sparsity.budget_kind, config.sparsity.pattern) == ("flops", "2:4")
    for bad in ["allocator=nope", "budget=params=2", "calib", str(tmp_path / "missing.json")]:
        with pytest.raises(SparsefuseError):
            make_config("bevfusion-tiny", "cpu", tmp_path / "out", sparsity=bad)


def test_pruned_model_is_rebuilt_from_the_plan(compiled):
    """A cached sparsity stage gives the same reference: the plan applied to the dense model."""
    config = make_config("bevfusion-tiny", "cpu", compiled, sparsity=SPEC)
    side = TorchSide(config)
    side.plan = compiled / "sparsity/plan.json"
    plan = _json(side.plan)
    params = dict(side.model.named_parameters())
    for layer in plan["layers"]:
        assert int(torch.count_nonzero(params[layer["name"]])) <= layer["params_kept"], layer["name"]


def test_handoff_regenerated_golden_frames_come_from_the_pruned_model(compiled, tmp_path):
    """Without verify frames, handoff regenerates golden outputs: they must be the pruned model's."""
    import json
    import shutil

    from sparsefuse.compiler.handoff import golden_frames

    out = tmp_path / "out"
    shutil.copytree(compiled, out)
    shutil.rmtree(out / "verify")
    record = json.loads((out / "compile.json").read_text())
    (inputs, outputs), = golden_frames(out, record, 1)

    side = TorchSide(make_config("bevfusion-tiny", "cpu", out, sparsity=SPEC))
    side.plan = out / "sparsity/plan.json"
    pruned = side.forward(inputs)
    for name, value in pruned.items():
        np.testing.assert_allclose(outputs[name], value, rtol=1e-5, atol=1e-5)
