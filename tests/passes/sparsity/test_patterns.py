"""Masks: 2:4 along the reduction axis (property), unstructured counts, permutation invariance."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsefuse.passes.sparsity.channel import find_chains, permute_chain
from sparsefuse.passes.sparsity.discover import discover_layers
from sparsefuse.passes.sparsity.patterns import (
    nm_mask,
    nm_satisfied,
    retained_magnitude,
    search_permutation,
    unstructured_mask,
)


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(1, 6),
    groups=st.integers(1, 4),
    r=st.integers(1, 3),
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(["conv2d", "linear", "sparseconv3d"]),
)
def test_nm_mask_keeps_two_of_every_four_along_reduction(k, groups, r, seed, kind):
    gen = torch.Generator().manual_seed(seed)
    c = 4 * groups
    shape, axis = {"conv2d": ((k, c, r, r), 1), "linear": ((k, c), 1), "sparseconv3d": ((k, r, r, r, c), 4)}[
        kind
    ]
    w = torch.randn(shape, generator=gen)
    mask = nm_mask(w, axis)
    pruned = w * mask
    assert nm_satisfied(pruned, axis)
    groups_view = mask.movedim(axis, -1).reshape(-1, 4)
    assert bool((groups_view.sum(dim=1) == 2).all())
    # the kept two are the two largest magnitudes of each group
    mags = w.abs().movedim(axis, -1).reshape(-1, 4)
    kept_min = torch.where(groups_view, mags, torch.inf).min(dim=1).values
    dropped_max = torch.where(~groups_view, mags, -torch.inf).max(dim=1).values
    assert bool((kept_min >= dropped_max).all())
    assert not nm_satisfied(w, axis)  # dense random weights violate it


def test_unstructured_mask_removes_exact_count_of_smallest():
    w = torch.randn(7, 5, 3, 3, generator=torch.Generator().manual_seed(0))
    mask = unstructured_mask(w, 0.35)
    assert int((~mask).sum()) == round(0.35 * w.numel())
    assert float(w.abs()[~mask].max()) <= float(w.abs()[mask].min())


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.b = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.bn(self.a(x))))


def test_permutation_raises_retained_magnitude_and_keeps_function():
    torch.manual_seed(0)
    model = Chain().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.weight.uniform_(0.5, 2)
        model.bn.bias.uniform_(-1, 1)
        model.b.weight.mul_(torch.rand(1, 16, 1, 1) * 3)  # uneven channel magnitudes
    x = torch.randn(1, 3, 8, 8)
    before_out = model(x).detach()
    forward = lambda m, f: m(f["x"])  # noqa: E731
    layers, traces = discover_layers(model, [{"x": x}], forward)
    chain = find_chains(traces[0], layers)["a.weight"]
    assert chain.consumer == "b.weight"
    assert set(chain.tensors()) == {
        "a.weight",
        "a.bias",
        "bn.weight",
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
        "b.weight",
    }
    before = retained_magnitude(model.b.weight, 1)
    perm = torch.as_tensor(search_permutation(model.b.weight, 1, trials=3000))
    assert sorted(perm.tolist()) == list(range(16)) and perm.tolist() != list(range(16))
    permute_chain(model, chain, perm)
    assert retained_magnitude(model.b.weight, 1) > before
    torch.testing.assert_close(model(x), before_out, rtol=1e-5, atol=1e-5)
