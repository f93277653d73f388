"""PyTorch reference for ``sparsefuse::scatter_dense`` (docs/design.md §4).

Scatters sparse voxel features into a dense BEV tensor with height folded into channels,
as SECOND / BEVFusion do with ``sparse.dense().view(B, C*Z, Y, X)``: output channel
``c*Z + z`` holds feature c of height slice z. Coordinates are unique by contract.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("sparsefuse::scatter_dense", mutates_args=())
def scatter_dense(
    features: torch.Tensor, coords: torch.Tensor, spatial_shape: list[int], batch_size: int
) -> torch.Tensor:
    """features[N,C], coords[N,4] i32 (b,z,y,x) -> dense[B, C*Z, Y, X]."""
    z_size, y_size, x_size = (int(s) for s in spatial_shape)
    channels = features.shape[1]
    dense = features.new_zeros(batch_size, z_size, y_size, x_size, channels)
    c = coords.to(torch.int64)
    dense[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = features
    return dense.permute(0, 4, 1, 2, 3).reshape(batch_size, channels * z_size, y_size, x_size).contiguous()


@scatter_dense.register_fake
def _scatter_dense_fake(features, coords, spatial_shape, batch_size):
    z_size, y_size, x_size = (int(s) for s in spatial_shape)
    return features.new_empty(batch_size, features.shape[1] * z_size, y_size, x_size)


def _scatter_dense_setup(ctx, inputs, output) -> None:
    features, coords, spatial_shape, _ = inputs
    ctx.save_for_backward(coords)
    ctx.channels = features.shape[1]
    ctx.spatial_shape = [int(s) for s in spatial_shape]


def _scatter_dense_backward(ctx, grad_dense):
    """d dense / d features: gather the dense gradient at each voxel (coords are unique)."""
    (coords,) = ctx.saved_tensors
    z, y, x = ctx.spatial_shape
    g = grad_dense.reshape(grad_dense.shape[0], ctx.channels, z, y, x).permute(0, 2, 3, 4, 1)
    c = coords.long()
    return g[c[:, 0], c[:, 1], c[:, 2], c[:, 3]], None, None, None


scatter_dense.register_autograd(_scatter_dense_backward, setup_context=_scatter_dense_setup)
