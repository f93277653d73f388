"""PyTorch reference for ``sparsefuse::bev_pool`` (docs/design.md §4, BEVPoolv2 interface).

bev[b, c, y, x] = sum over frustum points p with ranks_bev[p] == (b*Y + y)*X + x of
depth.flat[ranks_depth[p]] * feat.reshape(-1, C)[ranks_feat[p], c].

The points are sorted by ranks_bev; interval_starts / interval_lengths delimit the runs of
equal ranks_bev (one run per non-empty BEV cell). The reference does not need the intervals,
but the CUDA kernel reduces one interval per thread without atomics.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("sparsefuse::bev_pool", mutates_args=())
def bev_pool(
    depth: torch.Tensor,
    feat: torch.Tensor,
    ranks_depth: torch.Tensor,
    ranks_feat: torch.Tensor,
    ranks_bev: torch.Tensor,
    interval_starts: torch.Tensor,
    interval_lengths: torch.Tensor,
    bev_shape: list[int],
) -> torch.Tensor:
    """depth[Ncam,D,H,W], feat[Ncam,H,W,C], ranks*[P] i32, intervals[I] i32
    -> bev[B,C,Y,X]."""
    batch, y_size, x_size = (int(s) for s in bev_shape)
    channels = feat.shape[-1]
    weights = depth.reshape(-1)[ranks_depth.to(torch.int64)]
    values = feat.reshape(-1, channels)[ranks_feat.to(torch.int64)]
    bev = feat.new_zeros(batch * y_size * x_size, channels)
    bev.index_add_(0, ranks_bev.to(torch.int64), weights[:, None].to(feat.dtype) * values)
    return bev.reshape(batch, y_size, x_size, channels).permute(0, 3, 1, 2).contiguous()


@bev_pool.register_fake
def _bev_pool_fake(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths,
                   bev_shape):
    batch, y_size, x_size = (int(s) for s in bev_shape)
    return feat.new_empty(batch, feat.shape[-1], y_size, x_size)


def _bev_pool_setup(ctx, inputs, output) -> None:
    depth, feat, ranks_depth, ranks_feat, ranks_bev = inputs[:5]
    ctx.save_for_backward(depth, feat, ranks_depth, ranks_feat, ranks_bev)


def _bev_pool_backward(ctx, grad_bev):
    """d bev / d depth and d feat: gather the BEV gradient per frustum point, scatter it back."""
    depth, feat, ranks_depth, ranks_feat, ranks_bev = ctx.saved_tensors
    channels = feat.shape[-1]
    g = grad_bev.permute(0, 2, 3, 1).reshape(-1, channels)[ranks_bev.long()]  # [P, C]
    values = feat.reshape(-1, channels)[ranks_feat.long()]
    weights = depth.reshape(-1)[ranks_depth.long()]
    grad_depth = depth.new_zeros(depth.numel()).index_add_(0, ranks_depth.long(), (g * values).sum(1))
    grad_feat = feat.new_zeros(feat.reshape(-1, channels).shape).index_add_(
        0, ranks_feat.long(), g * weights[:, None]
    )
    return grad_depth.view_as(depth), grad_feat.view_as(feat), None, None, None, None, None, None


bev_pool.register_autograd(_bev_pool_backward, setup_context=_bev_pool_setup)
