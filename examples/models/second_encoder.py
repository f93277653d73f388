"""A "bring your own model" reference: an mmdet3d ``SparseEncoder``-style spconv 2.x backbone.

Voxels [N, C] at (b, z, y, x) -> SubM input conv -> 4 stages (stages 2-4 open with a strided
SparseConv3d, mixed paddings) of SubM blocks -> a (3,1,1)/(2,1,1) output conv -> ``.dense()``
-> BEV features [1, C*D, H, W]. Every conv is conv -> BatchNorm1d -> ReLU in a SparseSequential.
Small channels and a [41, 128, 128] grid keep tests fast. Loadable by path: ``build``, ``make_frames``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import spconv.pytorch as spconv
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loaded by path: find the shared blocks
from building_blocks import init_weights, random_voxel_frames, sparse_block  # noqa: E402

SPARSE_SHAPE = (41, 128, 128)  # (Z, Y, X)
IN_CHANNELS = 4
BASE_CHANNELS = 8
OUT_CHANNELS = 32
STAGE_CHANNELS = ((8,), (16, 16, 16), (32, 32, 32), (32, 32, 32))
# per stage, per block; stages > 0 open with a stride-2 conv that uses the block's padding
STAGE_PADDINGS = ((1,), (1, 1, 1), (1, 1, 1), ((0, 1, 1), 1, 1))


class SparseEncoder(nn.Module):
    """voxel_features [N,4] f32, voxel_coords [N,4] i32 (b,z,y,x) -> BEV [1, 64, 16, 16]."""

    def __init__(self) -> None:
        super().__init__()
        self.sparse_shape = list(SPARSE_SHAPE)
        self.conv_input = sparse_block(IN_CHANNELS, BASE_CHANNELS, 3, padding=1, key="subm1")
        stages = []
        c_in = BASE_CHANNELS
        for i, (channels, paddings) in enumerate(zip(STAGE_CHANNELS, STAGE_PADDINGS, strict=True)):
            blocks = []
            for j, (c_out, padding) in enumerate(zip(channels, paddings, strict=True)):
                if i > 0 and j == 0:
                    blocks.append(sparse_block(c_in, c_out, 3, stride=2, padding=padding, subm=False,
                                         key=f"spconv{i + 1}"))
                else:
                    blocks.append(sparse_block(c_in, c_out, 3, padding=padding, key=f"subm{i + 1}"))
                c_in = c_out
            stages.append(spconv.SparseSequential(*blocks))
        self.encoder_layers = spconv.SparseSequential(*stages)
        self.conv_out = sparse_block(c_in, OUT_CHANNELS, (3, 1, 1), stride=(2, 1, 1), padding=0, subm=False,
                               key="spconv_down2")

    def forward(self, voxel_features: torch.Tensor, voxel_coords: torch.Tensor) -> torch.Tensor:
        x = spconv.SparseConvTensor(voxel_features, voxel_coords, self.sparse_shape, 1)
        x = self.conv_input(x)
        x = self.encoder_layers(x)
        out = self.conv_out(x)
        dense = out.dense()
        n, c, d, h, w = dense.shape
        return dense.view(n, c * d, h, w)


def build(seed: int = 0) -> nn.Module:
    return init_weights(SparseEncoder(), seed)


def make_frames(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` frames, 900-1500 voxels each (the count varies across frames)."""
    return random_voxel_frames(count, seed, (900, 1500), SPARSE_SHAPE, IN_CHANNELS)
