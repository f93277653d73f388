"""Bring your own model: a user's model file + frames through compile, prune and hand-off (CLI and
Python API), and every bad input refused in one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sparsefuse
from sparsefuse.compiler import model_interface as mi
from sparsefuse.compiler.cli import main
from sparsefuse.errors import SparsefuseError
from sparsefuse.spec import InputSpec, ModelSpec, OutputSpec

MODEL_FILE = '''
import torch
from torch import nn


class PointHeat(nn.Module):
    """points[P,4] -> per-point MLP max-pooled -> {"heatmap": [1,3], "reg": [1,8]}."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, points, scale):
        feats = self.mlp(points).amax(dim=0, keepdim=True)
        return {"heatmap": self.head(feats) * scale, "reg": feats}


class Branchy(PointHeat):
    def forward(self, points, scale):
        if points.sum() > 0:
            return {"heatmap": self.head(self.mlp(points).amax(0, keepdim=True))}
        return {"heatmap": points[:1, :3]}


def build():
    torch.manual_seed(0)
    return PointHeat()


def build_branchy():
    torch.manual_seed(0)
    return Branchy()


def build_with_spec():
    from sparsefuse import InputSpec, ModelSpec, OutputSpec

    spec = ModelSpec(
        inputs=(InputSpec("points", "float32", 2, ((0, "num_points"),)), InputSpec("scale", "float32", 1)),
        outputs=(OutputSpec("heatmap", "sigmoid"), OutputSpec("reg", "weighted", weight_by="heatmap")))
    return build(), spec
'''


def _frames(counts=(100, 150, 120, 90)) -> list[dict[str, np.ndarray]]:
    frames = []
    for i, n in enumerate(counts):
        rng = np.random.default_rng(i)
        frames.append({"points": rng.random((n, 4), dtype=np.float32), "scale": np.ones(1, np.float32)})
    return frames


@pytest.fixture()
def user_dir(tmp_path: Path) -> Path:
    (tmp_path / "toy.py").write_text(MODEL_FILE)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(_frames()):
        np.savez(frames / f"{i:03d}.npz", **frame)
    return tmp_path


def _compile(user_dir: Path, *extra: str, model: str = "toy.py:build") -> int:
    return main(["compile", "--model", str(user_dir / model.split(":")[0]) + ":" + model.split(":")[1],
                 "--frames", str(user_dir / "frames"), "--target", "cpu", "--out", str(user_dir / "out"),
                 *extra])


def _files(root: Path) -> set[str]:
    if not root.exists():
        return set()
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_cli_compiles_a_user_model_and_verifies_it_against_the_original(user_dir):
    assert _compile(user_dir) == 0
    out = user_dir / "out"
    verify = json.loads((out / "verify.json").read_text())
    assert verify["pass"] and "ORIGINAL" in verify["reference"]
    assert [f["frame"] for f in verify["frames"]] == [1, 2, 3]  # never the export frame
    assert [f["dynamic"]["num_points"] for f in verify["frames"]] == [150, 120, 90]
    assert verify["conversion"]["pass"]
    conversion = json.loads((out / "export" / "conversion.json").read_text())
    assert [i["name"] for i in conversion["spec"]["inputs"]] == ["points", "scale"]
    assert conversion["spec"]["inputs"][0]["dynamic"] == {"0": "num_points"}
    assert [o["name"] for o in conversion["spec"]["outputs"]] == ["heatmap", "reg"]
    assert any("heatmap" in w for w in conversion["warnings"])  # logits without a declared transform
    import onnx

    graph = onnx.load(out / "export" / "model.onnx").graph
    assert [i.name for i in graph.input] == ["points", "scale"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the point count stays dynamic
    assert "frames" in (out / "report.md").read_text()


def test_a_changed_model_file_reruns_the_stages(user_dir):
    assert _compile(user_dir) == 0
    record = json.loads((user_dir / "out" / "compile.json").read_text())
    assert len(record["inputs"]["model"]) == 64 and len(record["inputs"]["frames"]) == 64
    assert _compile(user_dir) == 0
    again = json.loads((user_dir / "out" / "compile.json").read_text())
    assert again["stages"]["export"]["cached"] is True
    (user_dir / "toy.py").write_text(MODEL_FILE.replace("nn.Linear(8, 3)", "nn.Linear(8, 3, bias=False)"))
    assert _compile(user_dir) == 0
    changed = json.loads((user_dir / "out" / "compile.json").read_text())
    assert changed["stages"]["export"]["cached"] is False


def test_the_factory_may_return_a_spec_with_consumer_transforms(user_dir):
    assert _compile(user_dir, model="toy.py:build_with_spec") == 0
    spec = json.loads((user_dir / "out" / "export" / "conversion.json").read_text())["spec"]
    assert [(o["name"], o["transform"], o["weight_by"]) for o in spec["outputs"]] == [
        ("heatmap", "sigmoid", None), ("reg", "weighted", "heatmap")]


def test_prune_and_handoff_run_on_a_user_model(user_dir, capsys):
    out = user_dir / "pruned"
    assert main(["prune", "--model", f"{user_dir / 'toy.py'}:build", "--frames", str(user_dir / "frames"),
                 "--budget", "params=0.5", "--allocator", "rdprune", "--calib", "3", "--levels", "5",
                 "--out", str(out)]) == 0
    plan = json.loads((out / "sparsity" / "plan.json").read_text())
    names = {layer["name"] for layer in plan["layers"]}
    assert {"mlp.0.weight", "mlp.2.weight", "head.weight"} <= names
    assert abs(plan["achieved_fraction"] - 0.5) < 0.05
    assert _compile(user_dir) == 0
    assert main(["handoff", str(user_dir / "out"), "--target", "cpu"]) == 0
    bundle = user_dir / "out" / "handoff" / "cpu"
    assert main(["verify", str(bundle), "--run"]) == 0
    assert "PASS" in capsys.readouterr().out


def test_python_api_compiles_a_module_with_frames_in_memory(tmp_path):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, points):
            return self.net(points).sum(0, keepdim=True)

    frames = [{"points": torch.rand(n, 4)} for n in (30, 40, 50)]
    result = sparsefuse.compile(Wrapped(), frames, target="cpu", out=tmp_path / "out", verify_frames=2)
    assert result.verify_passed
    verify = json.loads((tmp_path / "out" / "verify.json").read_text())
    assert len(verify["frames"]) == 2 and verify["frames"][0]["frame"] == 1


def test_spec_inference_shares_a_dim_between_inputs_that_vary_together():
    class Two(torch.nn.Module):
        def forward(self, voxel_features, voxel_coords, image):
            return voxel_features.sum() + voxel_coords.float().sum() + image.sum()

    frames = [{"voxel_features": np.zeros((n, 4), np.float32), "voxel_coords": np.zeros((n, 4), np.int32),
               "image": np.zeros((3, 8, 8), np.float32)} for n in (5, 9)]
    spec = mi.infer_spec(Two(), frames)
    by_name = {i.name: i for i in spec.inputs}
    assert by_name["voxel_features"].dynamic == by_name["voxel_coords"].dynamic == ((0, "num_voxels"),)
    assert by_name["image"].dynamic == () and by_name["voxel_coords"].dtype == "int32"
    assert spec.output_names == ("output",)


def test_state_dicts_load_from_pth_checkpoints_of_the_usual_shapes(tmp_path):
    model = torch.nn.Linear(3, 2)
    state = {f"module.{k}": v + 1 for k, v in model.state_dict().items()}  # DataParallel prefix
    torch.save({"state_dict": state, "meta": {"epoch": 3}}, tmp_path / "ckpt.pth")
    target = torch.nn.Linear(3, 2)
    assert mi.load_weights(target, tmp_path / "ckpt.pth")["tensors"] == 2
    assert torch.equal(target.weight, model.weight + 1)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "(hint: " in err[0], err
    assert "Traceback" not in err[0]
    return err[0]


def _frame_case(user_dir: Path, frame: dict[str, np.ndarray]) -> None:
    np.savez(user_dir / "frames" / "001.npz", **frame)


BAD_FRAMES = {
    "keys": ({"pts": np.zeros((10, 4), np.float32), "scale": np.ones(1, np.float32)}, "unexpected pts"),
    "dtype": ({"points": np.zeros((10, 4), np.float64), "scale": np.ones(1, np.float32)}, "float64"),
    "rank": ({"points": np.zeros((10, 4, 1), np.float32), "scale": np.ones(1, np.float32)}, "rank 3"),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_frames_that_do_not_match_the_forward_are_refused_in_one_line(user_dir, capsys, case):
    frame, words = BAD_FRAMES[case]
    _frame_case(user_dir, frame)
    assert _compile(user_dir) == 2
    line = _one_line(capsys)
    assert "frame 1" in line and words in line
    assert _files(user_dir / "out") == set()


def test_a_checkpoint_that_does_not_match_is_refused_naming_the_keys(user_dir, capsys):
    torch.save({"model": {"mlp.0.weight": torch.zeros(16, 4), "extra.bias": torch.zeros(2)}},
               user_dir / "ckpt.pth")
    assert _compile(user_dir, "--weights", str(user_dir / "ckpt.pth")) == 2
    line = _one_line(capsys)
    assert "5 missing" in line and "1 unexpected" in line and "extra.bias" in line
    assert _files(user_dir / "out") == set()


def test_a_pickled_object_checkpoint_is_refused(user_dir, capsys):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "cfg": Path("x")}, user_dir / "evil.pth")
    assert _compile(user_dir, "--weights", str(user_dir / "evil.pth")) == 2
    assert "cannot read weights" in _one_line(capsys)


def test_an_untraceable_forward_names_the_failing_line(user_dir, capsys):
    assert _compile(user_dir, model="toy.py:build_branchy") == 2
    line = _one_line(capsys)
    assert "cannot trace" in line and "toy.py" in line and "if points.sum() > 0:" in line
    assert not (user_dir / "out" / "export" / "model.onnx").exists()


@pytest.mark.parametrize("model,words", [
    ("missing.py:build", "model file not found"),
    ("toy.py:nope", "has no callable 'nope'"),
    ("toy.py:1bad", "is not a function name"),
    ("no-such-preset", "unknown model"),
])
def test_bad_model_references_are_refused_before_anything_runs(user_dir, capsys, model, words):
    ref = f"{user_dir / model.split(':')[0]}:{model.split(':')[1]}" if ":" in model else model
    out = user_dir / "out2"
    assert main(["compile", "--model", ref, "--frames", str(user_dir / "frames"), "--target", "cpu",
                 "--out", str(out)]) == 2
    assert words in _one_line(capsys)
    assert _files(out) == set()


def test_a_user_model_without_frames_or_with_a_rig_is_refused(user_dir, capsys):
    base = ["compile", "--model", f"{user_dir / 'toy.py'}:build", "--target", "cpu", "--out",
            str(user_dir / "o")]
    assert main(base) == 2
    assert "needs frames" in _one_line(capsys)
    assert main([*base, "--frames", str(user_dir / "frames"), "--rig", "x.json"]) == 2
    assert "presets only" in _one_line(capsys)


def test_outputs_must_be_tensors():
    with pytest.raises(SparsefuseError, match="exports tensors only"):
        mi.named_outputs({"boxes": [torch.zeros(1)]})


def test_spec_validation_names_the_field():
    spec = ModelSpec((InputSpec("x"),), (OutputSpec("a", "weighted", weight_by="b"),))
    with pytest.raises(SparsefuseError, match="not another output"):
        sparsefuse.spec.validate_spec(spec)
    with pytest.raises(SparsefuseError, match="unknown transform"):
        ModelSpec((InputSpec("x"),), (OutputSpec("a"),)).with_outputs(a="tanh")


def test_the_specs_evaluate_callback_reports_task_metrics_for_reference_and_onnx(tmp_path):
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    class Scorer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, points):
            return {"score": self.net(points).amax(0)}

    def evaluate(outputs, frame):
        """A toy metric that reads a label the frames carry."""
        return {"abs_err": float(abs(float(np.asarray(outputs["score"])[0]) - float(frame["label"][0])))}

    frames = [{"points": np.random.default_rng(i).random((20 + i, 4), dtype=np.float32),
               "label": np.array([0.5], np.float32)} for i in range(3)]
    spec = ModelSpec((InputSpec("points", "float32", 2, ((0, "num_points"),)),), (OutputSpec("score"),),
                     evaluate=evaluate, label_keys=("label",))
    result = sparsefuse.compile(Scorer(), frames, spec=spec, target="cpu", out=tmp_path / "out")
    assert result.verify_passed
    metrics = json.loads((tmp_path / "out" / "verify.json").read_text())["metrics"]
    with torch.no_grad():
        scores = [float(net(torch.from_numpy(f["points"])).amax(0)[0]) for f in frames[1:]]
    expected = np.mean([abs(score - 0.5) for score in scores])
    assert metrics["abs_err"]["reference"] == pytest.approx(expected, rel=1e-5)
    assert abs(metrics["abs_err"]["delta"]) < 1e-5


def test_a_factory_can_be_named_by_module(user_dir, monkeypatch, capsys):
    package = user_dir / "myteam_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "detector.py").write_text(MODEL_FILE)
    monkeypatch.syspath_prepend(str(user_dir))
    out = user_dir / "out_module"
    assert main(["compile", "--model", "myteam_models.detector:build", "--frames", str(user_dir / "frames"),
                 "--target", "cpu", "--out", str(out), "--verify-frames", "1"]) == 0
    record = json.loads((out / "compile.json").read_text())
    assert record["config"]["model"] == "myteam_models.detector:build"
    assert len(record["inputs"]["model"]) == 64  # the module's code is hashed like a file's
    capsys.readouterr()
    assert main(["compile", "--model", "myteam_models.nothere:build", "--frames", str(user_dir / "frames"),
                 "--target", "cpu", "--out", str(user_dir / "o2")]) == 2
    assert "cannot import myteam_models.nothere" in _one_line(capsys)
