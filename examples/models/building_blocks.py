"""Shared building blocks of the reference user models in this folder: spconv conv -> BatchNorm1d ->
ReLU blocks, deterministic weights with non-trivial BatchNorm statistics (so BatchNorm folding is
really exercised), and random voxel frames. Plain spconv 2.x and torch, as a user would write them.
"""

from __future__ import annotations

import numpy as np
import spconv.pytorch as spconv
import torch
from torch import nn


def sparse_block(c_in: int, c_out: int, kernel, stride=1, padding=0, subm: bool = True,
                 key: str | None = None) -> spconv.SparseSequential:
    """conv -> BatchNorm1d -> ReLU (mmdet3d's make_sparse_convmodule / OpenPCDet's post_act_block):
    a SubMConv3d, or a strided SparseConv3d with ``subm=False``."""
    if subm:
        conv = spconv.SubMConv3d(c_in, c_out, kernel, padding=padding, bias=False, indice_key=key)
    else:
        conv = spconv.SparseConv3d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False,
                                   indice_key=key)
    return spconv.SparseSequential(conv, nn.BatchNorm1d(c_out, eps=1e-3, momentum=0.01), nn.ReLU())


def init_weights(model: nn.Module, seed: int) -> nn.Module:
    """Deterministic He-scaled weights (dense and sparse convs, linears), small random biases, and
    BatchNorm affine parameters and running statistics away from identity. Returns it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=gen))
                module.bias.copy_(torch.randn(c, generator=gen) * 0.2)
                module.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                module.running_var.copy_(0.5 + torch.rand(c, generator=gen) * 1.5)
            elif isinstance(weight, torch.Tensor) and weight.dim() > 1:
                fan_in = weight[0].numel()  # spconv weights are [Cout, kz, ky, kx, Cin]
                weight.copy_(torch.randn(weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    return model.eval()


def random_voxels(rng: np.random.Generator, count: int, shape: tuple[int, int, int], channels: int
                  ) -> dict[str, np.ndarray]:
    """``count`` unique voxels of batch 0 on a wavy ground surface plus a few upright objects
    (so submanifold neighbourhoods are populated), random features. Keys: the backbones' forward
    argument names (voxel_features [N,C] f32, voxel_coords [N,4] i32 (b, z, y, x))."""
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


def random_voxel_frames(count: int, seed: int, sizes: tuple[int, int], shape: tuple[int, int, int],
                        channels: int) -> list[dict[str, np.ndarray]]:
    """``count`` frames of :func:`random_voxels` whose voxel counts vary in ``sizes`` [lo, hi)."""
    rng = np.random.default_rng(seed)
    return [random_voxels(rng, int(rng.integers(*sizes)), shape, channels) for _ in range(count)]
