"""A "bring your own model" reference: a CenterPoint-style LiDAR detector (tiny, CPU-fast).

``forward(points[P,4])``: spconv ``PointToVoxel`` held as a plain attribute -> mean VFE (sum over the
point slots / clamp(num_points, 1)) -> SparseEncoder-like backbone (SubMConv3d / SparseConv3d +
BatchNorm1d + ReLU in SparseSequential, sparse grid [41, 128, 128]) -> ``.dense()`` -> view to BEV
-> 2-D conv neck -> {"heatmap": class logits [1, 3, 32, 32], "reg": [1, 8, 32, 32]}.
Loadable by path: ``build(seed)``, ``make_frames(count, seed)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import spconv.pytorch as spconv
import torch
from spconv.pytorch.utils import PointToVoxel
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loaded by path: find the shared blocks
from building_blocks import init_weights, sparse_block  # noqa: E402

POINT_RANGE = [-25.6, -25.6, -5.0, 25.6, 25.6, 3.0]
VOXEL_SIZE = [0.4, 0.4, 0.2]  # -> voxel grid (Z, Y, X) = (40, 128, 128)
SPARSE_SHAPE = [41, 128, 128]  # SECOND / CenterPoint: one more z slice than the voxel grid
MAX_VOXELS, MAX_POINTS = 12000, 5
NUM_FEATURES = 4
NUM_CLASSES = 3


class SparseEncoder(nn.Module):
    """voxel features [N,4], coords [N,4] (b, z, y, x) -> BEV [1, 32*3, 32, 32]."""

    def __init__(self) -> None:
        super().__init__()
        self.sparse_shape = list(SPARSE_SHAPE)
        self.conv_input = sparse_block(NUM_FEATURES, 8, 3, padding=1, key="subm1")
        self.conv1 = spconv.SparseSequential(sparse_block(8, 8, 3, padding=1, key="subm1"))
        self.conv2 = spconv.SparseSequential(
            sparse_block(8, 16, 3, stride=2, padding=1, subm=False, key="spconv2"),  # (21, 64, 64)
            sparse_block(16, 16, 3, padding=1, key="subm2"),
        )
        self.conv3 = spconv.SparseSequential(
            sparse_block(16, 32, 3, stride=2, padding=1, subm=False, key="spconv3"),  # (11, 32, 32)
            sparse_block(32, 32, 3, padding=1, key="subm3"),
        )
        self.conv_out = sparse_block(
            32, 32, (3, 1, 1), stride=(3, 1, 1), subm=False, key="spconv_down"
        )  # (3, 32, 32)

    def forward(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        x = spconv.SparseConvTensor(features, coords, self.sparse_shape, 1)
        x = self.conv_out(self.conv3(self.conv2(self.conv1(self.conv_input(x)))))
        dense = x.dense()  # [1, C, D, H, W]
        n, c, d, h, w = dense.shape
        return dense.view(n, c * d, h, w)


class CenterPoint(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.voxel_generator = PointToVoxel(VOXEL_SIZE, POINT_RANGE, NUM_FEATURES, MAX_VOXELS, MAX_POINTS)
        self.backbone = SparseEncoder()
        self.neck = nn.Sequential(
            nn.Conv2d(96, 48, 3, padding=1, bias=False),
            nn.BatchNorm2d(48),
            nn.ReLU(),
            nn.Conv2d(48, 48, 3, padding=1, bias=False),
            nn.BatchNorm2d(48),
            nn.ReLU(),
        )
        self.heatmap = nn.Conv2d(48, NUM_CLASSES, 3, padding=1)
        self.reg = nn.Conv2d(48, 8, 3, padding=1)

    def voxelize(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean VFE: voxel features [V,4] and coords [V,4] (b, z, y, x)."""
        voxels, coords, num_points = self.voxel_generator(points)
        features = voxels.sum(dim=1) / num_points.clamp(min=1).to(voxels.dtype).view(-1, 1)
        return features, torch.cat([torch.zeros_like(coords[:, :1]), coords], dim=1)

    def forward(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        bev = self.neck(self.backbone(*self.voxelize(points)))
        return {"heatmap": self.heatmap(bev), "reg": self.reg(bev)}


def build(seed: int = 0) -> nn.Module:
    return init_weights(CenterPoint(), seed)


def make_frames(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` sweeps of 4000-7000 points (x, y, z, intensity): a ground plane, a few boxes (dense
    clusters, so voxels hold more than MAX_POINTS points), and some points outside the range."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        n = int(rng.integers(4000, 7000))
        ground = np.column_stack(
            [rng.uniform(-27, 27, n), rng.uniform(-27, 27, n), rng.normal(-1.8, 0.05, n), rng.random(n)]
        )
        centres = rng.uniform(-20, 20, size=(6, 2))
        m = n // 3
        pick = rng.integers(0, len(centres), m)
        boxes = np.column_stack(
            [
                centres[pick, 0] + rng.normal(0, 0.6, m),
                centres[pick, 1] + rng.normal(0, 0.6, m),
                rng.uniform(-1.8, 0.0, m),
                rng.random(m),
            ]
        )
        points = np.concatenate([ground, boxes])[rng.permutation(n + m)]
        frames.append({"points": points.astype(np.float32)})
    return frames


def build_with_spec(seed: int = 0):
    """The model and its spec, the way a deployment team hands it to sparsefuse: the heatmap's
    consumer applies a sigmoid, and box regression only matters where the heatmap fires."""
    from sparsefuse import InputSpec, ModelSpec, OutputSpec

    spec = ModelSpec(
        inputs=(InputSpec("points", "float32", 2, ((0, "num_points"),)),),
        outputs=(OutputSpec("heatmap", "sigmoid"), OutputSpec("reg", "weighted", weight_by="heatmap")),
        modalities=(("", "lidar"), ("heatmap", "head"), ("reg", "head")),
    )
    return build(seed), spec
