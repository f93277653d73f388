"""Mixed precision by the DP: joint {fp16, int8} x {dense, 2:4} allocation under a latency budget."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.manager import PassContext
from sparsefuse.passes.precision import mixed, mixed_measure
from sparsefuse.passes.precision.int8 import quantize_int8
from sparsefuse.passes.sparsity.allocate import solve_mckp
from sparsefuse.passes.sparsity.calib import default_forward
from sparsefuse.passes.sparsity.discover import PrunableLayer
from sparsefuse.passes.sparsity.patterns import nm_satisfied
from sparsefuse.targets.registry import get_target


def _brute(costs, delta, budget) -> float:
    best = np.inf
    for picks in itertools.product(*[range(len(r)) for r in costs]):
        if sum(costs[i][k] for i, k in enumerate(picks)) <= budget + 1e-12:
            best = min(best, sum(delta[i][k] for i, k in enumerate(picks)))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_dp_matches_brute_force_within_the_bound(seed):
    rng = np.random.default_rng(seed)
    layers = int(rng.integers(3, 6))
    costs = rng.uniform(0.1, 2.0, (layers, 4)).tolist()
    delta = rng.uniform(0.0, 1.0, (layers, 4)).tolist()
    lo, hi = sum(min(r) for r in costs), sum(max(r) for r in costs)
    budget = float(rng.uniform(lo, hi))
    alloc = solve_mckp(costs, delta, budget, resolution=50)  # coarse: the bound matters
    opt = _brute(costs, delta, budget)
    relaxed = _brute(costs, delta, budget - layers * alloc.unit)  # OPT(budget − L·u)
    assert alloc.total_cost <= budget + 1e-9
    assert opt - 1e-12 <= alloc.total_distortion <= relaxed + 1e-12
    fine = solve_mckp(costs, delta, budget, resolution=100_000)
    assert fine.total_distortion <= _brute(costs, delta, budget - layers * fine.unit) + 1e-12


def test_dp_is_exact_on_integer_costs():
    rng = np.random.default_rng(7)
    for _ in range(10):
        costs = rng.integers(1, 20, (4, 4)).astype(float).tolist()
        delta = rng.uniform(0, 1, (4, 4)).tolist()
        budget = float(sum(min(r) for r in costs) + rng.integers(0, 20))
        assert solve_mckp(costs, delta, budget).total_distortion == pytest.approx(
            _brute(costs, delta, budget)
        )


def _layer(name: str, kind: str, nm_recommended: bool, groups: int = 1) -> PrunableLayer:
    return PrunableLayer(
        name, kind, "other", (64, 64, 3, 3), 64 * 64 * 9, 1.0, groups, nm_recommended, nm_recommended, ""
    )


def test_candidates_respect_eligibility():
    keys = lambda layer: [c.key for c in mixed.mixed_candidates(layer)]  # noqa: E731
    assert keys(_layer("a", "conv2d", True)) == [
        "fp16/dense@0",
        "fp16/2:4@0.5",
        "int8/dense@0",
        "int8/2:4@0.5",
    ]
    assert keys(_layer("b", "linear", False)) == ["fp16/dense@0", "int8/dense@0"]
    assert keys(_layer("c", "sparseconv3d", True)) == ["fp16/dense@0", "fp16/2:4@0.5"]  # no INT8 I/O
    assert keys(_layer("d", "sparseconv3d", False)) == ["fp16/dense@0"]
    assert keys(_layer("e", "conv_transpose2d", False, groups=2)) == ["fp16/dense@0"]


def test_parse_budget():
    assert mixed.parse_budget("0.7") == mixed.MixedBudget(fraction=0.7)
    assert mixed.parse_budget("12.5 ms") == mixed.MixedBudget(ms=12.5)
    for bad in ("1.5", "0", "-3ms", "fast"):
        with pytest.raises(SparsefuseError):
            mixed.parse_budget(bad)


class _One(torch.nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _int8_delta(weight: torch.Tensor, frames) -> float:
    model = _One(weight)
    layer = PrunableLayer(
        "fc.weight", "linear", "other", tuple(weight.shape), weight.numel(), 1.0, 1, True, False, ""
    )
    amax = mixed_measure.calibrate_inputs(model, frames, default_forward, [layer])
    return mixed_measure.measure_mixed(model, frames, default_forward, [layer], [[("int8", "dense")]], amax)[
        0
    ][0]


def test_int8_delta_is_zero_when_exactly_representable():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randint(-126, 127, (4, 8), generator=gen).float()
    weight[:, 0] = 127.0  # per-channel max 127 -> scale 1: every integer is on the grid
    x = torch.randint(-126, 127, (3, 8), generator=gen).float()
    x[0, 0] = 127.0  # activation amax 127 -> scale 1
    frames = [{"x": x}, {"x": x.flip(0)}]
    assert _int8_delta(weight, frames) == 0.0
    assert _int8_delta(weight + 0.3, frames) > 0.0  # off the grid: the same measurement sees it
    assert _int8_delta(weight, [{"x": x + 0.4}, {"x": x - 0.2}]) > 0.0  # activation off the grid


class _Net(torch.nn.Module):
    """x [1, 64, 6, 6] -> conv(64,64,3) -> relu -> conv(64,64,3) -> relu -> conv(64,8,1)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(64, 64, 3, padding=1)
        self.b = torch.nn.Conv2d(64, 64, 3, padding=1)
        self.c = torch.nn.Conv2d(64, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def _frames(n: int = 2):
    gen = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(1, 64, 6, 6, generator=gen)} for _ in range(n)]


_ROW = {"fp16/dense@0": 1.0, "fp16/2:4@0.5": 0.8, "int8/dense@0": 0.6, "int8/2:4@0.5": 0.5}
_TABLE = {
    "a.weight": dict(_ROW),
    "b.weight": dict(_ROW),
    "c.weight": {"fp16/dense@0": 0.3, "int8/dense@0": 0.2},
}


def test_infeasible_budget_is_refused_before_any_forward():
    calls = []

    def forward(model, frame):
        calls.append(1)
        return default_forward(model, frame)

    layers = [
        _layer("a.weight", "conv2d", True),
        _layer("b.weight", "conv2d", True),
        PrunableLayer("c.weight", "conv2d", "other", (8, 64, 1, 1), 512, 1.0, 1, False, False, ""),
    ]
    with pytest.raises(SparsefuseError) as err:
        mixed.allocate_mixed(
            _Net(), _frames(), forward, _TABLE, mixed.MixedBudget(fraction=0.4), layers=layers
        )
    assert calls == []
    assert "1.2 ms" in str(err.value) and "1.2ms" in err.value.hint  # cheapest: 0.5 + 0.5 + 0.2
    plan = mixed.allocate_mixed(_Net(), _frames(), forward, _TABLE, mixed.MixedBudget(ms=1.2), layers=layers)
    assert calls and plan.allocation.total_cost == pytest.approx(1.2)


def test_tiny_end_to_end_allocation_and_apply():
    frames = _frames()
    net = _Net()
    source = {"label": "estimated", "cost_model": {"name": "test", "version": "0"}}
    plan = mixed.allocate_mixed(
        net, frames, default_forward, _TABLE, mixed.MixedBudget(fraction=0.6), latency_source=source
    )
    assert [layer.name for layer in plan.layers] == ["a.weight", "b.weight", "c.weight"]
    assert [len(c) for c in plan.candidates] == [4, 4, 2]  # c: 1x1 with C*RS = 64 < 4096, no 2:4
    budget = 0.6 * 2.3
    assert plan.budget_ms == pytest.approx(budget) and plan.allocation.total_cost <= budget + 1e-9
    delta = [list(r) for r in plan.distortion]
    assert all(r[0] == 0.0 for r in delta) and all(v > 0 for r in delta for v in r[1:])
    costs = [list(r) for r in plan.costs]
    assert plan.allocation.total_distortion <= _brute(costs, delta, budget - 3 * plan.allocation.unit) + 1e-12
    assert plan.allocation.total_distortion >= _brute(costs, delta, budget) - 1e-12
    doc = json.loads(json.dumps(plan.to_dict()))
    assert doc["latency"]["label"] == "estimated" and doc["latency"]["predicted_ms"] <= budget + 1e-9
    assert doc["distortion"]["predicted"] == pytest.approx(
        sum(v["distortion"] for v in doc["layers"].values())
    )
    loose = mixed.allocate_mixed(net, frames, default_forward, _TABLE, mixed.MixedBudget(fraction=1.0))
    assert (
        loose.int8_layers() == [] and loose.sparse_layers() == [] and loose.allocation.total_distortion == 0
    )


def _plan_with(choices: dict[str, str]) -> mixed.MixedPlan:
    """A plan that picks ``choices`` (layer -> key) for the _Net layers, no measurement."""
    layers = [_layer("a.weight", "conv2d", True), _layer("b.weight", "conv2d", True)]
    cands = tuple(tuple(mixed.mixed_candidates(layer)) for layer in layers)
    pick = tuple(
        [c.key for c in row].index(choices[layer.name]) for layer, row in zip(layers, cands, strict=True)
    )
    zeros = tuple(tuple(0.0 for _ in row) for row in cands)
    alloc = solve_mckp([[0.0] * len(r) for r in cands], [[0.0] * len(r) for r in cands], 1.0)
    alloc = type(alloc)(pick, 0.0, 0.0, alloc.unit, alloc.error_bound, 0.0)
    return mixed.MixedPlan(tuple(layers), cands, zeros, zeros, alloc, 1.0, 1.0, {"label": "table"})


def test_apply_gives_exact_two_four_zeros_only_on_chosen_layers():
    net = _Net()
    before = net.a.weight.detach().clone()
    masks = mixed.apply_mixed_torch(net, _plan_with({"a.weight": "fp16/dense@0", "b.weight": "int8/2:4@0.5"}))
    assert list(masks) == ["b.weight"]
    assert nm_satisfied(net.b.weight.detach(), 1)
    assert int((net.b.weight == 0).sum()) == net.b.weight.numel() // 2
    assert torch.equal(net.a.weight, before)


def _chain() -> onnx.ModelProto:
    """x -> Conv(w_a) -> Relu -> Conv(w_b) -> y; torch names a.weight / b.weight in the param map."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.1, (8, 8, 3, 3)).astype(np.float32), n)
        for n in ("w_a", "w_b")
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w_a"], ["c0"], name="conv_a", pads=[1] * 4),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu"),
        helper.make_node("Conv", ["r0", "w_b"], ["y"], name="conv_b", pads=[1] * 4),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(
        model, {"sparsefuse.param_map": json.dumps({"a.weight": "w_a", "b.weight": "w_b"})}
    )
    return model


def test_qdq_only_on_the_plans_int8_layers():
    plan = _plan_with({"a.weight": "fp16/2:4@0.5", "b.weight": "int8/dense@0"})
    options = mixed.int8_options(plan, {"x": 3.0, "r0": 2.0}, ["r0"])
    out = quantize_int8(_chain(), PassContext(target_backend="tensorrt", options={"int8": options}))
    by_name = {n.name: n for n in out.graph.node}
    assert list(by_name["conv_b"].input[:2]) == ["r0__dq", "w_b__dq"]
    assert list(by_name["conv_a"].input[:2]) == ["x", "w_a"]  # fp16 layer: no Q/DQ at all
    dq = sorted(n.name for n in out.graph.node if n.op_type == "DequantizeLinear")
    assert dq == ["r0__DQ", "w_b__DQ"]
    onnx.checker.check_model(out)


def test_estimated_table_has_all_keys_and_int8_is_faster():
    w = numpy_helper.from_array(np.zeros((256, 256, 3, 3), np.float32), "conv.weight")
    node = helper.make_node("Conv", ["x", "conv.weight"], ["y"], name="node_conv", pads=[1] * 4)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256, 32, 32])],
        [w],
    )
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    )
    row = mixed.estimated_table(model, get_target("jetson/agx-orin-64gb"))["conv.weight"]
    assert set(row) == {"fp16/dense@0", "fp16/2:4@0.5", "int8/dense@0", "int8/2:4@0.5"}
    assert row["int8/2:4@0.5"] < row["int8/dense@0"] < row["fp16/dense@0"]
    assert row["fp16/2:4@0.5"] < row["fp16/dense@0"]


def test_quantize_selected_runs_in_ort_and_touches_only_the_chosen_layer(tmp_path):
    from sparsefuse.passes.precision import capture

    frames = [{"x": np.random.default_rng(s).normal(size=(1, 8, 6, 6)).astype(np.float32)} for s in range(2)]
    out = mixed.quantize_selected(_chain(), ["a.weight"], frames, "onnxruntime")
    dq = sorted(n.name for n in out.graph.node if n.op_type == "DequantizeLinear")
    assert dq == ["w_a__DQ", "x__DQ"]
    got = capture.session(out).run(["y"], frames[0])[0]
    ref = capture.session(_chain()).run(["y"], frames[0])[0]
    assert 0 < np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    mixed.write_plan(
        _plan_with({"a.weight": "int8/dense@0", "b.weight": "fp16/2:4@0.5"}), tmp_path / "plan.json"
    )
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["layers"]["b.weight"]["pattern"] == "2:4" and doc["counts"]["int8"] == 1


def test_mixed_onnx_graph_two_four_zeros_and_qdq_only_on_chosen_layers():
    from sparsefuse.passes.precision import capture

    layers = [
        PrunableLayer("a.weight", "conv2d", "other", (8, 8, 3, 3), 576, 1.0, 1, True, True, ""),
        PrunableLayer("b.weight", "conv2d", "other", (8, 8, 3, 3), 576, 1.0, 1, True, True, ""),
    ]
    plan = _plan_with({"a.weight": "fp16/2:4@0.5", "b.weight": "int8/dense@0"})
    plan = mixed.MixedPlan(
        tuple(layers),
        *[
            getattr(plan, f)
            for f in (
                "candidates",
                "costs",
                "distortion",
                "allocation",
                "budget_ms",
                "reference_ms",
                "latency_source",
            )
        ],
    )
    sparse = mixed.apply_mixed_onnx(_chain(), plan)
    inits = {i.name: numpy_helper.to_array(i) for i in sparse.graph.initializer}
    assert (
        nm_satisfied(torch.from_numpy(inits["w_a"].copy()), 1) and int((inits["w_a"] == 0).sum()) == 576 // 2
    )
    assert np.array_equal(inits["w_b"], numpy_helper.to_array(_chain().graph.initializer[1]))
    frames = [{"x": np.random.default_rng(s).normal(size=(1, 8, 6, 6)).astype(np.float32)} for s in range(2)]
    out = mixed.quantize_selected(sparse, plan.int8_layers(), frames, "onnxruntime")
    assert sorted(n.name for n in out.graph.node if n.op_type == "DequantizeLinear") == ["r0__DQ", "w_b__DQ"]
    capture.session(out).run(["y"], frames[0])
