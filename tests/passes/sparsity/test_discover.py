"""Layer discovery: kinds, FLOPs from traced shapes, modality tags, 2:4 eligibility rules; LAMP/ERK."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sparsefuse.passes.sparsity.baselines import erk_levels, lamp_scores
from sparsefuse.passes.sparsity.discover import discover_layers, nm_eligibility


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.camera = nn.Conv2d(4, 8, 3, padding=1)
        self.fusion = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.head = nn.Linear(4, 6)

    def forward(self, x):
        y = self.fusion(self.camera(x))  # [1,4,2H,2W]
        return self.head(y.permute(0, 2, 3, 1))


def test_kinds_flops_and_modalities():
    model = Mixed().eval()
    layers, _ = discover_layers(model, [{"x": torch.randn(1, 4, 5, 7)}], lambda m, f: m(f["x"]))
    by = {layer.name: layer for layer in layers}
    assert [by[n].kind for n in ("camera.weight", "fusion.weight", "head.weight")] == [
        "conv2d",
        "conv_transpose2d",
        "linear",
    ]
    assert by["camera.weight"].flops == 2 * (8 * 5 * 7) * (4 * 3 * 3)
    assert by["fusion.weight"].flops == 2 * (8 * 5 * 7) * (4 * 2 * 2)
    assert by["head.weight"].flops == 2 * (10 * 14 * 6) * 4
    assert [by[n].modality for n in ("camera.weight", "fusion.weight", "head.weight")] == [
        "camera",
        "fusion",
        "head",
    ]
    assert not by["fusion.weight"].nm_valid and by["camera.weight"].nm_valid and by["head.weight"].nm_valid


@pytest.mark.parametrize(
    "kind, shape, groups, valid, recommended",
    [
        ("conv2d", (64, 64, 3, 3), 1, True, True),  # C·R·S = 576 ≥ 512
        ("conv2d", (64, 32, 3, 3), 1, True, False),  # 288 < 512
        ("conv2d", (64, 30, 3, 3), 1, False, False),  # C % 4
        ("conv2d", (64, 64, 7, 7), 1, True, False),  # R·S = 49 > 32
        ("conv2d", (64, 64, 3, 3), 64, False, False),  # depthwise
        ("conv2d", (64, 4096, 1, 1), 1, True, True),  # 1x1: C ≥ 4096
        ("linear", (64, 1024), 1, True, False),  # 1024 < 4096
        ("sparseconv3d", (64, 3, 3, 3, 32), 1, True, True),  # C·27 = 864
        ("sparseconv3d", (16, 3, 3, 3, 4), 1, True, False),
    ],
)
def test_nm_eligibility_rules(kind, shape, groups, valid, recommended):
    got_valid, got_rec, reason = nm_eligibility(kind, shape, groups)
    assert (got_valid, got_rec) == (valid, recommended), reason


def test_lamp_scores_and_erk_budget():
    w = torch.tensor([0.1, -3.0, 2.0, 0.5])
    scores = lamp_scores(w)
    sq = np.array([0.01, 9.0, 4.0, 0.25])
    np.testing.assert_allclose(scores, [0.01 / sq.sum(), 1.0, 4.0 / 13.0, 0.25 / (13.25)])
    shapes = [(8, 4, 3, 3), (64, 64, 3, 3), (10, 64)]
    costs = [float(np.prod(s)) for s in shapes]
    levels = erk_levels(shapes, costs, 0.3)
    kept = sum(c * (1 - lv) for c, lv in zip(costs, levels, strict=True))
    assert kept == pytest.approx(0.3 * sum(costs)) and levels[0] < levels[1]


class DownUp(nn.Module):
    """A strided sparse conv and its inverse (spconv SparseInverseConv3d), both prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.randn(8, 3, 3, 3, 4))
        self.up = nn.Parameter(torch.randn(4, 3, 3, 3, 8))

    def forward(self, frame):
        features, coords = frame
        geometry = ([3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1])
        ops = torch.ops.sparsefuse
        x, c = ops.sparse_conv3d(features, coords, self.down, None, [6, 6, 6], *geometry, False, "relu")
        return ops.sparse_inverse_conv3d(x, c, coords, self.up, None, [6, 6, 6], *geometry, "none")


def test_sparse_inverse_conv_is_a_sparseconv3d_layer_with_kernel_map_flops():
    from sparsefuse.plugins.sparse_conv3d import build_kernel_map
    from sparsefuse.plugins.sparse_inverse_conv3d import build_inverse_kernel_map

    keys = torch.randperm(216, generator=torch.Generator().manual_seed(0))[:40]
    coords = torch.stack([torch.zeros_like(keys), keys // 36, (keys // 6) % 6, keys % 6], 1).int()
    frame = (torch.randn(40, 4), coords)
    layers, _ = discover_layers(DownUp().eval(), [frame], lambda m, f: m(f))
    by = {layer.name: layer for layer in layers}
    assert by["up"].kind == by["down"].kind == "sparseconv3d" and by["up"].shape == (4, 3, 3, 3, 8)
    geometry = ([6, 6, 6], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1])
    down_map = build_kernel_map(coords, *geometry, False)
    up_map = build_inverse_kernel_map(down_map.out_coords, coords, *geometry)
    pairs = sum(int(i.numel()) for i in up_map.in_index)
    assert pairs == sum(int(i.numel()) for i in down_map.in_index)  # the inverse map mirrors the forward one
    assert by["up"].flops == 2 * pairs * 4 * 8 and by["down"].flops == 2 * pairs * 8 * 4
