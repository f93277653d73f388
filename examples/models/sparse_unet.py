"""A "bring your own model" reference: a small sparse UNet (PartA2 ``UNetV2``-style) on spconv 2.x.

Encoder: SubM input conv, then two levels that open with a strided SparseConv3d (``spconv2``,
``spconv3``). Decoder: at each level a lateral SubM conv on the skip, features concatenated
(level 3) or added (level 1) with the path from below, and ``SparseInverseConv3d`` s with the
encoder's keys that bring features back to exactly the encoder's sites. Returns per-voxel
features [N, C] at the input voxels, in input order. Loadable by path: ``build``, ``make_frames``.
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

SPARSE_SHAPE = (21, 64, 64)  # (Z, Y, X)
IN_CHANNELS = 4
CHANNELS = (8, 16, 32)
OUT_CHANNELS = 8


def _block(c_in: int, c_out: int, kernel, conv_type: str, indice_key: str, stride=1, padding=0
           ) -> spconv.SparseSequential:
    """conv -> BN -> ReLU; conv_type "subm", "spconv" (strided) or "inverseconv"."""
    if conv_type == "subm":
        conv = spconv.SubMConv3d(c_in, c_out, kernel, padding=padding, bias=False, indice_key=indice_key)
    elif conv_type == "spconv":
        conv = spconv.SparseConv3d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False,
                                   indice_key=indice_key)
    else:
        conv = spconv.SparseInverseConv3d(c_in, c_out, kernel, indice_key=indice_key, bias=False)
    return spconv.SparseSequential(conv, nn.BatchNorm1d(c_out, eps=1e-3, momentum=0.01), nn.ReLU())


class SparseUNet(nn.Module):
    """voxel_features [N,4] f32, voxel_coords [N,4] i32 (b,z,y,x) -> features [N, 8] at the input sites."""

    def __init__(self) -> None:
        super().__init__()
        self.sparse_shape = list(SPARSE_SHAPE)
        c1, c2, c3 = CHANNELS
        self.conv_input = _block(IN_CHANNELS, c1, 3, "subm", "subm1", padding=1)
        self.conv1 = _block(c1, c1, 3, "subm", "subm1", padding=1)
        self.conv2 = spconv.SparseSequential(
            _block(c1, c2, 3, "spconv", "spconv2", stride=2, padding=1),
            _block(c2, c2, 3, "subm", "subm2", padding=1))
        self.conv3 = spconv.SparseSequential(
            _block(c2, c3, 3, "spconv", "spconv3", stride=2, padding=1),
            _block(c3, c3, 3, "subm", "subm3", padding=1))
        # decoder, level 3: lateral + concat, then back up to level 2's sites
        self.conv_t3 = _block(c3, c3, 3, "subm", "subm3", padding=1)
        self.conv_m3 = _block(2 * c3, c3, 3, "subm", "subm3", padding=1)
        self.inv_conv3 = _block(c3, c2, 3, "inverseconv", "spconv3")
        # level 2: lateral + concat, reduce, back up to level 1's sites
        self.conv_t2 = _block(c2, c2, 3, "subm", "subm2", padding=1)
        self.conv_m2 = _block(2 * c2, c2, 3, "subm", "subm2", padding=1)
        self.inv_conv2 = _block(c2, c1, 3, "inverseconv", "spconv2")
        # level 1: residual add with the skip, then a plain SubM head (no BN)
        self.conv_m1 = _block(c1, c1, 3, "subm", "subm1", padding=1)
        self.head = spconv.SubMConv3d(c1, OUT_CHANNELS, 1, bias=False, indice_key="subm1")

    @staticmethod
    def _concat(a: spconv.SparseConvTensor, b: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        return a.replace_feature(torch.cat([a.features, b.features], dim=1))

    def forward(self, voxel_features: torch.Tensor, voxel_coords: torch.Tensor) -> torch.Tensor:
        x = spconv.SparseConvTensor(voxel_features, voxel_coords, self.sparse_shape, 1)
        x1 = self.conv1(self.conv_input(x))
        x2 = self.conv2(x1)
        x3 = self.conv3(x2)
        up = self.conv_m3(self._concat(x3, self.conv_t3(x3)))
        up = self.inv_conv3(up)
        up = self.conv_m2(self._concat(self.conv_t2(x2), up))
        up = self.inv_conv2(up)
        up = self.conv_m1(up.replace_feature(up.features + x1.features))
        return self.head(up).features


def build(seed: int = 0) -> nn.Module:
    return init_weights(SparseUNet(), seed)


def make_frames(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` frames, 600-1000 voxels each (the count varies across frames)."""
    return random_voxel_frames(count, seed, (600, 1000), SPARSE_SHAPE, IN_CHANNELS)
