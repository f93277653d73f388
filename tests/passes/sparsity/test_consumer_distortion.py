"""Distortion in the consumer's space: outputs pass through the spec's transforms before δ."""

from __future__ import annotations

import pytest
import torch

from sparsefuse.passes.sparsity.calib import consumer_outputs
from sparsefuse.passes.sparsity.config import SparsityConfig
from sparsefuse.passes.sparsity.stage import run_sparsity_stage
from sparsefuse.spec import OutputSpec


def test_consumer_outputs_apply_each_transform():
    logits = torch.tensor([[[-3.0, 0.0], [2.0, 1.0]]])  # [1, 2, 2]
    boxes = torch.ones(1, 3, 2)
    specs = [OutputSpec("heatmap", "sigmoid"), OutputSpec("boxes", "weighted", weight_by="heatmap"),
             OutputSpec("cls", "softmax", axis=1)]
    out = consumer_outputs((logits, boxes, logits), specs)
    assert torch.allclose(out["heatmap"], torch.sigmoid(logits))
    # boxes have 3 channels, the heatmap 2: weighted by the heatmap's max class probability
    assert torch.allclose(out["boxes"], boxes * torch.sigmoid(logits).amax(1, keepdim=True))
    assert torch.allclose(out["cls"].sum(1), torch.ones(1, 2))
    named = consumer_outputs({"heatmap": logits}, [OutputSpec("heatmap", "identity")])
    assert torch.equal(named["heatmap"], logits)


class TwoHeads(torch.nn.Module):
    """Channel 0 is a far-negative logit (invisible after a sigmoid) with large weights; channel 1
    sits near 0 with small weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.quiet = torch.nn.Linear(8, 1)
        self.loud = torch.nn.Linear(8, 1)
        with torch.no_grad():
            self.quiet.weight.mul_(20.0)
            self.quiet.bias.fill_(-60.0)
            self.loud.weight.mul_(0.5)
            self.loud.bias.zero_()

    def forward(self, x):
        return torch.cat([self.quiet(x), self.loud(x)], dim=1)


@pytest.mark.parametrize("space,pruned", [("raw", "loud.weight"), ("consumer", "quiet.weight")])
def test_the_allocator_spends_the_budget_where_the_consumer_cannot_see(tmp_path, space, pruned):
    """Budget: keep half of the two heads' weights. In raw space the big-weight 'quiet' head looks
    most sensitive, so the DP prunes 'loud'; after the sigmoid the quiet head's cells are ~0 either
    way, so the DP prunes it instead."""
    frames = [{"x": torch.rand(16, 8)} for _ in range(2)]
    config = SparsityConfig(budget=0.5, allocator="rdprune", calib=2, levels=3, distortion=space)
    _, _, plan = run_sparsity_stage(TwoHeads(), None, config, tmp_path, frames,
                                    transforms=[OutputSpec("heatmap", "sigmoid")])
    levels = {layer.name: layer.level for layer in plan.layers}
    assert levels[pruned] == 1.0 and levels[({"loud.weight", "quiet.weight"} - {pruned}).pop()] == 0.0
    assert plan.config["distortion_space"] == space
    assert plan.config["output_transforms"] == {"heatmap": "sigmoid"}
