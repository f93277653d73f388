"""Channel chains on the toy model: straight chains found, joins refused with a reason; a channel
plan realized as masks equals the thinned (narrower) dense model."""

from __future__ import annotations

import torch

from sparsefuse.passes.sparsity.analysis import analyze
from sparsefuse.passes.sparsity.apply_torch import apply_plan_torch, thin_model
from sparsefuse.passes.sparsity.config import SparsityConfig
from sparsefuse.passes.sparsity.decide import decide
from sparsefuse.passes.sparsity.stage import build_plan


def test_chains_and_refusals(model, frames):
    analysis = analyze(model, frames[:1], "channel", levels=5, measure=False)
    chains = analysis.chains
    assert chains["camera.stem.0.weight"].consumer == "camera.conv.0.weight"
    assert ("camera.stem.1.running_var", 0) in chains["camera.stem.0.weight"].followers
    assert chains["lidar.conv1.weight"].consumer == "lidar.conv2.weight"
    assert chains["lidar.conv1.weight"].consumer_axis == 4  # sparse conv [Cout,kz,ky,kx,Cin]
    assert "cat" in chains["camera.bev.weight"]
    assert "2 consumers" in chains["fusion.fuser.0.weight"]
    assert "add" in chains["fusion.res.weight"]
    assert "model output" in chains["head.heatmap.weight"]
    # only chain producers get channel candidates
    by_name = dict(zip((la.name for la in analysis.layers), analysis.candidates, strict=True))
    assert len(by_name["camera.bev.weight"]) == 1 and len(by_name["camera.stem.0.weight"]) > 1


def test_thinned_model_equals_masked_model(model, frames):
    analysis = analyze(model, frames[:1], "channel", levels=5, measure=False)
    weights = dict(model.named_parameters())
    config = SparsityConfig(allocator="uniform", pattern="channel", budget=0.9)
    decision = decide(analysis, weights, config)
    plan = build_plan(analysis, decision, config, weights, {})
    assert decision.achieved_total <= decision.budget_total
    masked = type(model)()
    masked.load_state_dict(model.state_dict())
    masked.eval()
    apply_plan_torch(masked, plan)
    thin = thin_model(model, plan)
    assert thin.camera.stem[0].out_channels < 8 and thin.camera.stem[1].num_features < 8
    assert thin.camera.conv[0].weight.shape[1] == thin.camera.stem[0].weight.shape[0]
    assert thin.lidar.conv2.weight.shape[-1] == thin.lidar.conv1.weight.shape[0] < 8
    with torch.no_grad():
        for frame in frames[:2]:
            for a, b in zip(masked(**frame), thin(**frame), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
