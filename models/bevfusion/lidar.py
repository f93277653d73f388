"""LiDAR branch: Voxelize -> SECOND/VoxelNet-like sparse 3D encoder -> ScatterDense -> 2D conv.

Every sparse layer calls ``torch.ops.sparsefuse.sparse_conv3d`` with bias + ReLU fused through
the op's ``activation`` attribute; there is no BatchNorm in the sparse branch, so a weight is
exactly the ONNX initializer of the same name (the sparsity work depends on this).
"""

from __future__ import annotations

import math

import torch
from torch import nn

import sparsefuse.plugins  # noqa: F401  (registers torch.ops.sparsefuse.*)
from sparsefuse.errors import SparsefuseError
from sparsefuse.plugins.sparse_conv3d import output_spatial_shape

Triple = tuple[int, int, int]


def _triple(v: int | Triple) -> Triple:
    return (v, v, v) if isinstance(v, int) else tuple(int(x) for x in v)  # type: ignore[return-value]


class SparseConv3d(nn.Module):
    """One spconv-2.x-style sparse conv: ``weight[Cout,kz,ky,kx,Cin]``, ``bias[Cout]``.

    The input grid ``spatial_shape`` (Z, Y, X) is fixed at construction, so ``out_shape`` is
    static even though the number of active sites is data dependent.
    """

    def __init__(
        self, in_channels: int, out_channels: int, spatial_shape: Triple, kernel_size: int | Triple = 3,
        stride: int | Triple = 1, padding: int | Triple = 0, subm: bool = False, activation: str = "relu",
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.spatial_shape = _triple(spatial_shape)
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride)
        self.padding = _triple(padding)
        self.dilation: Triple = (1, 1, 1)
        self.subm = subm
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(out_channels, *self.kernel_size, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.out_shape: Triple = tuple(output_spatial_shape(  # type: ignore[assignment]
            list(self.spatial_shape), list(self.kernel_size), list(self.stride), list(self.padding),
            list(self.dilation), subm))

    def forward(self, features: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features[N,Cin], coords[N,4] i32 -> features[M,Cout], coords[M,4] i32."""
        return torch.ops.sparsefuse.sparse_conv3d(
            features, coords, self.weight, self.bias, list(self.spatial_shape), list(self.kernel_size),
            list(self.stride), list(self.padding), list(self.dilation), self.subm, self.activation)

    def reset_parameters(self) -> None:
        fan_in = self.in_channels * math.prod(self.kernel_size)
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / fan_in))
        nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        kind = "subm" if self.subm else f"stride={self.stride}, padding={self.padding}"
        return (f"{self.in_channels}, {self.out_channels}, kernel={self.kernel_size}, {kind}, "
                f"in_shape={self.spatial_shape}, out_shape={self.out_shape}, act={self.activation}")


class SparseSequential(nn.Sequential):
    """Chains sparse convs over (features, coords)."""

    def forward(self, features: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self:
            features, coords = layer(features, coords)
        return features, coords


class SparseEncoder(nn.Module):
    """SECOND-like encoder over a (Z, Y, X) grid.

    ``conv_input`` (subm, 3x3x3) -> per stage: [stride-2 3x3x3 down conv, except stage 0] and
    ``blocks_per_stage`` subm 3x3x3 convs -> ``conv_out`` (kernel (3,1,1), stride (2,1,1)) that
    squeezes height, as in BEVFusion's SparseEncoder. XY shrinks by 2**(len(channels) - 1).
    """

    def __init__(self, in_channels: int, spatial_shape: Triple, channels: tuple[int, ...],
                 blocks_per_stage: int, out_channels: int) -> None:
        super().__init__()
        shape = _triple(spatial_shape)
        self.conv_input = SparseConv3d(in_channels, channels[0], shape, 3, subm=True)
        stages = []
        prev = channels[0]
        for i, ch in enumerate(channels):
            layers: list[SparseConv3d] = []
            if i > 0:
                layers.append(SparseConv3d(prev, ch, shape, 3, stride=2, padding=1))
                shape = layers[-1].out_shape
            for _ in range(blocks_per_stage):
                layers.append(SparseConv3d(ch, ch, shape, 3, subm=True))
            stages.append(SparseSequential(*layers))
            prev = ch
        self.stages = nn.ModuleList(stages)
        self.conv_out = SparseConv3d(prev, out_channels, shape, (3, 1, 1), stride=(2, 1, 1), padding=0)
        self.out_shape: Triple = self.conv_out.out_shape
        if self.out_shape[0] < 1:
            raise SparsefuseError(
                f"voxel grid {spatial_shape} (Z, Y, X) is too flat for the sparse encoder's height reduction",
                "use a smaller z voxel size (at least 2 voxels over the point_range height)")

    def forward(self, features: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, coords = self.conv_input(features, coords)
        for stage in self.stages:
            features, coords = stage(features, coords)
        return self.conv_out(features, coords)


class LidarBranch(nn.Module):
    """points[P,4] (x, y, z, intensity) ego frame -> LiDAR BEV feature [1, C, Y, X]."""

    def __init__(self, point_range: tuple[float, ...], voxel_size: tuple[float, ...], max_voxels: int,
                 voxel_grid: Triple, channels: tuple[int, ...], blocks_per_stage: int,
                 encoder_out_channels: int, bev_channels: int) -> None:
        super().__init__()
        self.point_range = [float(v) for v in point_range]
        self.voxel_size = [float(v) for v in voxel_size]
        self.max_voxels = int(max_voxels)
        z, y, x = voxel_grid
        # One extra z slice, as BEVFusion / mmdet3d's sparse_shape (41 for 40 voxels of 0.2 m).
        self.sparse_shape: Triple = (z + 1, y, x)
        self.encoder = SparseEncoder(4, self.sparse_shape, channels, blocks_per_stage, encoder_out_channels)
        oz, self.grid_y, self.grid_x = self.encoder.out_shape
        self.bev_in_channels = encoder_out_channels * oz
        self.bev = nn.Sequential(nn.Conv2d(self.bev_in_channels, bev_channels, 3, padding=1), nn.ReLU())

    @property
    def bev_shape(self) -> tuple[int, int]:
        return self.grid_y, self.grid_x

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        voxel_features, voxel_coords, _ = torch.ops.sparsefuse.voxelize(
            points, self.point_range, self.voxel_size, self.max_voxels)
        features, coords = self.encoder(voxel_features, voxel_coords)
        dense = torch.ops.sparsefuse.scatter_dense(features, coords, list(self.encoder.out_shape), 1)
        return self.bev(dense)
