"""End to end on the toy model: budgets met by every allocator, plan artifacts, 2:4 validity in
torch and ONNX, and ONNX (onnxruntime) == torch after applying the same plan."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sparsefuse.passes.sparsity.analysis import analyze
from sparsefuse.passes.sparsity.config import ALLOCATORS, SparsityConfig
from sparsefuse.passes.sparsity.decide import decide, final_masks
from sparsefuse.passes.sparsity.patterns import nm_satisfied
from sparsefuse.passes.sparsity.stage import run_sparsity_stage


@pytest.mark.parametrize("kind", ["params", "flops"])
def test_every_allocator_meets_the_budget_within_half_a_percent(model, frames, kind):
    analysis = analyze(model, frames[:1], "unstructured", levels=5)
    weights = dict(model.named_parameters())
    total = sum(layer.params for layer in analysis.layers)
    for allocator in ALLOCATORS:
        for budget in (0.5, 0.25, 0.17):
            d = decide(
                analysis, weights, SparsityConfig(allocator=allocator, budget=budget, budget_kind=kind)
            )
            assert d.achieved_total <= d.budget_total * (1 + 1e-9), allocator
            assert d.achieved_total / d.dense_total >= budget - 0.005, (allocator, budget)
            if kind == "params":
                masks = final_masks(analysis, weights, d.candidates)
                kept = sum(
                    int(masks[la.name].sum()) if la.name in masks else la.params for la in analysis.layers
                )
                assert abs((1 - kept / total) - (1 - budget)) <= 0.005


def _ort_outputs(proto, frame):
    from sparsefuse.plugins.onnx_ops import attach_functions

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(
        attach_functions(proto).SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    return sess.run(None, {"images": frame["images"].numpy(), "points": frame["points"].numpy()})


def test_stage_2to4_with_permutation_torch_and_onnx_agree(model, frames, tmp_path):
    from sparsefuse.passes.export import export_model

    proto = export_model(model, frames[0])
    config = SparsityConfig(pattern="2:4", budget=0.8, calib=2, permute=True, allocator="mmprune4u")
    pruned, pruned_onnx, plan = run_sparsity_stage(model, proto, config, tmp_path / "sparsity", frames)

    saved = json.loads((tmp_path / "sparsity" / "plan.json").read_text())
    assert saved["schema_version"] == 1 and saved["regularizer"].startswith("a=1/σt²")
    assert {"naive_full_forwards", "equivalent_full_forwards"} <= set(saved["forward_counts"])
    for name in ("curves.npz", "layer_sparsity.png", "rd_curves.png", "budget_distortion.png"):
        assert (tmp_path / "sparsity" / name).stat().st_size > 0
    assert plan.achieved_fraction <= 0.8 + 1e-9

    inits = {i.name: i for i in pruned_onnx.graph.initializer}
    params = dict(pruned.named_parameters())
    chosen = [layer for layer in plan.layers if layer.pattern == "2:4"]
    assert chosen, "the DP should 2:4 at least one layer at this budget"
    for layer in plan.layers:
        if layer.nm_valid and layer.pattern == "2:4":
            assert nm_satisfied(params[layer.name], layer.in_axis)
            onnx_w = torch.from_numpy(np.array(__import__("onnx").numpy_helper.to_array(inits[layer.name])))
            assert nm_satisfied(onnx_w, layer.in_axis)
            torch.testing.assert_close(onnx_w, params[layer.name].detach(), rtol=0, atol=0)
    assert any(layer.permutation for layer in plan.layers)

    frame = frames[2]  # not used for export
    with torch.no_grad():
        ref = pruned(**frame)
    for got, want in zip(_ort_outputs(pruned_onnx, frame), ref, strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4 * float(want.abs().max()) + 1e-5)
    with torch.no_grad():  # permutation + masking kept the pruned model close to the original
        dense = model(**frame)
    assert not torch.equal(dense[0], ref[0])


def test_uniform_2to4_every_eligible_layer_has_at_most_two_of_four(model, frames):
    from sparsefuse.passes.sparsity.apply_torch import apply_plan_torch
    from sparsefuse.passes.sparsity.stage import build_plan

    analysis = analyze(model, frames[:1], "2:4", measure=False)
    weights = dict(model.named_parameters())
    config = SparsityConfig(allocator="uniform", pattern="2:4", budget=0.9)
    plan = build_plan(analysis, decide(analysis, weights, config), config, weights, {})
    pruned = type(model)()
    pruned.load_state_dict(model.state_dict())
    apply_plan_torch(pruned, plan)
    params = dict(pruned.named_parameters())
    eligible = [layer for layer in plan.layers if layer.nm_valid]
    assert len(eligible) >= 5 and all(layer.pattern == "2:4" for layer in eligible)
    for layer in eligible:
        assert nm_satisfied(params[layer.name], layer.in_axis), layer.name
        assert layer.params_kept == layer.params // 2
    ineligible = [layer for layer in plan.layers if not layer.nm_valid]
    assert ineligible and all(layer.level == 0 for layer in ineligible)  # e.g. C=3 stem, C=4 voxel input


def test_onnx_apply_names_a_missing_initializer():
    import onnx
    from onnx import helper, numpy_helper

    from sparsefuse.errors import SparsefuseError
    from sparsefuse.passes.sparsity.apply_onnx import apply_plan_onnx
    from sparsefuse.passes.sparsity.plan import LayerPlan, SparsityPlan

    w = np.arange(16, dtype=np.float32).reshape(2, 8) - 7.5
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "lin.weight_t"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w.T.copy(), "lin.weight_t")],
    )
    model = helper.make_model(graph)
    layer = LayerPlan(
        "lin.weight",
        "linear",
        "head",
        [2, 8],
        "unstructured",
        0.5,
        16,
        8,
        32.0,
        16.0,
        0.0,
        0.0,
        0.0,
        8.0,
        True,
        False,
        "",
        1,
        0,
    )
    plan = SparsityPlan(
        "uniform",
        "unstructured",
        "params",
        0.5,
        8,
        16,
        8,
        0.5,
        0.5,
        0.0,
        {},
        "",
        {},
        None,
        {},
        0.0,
        {},
        [layer],
    )
    with pytest.raises(SparsefuseError, match="no initializer 'lin.weight'"):
        apply_plan_onnx(model, plan)
