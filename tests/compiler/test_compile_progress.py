"""compile --sparsity: the sparsity stage's layers reach the stage's own display line, and
--threads sets the torch threads of the reference and sparsity work."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sparsefuse.compiler import pipeline
from sparsefuse.compiler.commands.compile import RichProgress
from sparsefuse.compiler.stages import StageRecord
from sparsefuse.errors import SparsefuseError


def _description(progress: RichProgress, name: str) -> str:
    return next(t.description for t in progress.bar.tasks if t.id == progress.tasks[name])


def test_stage_progress_updates_the_stage_line_then_the_summary_replaces_it():
    progress = RichProgress(["export", "sparsity"])
    progress.stage_started("sparsity")
    progress.stage_progress("sparsity", 11, 31, "lidar.encoder.conv1.weight")
    assert "layer 12/31 (lidar.encoder.conv1)" in _description(progress, "sparsity")
    progress.stage_progress("sparsity", 11, 31, "lidar.encoder.conv1.weight · level 3/20")
    assert "layer 12/31 (lidar.encoder.conv1 · level 3/20)" in _description(progress, "sparsity")
    assert len(progress.bar.tasks) == 2  # still one line per stage
    progress.stage_finished(StageRecord("sparsity", "k", {}, 1.0, False, {"achieved_sparsity": 0.5}))
    assert "layer" not in _description(progress, "sparsity")


def test_sparsity_stage_reports_layers_to_the_display_with_the_threads_asked(tmp_path, monkeypatch):
    from sparsefuse.passes.sparsity import stage

    seen, threads = [], []

    def fake_stage(model, onnx_model, spec, out_dir, frames, **kw):
        threads.append(torch.get_num_threads())
        for i in range(4 if kw["layer_progress"] else 0):
            kw["layer_progress"](i, 3, f"layer{i}")
        plan = SimpleNamespace(allocator="a", pattern="p", budget_kind="params", budget_fraction=0.5,
                               achieved_fraction=0.5, achieved_sparsity=0.5, layers=[1, 2, 3],
                               forward_counts={})
        return None, SimpleNamespace(SerializeToString=lambda: b"onnx"), plan

    monkeypatch.setattr(stage, "run_sparsity_stage", fake_stage)
    monkeypatch.setattr(pipeline, "onnx", SimpleNamespace(load=lambda path: None))
    side = SimpleNamespace(calibration_frames=lambda n: [], dense_model=None, threads=2,
                           source=SimpleNamespace(torch_forward=None, modality_of=None),
                           spec=SimpleNamespace(outputs=()))
    config = SimpleNamespace(sparsity=SimpleNamespace(synthetic=False, calib=2))
    display = SimpleNamespace(stage_progress=lambda *a: seen.append(a))
    before = torch.get_num_threads()
    details = pipeline._sparsity(side, tmp_path, config, display)
    assert torch.get_num_threads() == before and threads == [2] and details["layers"] == 3
    assert seen == [("sparsity", i, 3, f"layer{i}") for i in range(4)]
    # a display without stage_progress (NullProgress, a user's) is fine
    pipeline._sparsity(side, tmp_path, config, SimpleNamespace())


def test_compile_threads_option_is_checked_before_any_work():
    from sparsefuse.compiler.threads import check_threads

    assert check_threads(1) == 1
    with pytest.raises(SparsefuseError):
        check_threads(0)


def test_compile_refuses_an_infeasible_latency_budget_before_building_it(tmp_path, monkeypatch, capsys):
    import json

    from sparsefuse.compiler import cli
    from sparsefuse.compiler.commands import compile as compile_cmd

    table = tmp_path / "lat.json"
    table.write_text(json.dumps({"a.weight": {"dense@0": 1.0, "unstructured@0.5": 0.8}}))
    monkeypatch.setattr(compile_cmd, "prepare_source", lambda config: pytest.fail("built the model"))
    code = cli.main(["compile", "--model", "bevfusion-tiny", "--target", "cpu", "--out", str(tmp_path / "o"),
                     "--sparsity", f"budget=latency={table}@0.5,calib=1"])
    err = capsys.readouterr().err
    assert code == 2 and "smallest achievable fraction 0.8000" in err and f"{table}@0.8 or more" in err
