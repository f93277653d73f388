"""A "bring your own model" reference: an OpenPCDet ``VoxelResBackBone8x``-style residual backbone.

SubM input conv -> 4 levels (levels 2-4 open with a strided SparseConv3d, ``spconvN`` keys) of
two ``SparseBasicBlock`` s (subm conv-BN-ReLU-subm conv-BN + identity, ReLU; ``resN`` keys, BN and
ReLU called by the block's own forward, so they are NOT folded) -> (3,1,1)/(2,1,1) output conv
-> ``.dense()`` -> BEV [1, C*D, H, W]. Loadable by path: ``build``, ``make_frames``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import spconv.pytorch as spconv
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loaded by path: find the shared blocks
from building_blocks import init_weights, random_voxel_frames  # noqa: E402

SPARSE_SHAPE = (41, 96, 96)  # (Z, Y, X)
IN_CHANNELS = 4
CHANNELS = (8, 16, 24, 32)
OUT_CHANNELS = 32


def _bn(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


def _conv_block(c_in: int, c_out: int, kernel, stride=1, padding=0, conv_type: str = "subm",
                indice_key: str | None = None) -> spconv.SparseSequential:
    """OpenPCDet's ``post_act_block``: conv -> BN -> ReLU."""
    if conv_type == "subm":
        conv = spconv.SubMConv3d(c_in, c_out, kernel, padding=padding, bias=False, indice_key=indice_key)
    else:
        conv = spconv.SparseConv3d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False,
                                   indice_key=indice_key)
    return spconv.SparseSequential(conv, _bn(c_out), nn.ReLU())


class SparseBasicBlock(spconv.SparseModule):
    """Residual block over one site set: relu(bn2(conv2(relu(bn1(conv1(x))))) + x)."""

    def __init__(self, channels: int, indice_key: str) -> None:
        super().__init__()
        self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn1 = _bn(channels)
        self.relu = nn.ReLU()
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn2 = _bn(channels)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        identity = x
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        out = out.replace_feature(self.bn2(out.features))
        out = out.replace_feature(out.features + identity.features)
        return out.replace_feature(self.relu(out.features))


class VoxelResBackBone(nn.Module):
    """voxel_features [N,4] f32, voxel_coords [N,4] i32 (b,z,y,x) -> BEV [1, 64, 12, 12]."""

    def __init__(self) -> None:
        super().__init__()
        self.sparse_shape = list(SPARSE_SHAPE)
        c1, c2, c3, c4 = CHANNELS
        self.conv_input = _conv_block(IN_CHANNELS, c1, 3, padding=1, indice_key="subm1")
        self.conv1 = spconv.SparseSequential(SparseBasicBlock(c1, "res1"), SparseBasicBlock(c1, "res1"))
        self.conv2 = spconv.SparseSequential(
            _conv_block(c1, c2, 3, stride=2, padding=1, conv_type="spconv", indice_key="spconv2"),
            SparseBasicBlock(c2, "res2"), SparseBasicBlock(c2, "res2"))
        self.conv3 = spconv.SparseSequential(
            _conv_block(c2, c3, 3, stride=2, padding=1, conv_type="spconv", indice_key="spconv3"),
            SparseBasicBlock(c3, "res3"), SparseBasicBlock(c3, "res3"))
        self.conv4 = spconv.SparseSequential(
            _conv_block(c3, c4, 3, stride=2, padding=(0, 1, 1), conv_type="spconv", indice_key="spconv4"),
            SparseBasicBlock(c4, "res4"), SparseBasicBlock(c4, "res4"))
        self.conv_out = _conv_block(c4, OUT_CHANNELS, (3, 1, 1), stride=(2, 1, 1), padding=0,
                                    conv_type="spconv", indice_key="spconv_down2")

    def forward(self, voxel_features: torch.Tensor, voxel_coords: torch.Tensor) -> torch.Tensor:
        x = spconv.SparseConvTensor(voxel_features, voxel_coords, self.sparse_shape, 1)
        x = self.conv_input(x)
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        dense = self.conv_out(x).dense()
        n, c, d, h, w = dense.shape
        return dense.view(n, c * d, h, w)


def build(seed: int = 0) -> nn.Module:
    return init_weights(VoxelResBackBone(), seed)


def make_frames(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` frames, 700-1100 voxels each (the count varies across frames)."""
    return random_voxel_frames(count, seed, (700, 1100), SPARSE_SHAPE, IN_CHANNELS)
