"""`compile --precision fp16 | int8` end to end on a small dense user model verified in ONNX Runtime,
the tolerance each precision applies, and every bad input refused in one line (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from sparsefuse.compiler.cli import main
from sparsefuse.compiler.verify import check_output, tolerances_for

MODEL_FILE = '''
import torch
from torch import nn


class Dense(nn.Module):
    """images [1,3,16,16] -> conv stem, a residual block, a 1x1 head -> logits and softmax probs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, images):
        x = torch.relu(self.stem(images))
        x = torch.relu(x + self.c2(torch.relu(self.c1(x))))
        logits = self.head(x)
        return {"logits": logits, "probs": torch.softmax(logits * 4.0, dim=1)}


def build():
    torch.manual_seed(0)
    return Dense()
'''


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("precision")
    (root / "dense.py").write_text(MODEL_FILE)
    frames = root / "frames"
    frames.mkdir()
    for i in range(7):
        image = np.random.default_rng(i).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
        np.savez(frames / f"{i:03d}.npz", images=image)
    return root


def _compile(root: Path, out: str, *extra: str, frames: str = "frames", target: str = "cpu") -> int:
    return main(["compile", "--model", f"{root / 'dense.py'}:build", "--frames", str(root / frames),
                 "--target", target, "--out", str(root / out), "--verify-frames", "3", *extra])


@pytest.fixture(scope="module")
def int8_out(user_dir) -> Path:
    assert _compile(user_dir, "int8", "--precision", "int8", "--calibrator", "max",
                    "--calib-frames", "4") == 0
    return user_dir / "int8"


def test_fp16_compile_verifies_with_the_float16_rule(user_dir):
    assert _compile(user_dir, "fp16", "--precision", "fp16", "--calib-frames", "4") == 0
    out = user_dir / "fp16"
    report = json.loads((out / "precision" / "report.json").read_text())
    assert report["precision"] == "fp16" and report["calibration_frames"] == 4
    assert all(t["rule"] == "float16" for t in report["tolerance"].values())
    graph = onnx.load(out / "precision" / "model.onnx").graph
    assert {i.type.tensor_type.elem_type for i in [*graph.input, *graph.output]} == {onnx.TensorProto.FLOAT}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    halves = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert convs and all(c.input[1] in halves for c in convs)  # the convs run FP16
    verify = json.loads((out / "verify.json").read_text())
    assert verify["pass"] and verify["rule"]["applied"] == "fp16"
    record = json.loads((out / "compile.json").read_text())
    assert record["stage_order"].index("precision") == record["stage_order"].index("passes") + 1
    assert record["config"]["precision"]["precision"] == "fp16"
    assert "## Precision: fp16" in (out / "report.md").read_text()


def test_int8_compile_verifies_with_a_bound_derived_from_the_scales(int8_out):
    report = json.loads((int8_out / "precision" / "report.json").read_text())
    scales = json.loads((int8_out / "precision" / "scales.json").read_text())
    assert report["calibration"]["calibrator"] == "max"
    assert scales["activations"] and all(r["scale"] > 0 for r in scales["activations"].values())
    for tol in report["tolerance"].values():
        assert tol["rule"].startswith("int8") and tol["abs"] > 1e-5  # the propagated steps add to it
    graph = onnx.load(int8_out / "precision" / "model.onnx").graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in ("logits", "probs") for n in graph.node)
    verify = json.loads((int8_out / "verify.json").read_text())
    assert verify["pass"] and verify["rule"]["applied"] == "int8"
    assert set(verify["rule"]["bounds"]) == {"logits", "probs"}
    worst = max(o["max_abs"] for f in verify["frames"] for o in f["outputs"].values())
    assert worst > 1e-4  # really quantized: far from the float32 rule
    assert report["config"]["int8_sensitivity"] == 0.1
    assert set(report["sensitivity"]) >= set(report["plan"]["activations_per_tensor"])
    assert not set(report["kept_float"]) & set(report["plan"]["activations_per_tensor"])


def test_an_unchanged_int8_recompile_is_cached_and_a_new_calibrator_is_not(user_dir, int8_out):
    assert _compile(user_dir, "int8", "--precision", "int8", "--calibrator", "max",
                    "--calib-frames", "4") == 0
    stages = json.loads((int8_out / "compile.json").read_text())["stages"]
    assert stages["precision"]["cached"] is True and stages["verify"]["cached"] is True
    assert _compile(user_dir, "int8", "--precision", "int8", "--calibrator", "mse",
                    "--calib-frames", "4") == 0
    stages = json.loads((int8_out / "compile.json").read_text())["stages"]
    assert stages["export"]["cached"] is True and stages["precision"]["cached"] is False
    report = json.loads((int8_out / "precision" / "report.json").read_text())
    assert report["calibration"]["calibrator"] == "mse"


def test_a_broken_int8_graph_fails_the_derived_bound(int8_out):
    """Tests can fail: the weights' scales x4 break the outputs beyond the bound."""
    import onnxruntime as ort

    model = onnx.load(int8_out / "lowered" / "cpu.onnx")
    for init in model.graph.initializer:
        if init.name.endswith("__wscale"):
            array = onnx.numpy_helper.to_array(init) * 4.0
            init.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), init.name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    fp32 = ort.InferenceSession(str(int8_out / "passes" / "model.onnx"), providers=["CPUExecutionProvider"])
    tols, _ = tolerances_for(int8_out / "precision" / "report.json")
    frame = {"images": np.random.default_rng(9).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)}
    got = dict(zip(["logits", "probs"], session.run(["logits", "probs"], frame), strict=True))
    ref = dict(zip(["logits", "probs"], fp32.run(["logits", "probs"], frame), strict=True))
    assert not check_output("logits", got["logits"], ref["logits"], tols["logits"]).passed


def test_fp32_default_adds_no_stage_and_no_config_key(user_dir):
    assert _compile(user_dir, "fp32") == 0
    record = json.loads((user_dir / "fp32" / "compile.json").read_text())
    assert "precision" not in record["stage_order"] and "precision" not in record["config"]
    assert not (user_dir / "fp32" / "precision").exists()


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_nan_calibration_frames_are_refused(user_dir, capsys, tmp_path):
    bad = user_dir / "bad_frames"
    bad.mkdir(exist_ok=True)
    for i in range(3):
        image = np.random.default_rng(i).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
        if i == 1:
            image[0, 0, 0, 0] = np.nan
        np.savez(bad / f"{i:03d}.npz", images=image)
    assert _compile(user_dir, "nan", "--precision", "int8", frames="bad_frames") == 2
    line = _error(capsys)
    assert line.startswith("error: calibration frame 1 input 'images' holds 1 NaN/inf") and "(hint:" in line
    assert not (user_dir / "nan" / "export").exists()  # refused before any stage


def test_unknown_calibrator_and_precision_are_refused(user_dir, capsys):
    assert _compile(user_dir, "badcal", "--precision", "int8", "--calibrator", "kl") == 2
    assert "error: unknown calibrator 'kl'" in _error(capsys)
    assert _compile(user_dir, "badprec", "--precision", "int4") == 2
    assert "error: unknown precision 'int4'" in _error(capsys)


def test_a_target_without_int8_rates_is_refused(user_dir, capsys):
    source = Path(__file__).resolve().parents[2] / "targets" / "registry" / "desktop-l4.toml"
    head, sources = source.read_text().split("[sources]")
    head = "\n".join("int8_dense_tops = 0.0" if line.startswith("int8_dense_tops") else line
                     for line in head.splitlines())
    target = user_dir / "no-int8.toml"
    target.write_text(f"{head}\n[sources]{sources}")
    assert _compile(user_dir, "noint8", "--precision", "int8", target=str(target)) == 2
    line = _error(capsys)
    assert "cannot run int8" in line and "int8_dense_tops is 0" in line and "(hint:" in line


def test_two_four_sparsity_survives_int8_in_a_compile(user_dir):
    """--sparsity pattern=2:4 then --precision int8: every pruned weight is an exact int8 zero and each
    group of 4 along Cin keeps at most 2 nonzeros, so TensorRT can still run it on sparse tensor cores."""
    assert _compile(user_dir, "sparse_int8", "--precision", "int8", "--calib-frames", "3",
                    "--sparsity", "budget=params=0.6,pattern=2:4,calib=2") == 0
    out = user_dir / "sparse_int8"
    pruned = _initializers(out / "sparsity" / "model.onnx")
    typed = _initializers(out / "precision" / "model.onnx")
    two_four = [name for name, w in pruned.items() if w.ndim == 4 and (w == 0).mean() == 0.5]
    assert two_four, "the plan pruned no conv 2:4"
    for name in two_four:
        q = typed[f"{name}__int8"]
        assert q.dtype == np.int8 and np.all(q[pruned[name] == 0] == 0)
        assert (q.transpose(0, 2, 3, 1).reshape(-1, 4) != 0).sum(axis=1).max() <= 2


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}


def test_python_api_takes_the_precision_options(tmp_path):
    import sparsefuse

    namespace: dict = {}
    exec(compile(MODEL_FILE, "dense.py", "exec"), namespace)  # noqa: S102 (the test's own model source)
    frames = [{"images": np.random.default_rng(i).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)}
              for i in range(4)]
    result = sparsefuse.compile(namespace["build"](), frames, target="cpu", out=tmp_path / "api",
                                precision="int8", calibrator="percentile=99.9", calib_frames=2)
    assert result.verify_passed
    report = json.loads((tmp_path / "api" / "precision" / "report.json").read_text())
    assert (report["calibration"]["calibrator"], report["calibration"]["percentile"]) == ("percentile", 99.9)
    assert report["calibration_frames"] == 2
