"""BEVPool ranks and intervals from the per-frustum-point BEV cell (BEVFusion precomputation,
BEVPoolv2 interface). Pure numpy: it runs once, when a model is built for a rig.

Frustum point (n, d, h, w) of a camera feature map with ``Ncam`` cameras, ``D`` depth bins and
``H x W`` feature pixels reads
- its depth weight at ``depth.flat[((n*D + d)*H + h)*W + w]`` (``depth[Ncam,D,H,W]``);
- its feature row at ``feat.reshape(-1, C)[(n*H + h)*W + w]`` (``feat[Ncam,H,W,C]``);
and adds into BEV cell ``ranks_bev`` = ``(b*Y + y)*X + x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BevPoolRanks:
    """The five int32 index arrays of the BEVPool op; P kept points, I non-empty cells."""

    ranks_depth: np.ndarray  # [P]
    ranks_feat: np.ndarray  # [P]
    ranks_bev: np.ndarray  # [P], ascending
    interval_starts: np.ndarray  # [I]
    interval_lengths: np.ndarray  # [I]

    @property
    def num_points(self) -> int:
        return int(self.ranks_bev.shape[0])

    @property
    def num_intervals(self) -> int:
        return int(self.interval_starts.shape[0])


def precompute_ranks(bev_cell: np.ndarray) -> BevPoolRanks:
    """Ranks and intervals from ``bev_cell[Ncam,D,H,W]`` (integer linear BEV cell, -1 = outside).

    Points are sorted by BEV cell with a stable sort, so within a cell they keep frustum order
    (deterministic sums). Each run of equal ``ranks_bev`` is one interval.
    """
    cells = np.asarray(bev_cell)
    if cells.ndim != 4:
        raise ValueError(f"bev_cell must be [Ncam,D,H,W], got shape {cells.shape}")
    if not np.issubdtype(cells.dtype, np.integer):
        raise ValueError(f"bev_cell must be integer, got {cells.dtype}")
    _, n_depth, height, width = cells.shape
    flat = cells.reshape(-1).astype(np.int64)
    if flat.size and flat.max() >= np.iinfo(np.int32).max:
        raise ValueError("BEV cell index does not fit int32")
    kept = np.flatnonzero(flat >= 0)
    order = kept[np.argsort(flat[kept], kind="stable")]
    ranks_bev = flat[order]
    # ranks_feat drops the depth axis from the (n, d, h, w) flat index.
    pixel = order % (height * width)
    camera = order // (n_depth * height * width)
    ranks_feat = camera * (height * width) + pixel
    if ranks_bev.size:
        boundary = np.flatnonzero(np.diff(ranks_bev)) + 1
        starts = np.concatenate([[0], boundary])
        lengths = np.diff(np.concatenate([starts, [ranks_bev.size]]))
    else:
        starts = lengths = np.zeros(0, dtype=np.int64)
    return BevPoolRanks(
        ranks_depth=order.astype(np.int32),
        ranks_feat=ranks_feat.astype(np.int32),
        ranks_bev=ranks_bev.astype(np.int32),
        interval_starts=starts.astype(np.int32),
        interval_lengths=lengths.astype(np.int32),
    )
