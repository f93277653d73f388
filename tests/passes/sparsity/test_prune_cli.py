"""``sparsefuse prune`` end to end on the toy model (the preset loader is swapped for the toy), and a
latency-table budget."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from sparsefuse.compiler import cli
from sparsefuse.compiler.commands import prune


@pytest.fixture
def toy_loader(monkeypatch, model, frames):
    no_transforms = SimpleNamespace(outputs=())  # the toy's raw outputs
    monkeypatch.setattr(prune, "_load", lambda args, count: (model, frames[:count], None, no_transforms))


def test_prune_cli_writes_plan_and_meets_budget(toy_loader, tmp_path, capsys):
    args = "prune --model toy --budget params=0.25 --allocator lamp --calib 1 --levels 2 --out".split()
    code = cli.main([*args, str(tmp_path)])
    assert code == 0
    plan = json.loads((tmp_path / "sparsity" / "plan.json").read_text())
    assert plan["allocator"] == "lamp" and abs(plan["achieved_sparsity"] - 0.75) <= 0.005
    assert "params kept" in capsys.readouterr().out


def test_prune_cli_user_error_is_one_line(toy_loader, tmp_path, capsys):
    code = cli.main(
        [
            "prune",
            "--model",
            "toy",
            "--budget",
            "params=0.2",
            "--pattern",
            "2:4",
            "--calib",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: params budget 0.2 is below") and "Traceback" not in err


def test_latency_budget_from_table(toy_loader, model, frames, tmp_path):
    from sparsefuse.passes.sparsity.analysis import analyze

    analysis = analyze(model, frames[:1], "2:4", measure=False)
    table = {
        layer.name: {c.key: (2.0 if c.level == 0 else 1.2) for c in cands}
        for layer, cands in zip(analysis.layers, analysis.candidates, strict=True)
    }
    path = tmp_path / "lat.json"
    path.write_text(json.dumps(table))
    code = cli.main(
        [
            "prune",
            "--model",
            "toy",
            "--budget",
            f"latency={path}@0.85",
            "--pattern",
            "2:4",
            "--calib",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    plan = json.loads((tmp_path / "sparsity" / "plan.json").read_text())
    assert plan["budget_kind"] == "latency" and plan["achieved_fraction"] <= 0.85 + 1e-9
    assert sum(layer["cost"] for layer in plan["layers"]) == pytest.approx(plan["achieved_total"])
    assert any(layer["pattern"] == "2:4" for layer in plan["layers"])
