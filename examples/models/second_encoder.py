"""A "bring your own model" reference: an mmdet3d ``SparseEncoder``-style spconv 2.x backbone.

Voxels [N, C] at (b, z, y, x) -> SubM input conv -> 4 stages (stages 2-4 open with a strided
SparseConv3d, mixed paddings) of SubM blocks -> a (3,1,1)/(2,1,1) output conv -> ``.dense()``
-> BEV features [1, C*D, H, W]. Every conv is conv -> BatchNorm1d -> ReLU in a SparseSequential.
Small channels and a [41, 128, 128] grid keep tests fast. Loadable by path: ``build``, ``make_frames``.
"""

from __future__ import annotations

import numpy as np
import spconv.pytorch as spconv
import torch
from torch import nn

SPARSE_SHAPE = (41, 128, 128)  # (Z, Y, X)
IN_CHANNELS = 4
BASE_CHANNELS = 8
OUT_CHANNELS = 32
STAGE_CHANNELS = ((8,), (16, 16, 16), (32, 32, 32), (32, 32, 32))
# per stage, per block; stages > 0 open with a stride-2 conv that uses the block's padding
STAGE_PADDINGS = ((1,), (1, 1, 1), (1, 1, 1), ((0, 1, 1), 1, 1))


def _block(c_in: int, c_out: int, kernel, stride=1, padding=0, subm: bool = True,
           indice_key: str | None = None) -> spconv.SparseSequential:
    """conv -> BN -> ReLU, the mmdet3d ``make_sparse_convmodule`` shape."""
    conv_type = spconv.SubMConv3d if subm else spconv.SparseConv3d
    conv = conv_type(c_in, c_out, kernel, stride=stride, padding=padding, bias=False, indice_key=indice_key)
    bn = nn.BatchNorm1d(c_out, eps=1e-3, momentum=0.01)
    return spconv.SparseSequential(conv, bn, nn.ReLU(inplace=True))


class SparseEncoder(nn.Module):
    """voxel_features [N,4] f32, voxel_coords [N,4] i32 (b,z,y,x) -> BEV [1, 64, 16, 16]."""

    def __init__(self) -> None:
        super().__init__()
        self.sparse_shape = list(SPARSE_SHAPE)
        self.conv_input = _block(IN_CHANNELS, BASE_CHANNELS, 3, padding=1, indice_key="subm1")
        stages = []
        c_in = BASE_CHANNELS
        for i, (channels, paddings) in enumerate(zip(STAGE_CHANNELS, STAGE_PADDINGS, strict=True)):
            blocks = []
            for j, (c_out, padding) in enumerate(zip(channels, paddings, strict=True)):
                if i > 0 and j == 0:
                    blocks.append(_block(c_in, c_out, 3, stride=2, padding=padding, subm=False,
                                         indice_key=f"spconv{i + 1}"))
                else:
                    blocks.append(_block(c_in, c_out, 3, padding=padding, indice_key=f"subm{i + 1}"))
                c_in = c_out
            stages.append(spconv.SparseSequential(*blocks))
        self.encoder_layers = spconv.SparseSequential(*stages)
        self.conv_out = _block(c_in, OUT_CHANNELS, (3, 1, 1), stride=(2, 1, 1), padding=0, subm=False,
                               indice_key="spconv_down2")

    def forward(self, voxel_features: torch.Tensor, voxel_coords: torch.Tensor) -> torch.Tensor:
        x = spconv.SparseConvTensor(voxel_features, voxel_coords, self.sparse_shape, 1)
        x = self.conv_input(x)
        x = self.encoder_layers(x)
        out = self.conv_out(x)
        dense = out.dense()
        n, c, d, h, w = dense.shape
        return dense.view(n, c * d, h, w)


def init_weights(model: nn.Module, seed: int) -> nn.Module:
    """Deterministic conv weights (He-scaled) and non-trivial BatchNorm affine params and running stats."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, spconv.conv.SparseConvolution):
                fan_in = module.in_channels * int(np.prod(module.kernel_size))
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
            elif isinstance(module, nn.BatchNorm1d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=gen))
                module.bias.copy_(torch.randn(c, generator=gen) * 0.2)
                module.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                module.running_var.copy_(0.5 + torch.rand(c, generator=gen) * 1.5)
    return model.eval()


def build(seed: int = 0) -> nn.Module:
    return init_weights(SparseEncoder(), seed)


def random_voxels(rng: np.random.Generator, count: int, shape: tuple[int, int, int], channels: int
                  ) -> dict[str, np.ndarray]:
    """``count`` unique voxels of batch 0 on a wavy ground surface plus a few upright objects
    (so submanifold neighbourhoods are populated), random features. Keys: the forward's names."""
    z_size, y_size, x_size = shape
    xy = rng.integers(0, [y_size, x_size], size=(count * 2, 2))
    ground = (z_size // 4 + 2 * np.sin(xy[:, 1] / 9.0) + rng.integers(-1, 2, size=len(xy))).astype(np.int64)
    lifted = rng.random(len(xy)) < 0.25  # object voxels higher up
    z = np.clip(ground + lifted * rng.integers(1, z_size // 2, size=len(xy)), 0, z_size - 1)
    zyx = np.unique(np.stack([z, xy[:, 0], xy[:, 1]], axis=1), axis=0)
    zyx = zyx[rng.permutation(len(zyx))[:count]]  # unsorted, as a voxelizer hands them over
    coords = np.concatenate([np.zeros((len(zyx), 1), np.int64), zyx], axis=1).astype(np.int32)
    features = rng.normal(size=(len(zyx), channels)).astype(np.float32)
    return {"voxel_features": features, "voxel_coords": coords}


def make_frames(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` frames, 900-1500 voxels each (the count varies across frames)."""
    rng = np.random.default_rng(seed)
    return [random_voxels(rng, int(rng.integers(900, 1500)), SPARSE_SHAPE, IN_CHANNELS) for _ in range(count)]
