"""What a new user hits first: an infeasible latency budget refused before any forward, per-layer
progress reaching the caller, and the 2:4 plot drawn from each layer's alternatives."""

from __future__ import annotations

import json

import pytest

from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.sparsity import plots
from sparsefuse.passes.sparsity.analysis import analyze
from sparsefuse.passes.sparsity.calib import default_forward
from sparsefuse.passes.sparsity.config import config_from_options
from sparsefuse.passes.sparsity.stage import run_sparsity_stage


def _table(model, frames, path, cheap: float):
    analysis = analyze(model, frames[:1], "unstructured", levels=3, measure=False)
    table = {
        layer.name: {c.key: (1.0 if c.level == 0 else cheap) for c in cands}
        for layer, cands in zip(analysis.layers, analysis.candidates, strict=True)
    }
    path.write_text(json.dumps(table))
    return path


def test_infeasible_latency_budget_is_refused_before_any_forward(model, frames, tmp_path):
    table = _table(model, frames, tmp_path / "lat.json", cheap=0.7)  # cheapest plan: 0.7 of dense
    config = config_from_options(f"latency={table}@0.5", levels=3, calib=1)
    calls = []

    def counting(m, frame):
        calls.append(1)
        return default_forward(m, frame)

    with pytest.raises(SparsefuseError) as err:
        run_sparsity_stage(model, None, config, tmp_path / "out", frames, forward=counting)
    assert calls == []
    assert "0.7000" in err.value.message and f"latency={table}@0.7 or more" in err.value.hint


def test_feasible_latency_budget_still_runs(model, frames, tmp_path):
    table = _table(model, frames, tmp_path / "lat.json", cheap=0.7)
    config = config_from_options(f"latency={table}@0.8", levels=3, calib=1)
    _, _, plan = run_sparsity_stage(model, None, config, tmp_path / "out", frames)
    assert plan.achieved_fraction <= 0.8 + 1e-9


def test_layer_progress_names_every_layer(model, frames, tmp_path):
    config = config_from_options("params=0.5", levels=3, calib=1)
    seen, plain = [], []
    _, _, plan = run_sparsity_stage(model, None, config, tmp_path / "out", frames,
                                    progress=lambda i, n: plain.append((i, n)),
                                    layer_progress=lambda i, n, name: seen.append((i, n, name)))
    n, names = len(plan.layers), [layer.name for layer in plan.layers]
    assert {t for _, t, _ in seen} == {n}
    boundaries = [(i, name) for i, _, name in seen if "level" not in name]
    assert boundaries == [*((i, name) for i, name in enumerate(names)), (n, "")]
    levels = [(i, name) for i, _, name in seen if "level" in name]  # levels=3: two pruned levels each
    assert levels == [(i, f"{name} · level {k}/2") for i, name in enumerate(names) for k in (1, 2)]
    assert plain == [(i, n) for i in range(1, n + 1)]


def test_2to4_plot_draws_each_layers_alternatives(model, frames, tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, dest: figures.append((fig, dest.name)) or dest)
    config = config_from_options("params=0.8", pattern="2:4", permute=True, calib=2)
    _, _, plan = run_sparsity_stage(model, None, config, tmp_path / "out", frames)
    fig = next(f for f, name in figures if name == "rd_curves.png")
    ax = fig.axes[0]
    bars = {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers}
    assert set(bars) == {"2:4", "2:4 + permutation"}
    dist = {layer.name: layer for layer in plan.layers}
    permuted = [i for i, layer in enumerate(plan.layers) if layer.permutation]
    assert permuted, "the toy model has permutable 2:4 layers"
    eligible = [i for i, layer in enumerate(plan.layers) if layer.nm_valid]
    assert all(bars["2:4"][i] > 0 for i in eligible)
    assert all(bars["2:4"][i] == 0 for i in range(len(plan.layers)) if i not in eligible)
    assert all(bars["2:4 + permutation"][i] > 0 for i in permuted)
    # the permutation keeps more magnitude: its layers' δ is not above plain 2:4's on average
    assert sum(bars["2:4 + permutation"][i] for i in permuted) <= sum(bars["2:4"][i] for i in permuted) * 1.5
    assert len(dist) == len(bars["2:4"])


# --- sparsefuse prune -------------------------------------------------------------------------

@pytest.fixture
def toy_loader(monkeypatch, model, frames):
    from types import SimpleNamespace

    from sparsefuse.compiler.commands import prune

    no_transforms = SimpleNamespace(outputs=())  # the toy's raw outputs
    monkeypatch.setattr(prune, "_load", lambda args, count: (model, frames[:count], None, no_transforms))
    return prune


def test_prune_defaults_to_one_thread_and_says_so(toy_loader, tmp_path, capsys):
    import torch

    from sparsefuse.compiler import cli

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code = cli.main(["prune", "--model", "toy", "--calib", "1", "--levels", "2", "--out", str(tmp_path)])
        assert code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "torch threads: 1" in out and "budget: params=0.5" in out


def test_prune_progress_reaches_the_display(toy_loader, tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from sparsefuse.compiler import cli

    finals = []

    class Recorded(toy_loader.LayerDisplay):
        def __init__(self) -> None:
            super().__init__(Console(file=io.StringIO(), force_terminal=True))

        def __exit__(self, *exc: object) -> None:
            task = self.bar.tasks[0]
            finals.append((task.completed, task.total))
            super().__exit__(*exc)

    monkeypatch.setattr(toy_loader, "LayerDisplay", Recorded)
    assert cli.main(["prune", "--model", "toy", "--calib", "1", "--levels", "2", "--out", str(tmp_path)]) == 0
    layers = len(json.loads((tmp_path / "sparsity" / "plan.json").read_text())["layers"])
    assert finals == [(layers, layers)] and layers > 3


def test_prune_refuses_an_infeasible_latency_budget_before_loading(toy_loader, model, frames, tmp_path,
                                                                   monkeypatch, capsys):
    from sparsefuse.compiler import cli

    table = _table(model, frames, tmp_path / "lat.json", cheap=0.7)
    monkeypatch.setattr(toy_loader, "_load", lambda args, count: pytest.fail("loaded the model"))
    code = cli.main(["prune", "--model", "toy", "--budget", f"latency={table}@0.5", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "smallest achievable fraction 0.7000" in err and f"{table}@0.7 or more" in err


def test_latency_budget_without_fraction_prints_the_default(tmp_path):
    from sparsefuse.compiler.commands import prune
    from sparsefuse.compiler.commands.prune import budget_line
    from sparsefuse.passes.sparsity import config

    assert prune.DEFAULT_LATENCY_FRACTION == config.DEFAULT_LATENCY_FRACTION

    table = tmp_path / "t.json"
    table.write_text("{}")
    line = budget_line(config_from_options(f"latency={table}"), f"latency={table}")
    assert line == f"budget: latency={table}@0.5 (no @F given: the default 0.5)"
    assert budget_line(config_from_options(f"latency={table}@0.6"), f"latency={table}@0.6").endswith("@0.6")
    spec = f"budget=latency={table},allocator=lamp"  # compile --sparsity
    implicit = budget_line(config_from_options(f"latency={table}"), spec)
    assert implicit.endswith("(no @F given: the default 0.5)")
    assert "no @F" not in budget_line(config_from_options(f"latency={table}@0.6"), "spec.toml")


def test_preset_defaults_are_the_shipped_checkpoint_and_calibration_seeds():
    from pathlib import Path

    from sparsefuse.compiler.commands.prune import CALIB_SEEDS, preset_inputs

    checkpoint, seeds, lines = preset_inputs("bevfusion-tiny", None, None, 0)
    assert Path(checkpoint).is_file()
    assert Path(checkpoint).parts[-2:] == ("checkpoints", "bevfusion-tiny.safetensors")
    assert seeds == CALIB_SEEDS == "0:600"
    assert lines[0].startswith(f"weights: {checkpoint} (the shipped checkpoint")
    assert lines[1].startswith("frames: benchmark scenes 0:600 (the calibration split")
    checkpoint, seeds, lines = preset_inputs("bevfusion-base", None, None, 3)
    assert checkpoint is None and seeds == "0:600"
    assert "no checkpoint ships for bevfusion-base" in lines[0] and "seed 3" in lines[0]
    assert preset_inputs("bevfusion-tiny", "none", "none", 0)[:2] == (None, None)
    assert preset_inputs("bevfusion-tiny", "w.safetensors", "5:9", 0)[:2] == ("w.safetensors", "5:9")
