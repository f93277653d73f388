"""PyTorch reference for ``sparsefuse::voxelize`` / ``sparsefuse::voxelize_with_counts`` (docs/design.md §4).

Semantics, shared by the ONNX function and the CUDA kernel:
- grid shape (Z, Y, X) = round((max - min) / voxel_size) per axis;
- voxel index = floor((p - min) / voxel_size) computed in float32 with a true division
  (no reciprocal multiply), so every implementation bins a point identically;
- points whose index falls outside the grid are dropped;
- ``order``: "key" orders voxels by linear key ((b*Z + z)*Y + y)*X + x with b = 0 (one sweep per
  call); "arrival" orders them by their first point in input order (spconv ``PointToVoxel``,
  mmcv hard voxelization);
- only the first ``max_voxels`` voxels in that order are kept (points of later voxels are dropped);
- ``max_points_per_voxel`` P > 0: only the first P points (input order) of each voxel count;
  0 = all of them;
- ``reduce``: "mean" averages every feature column over the voxel's counted points
  (voxel_features [V,F]); "none" lists them, zero-padded, in input order (voxel_features
  [V,P,F], needs P > 0; hard voxelization);
- ``voxelize_with_counts`` also returns num_points_per_voxel [V] int32 (counted points, <= P).

The defaults (P = 0, "mean", "key") are the original op.
"""

from __future__ import annotations

import torch

from sparsefuse.plugins.common import decode_key

REDUCE_MODES = ("mean", "none")
ORDER_MODES = ("key", "arrival")


def grid_shape(point_range: list[float], voxel_size: list[float]) -> tuple[int, int, int]:
    """(Z, Y, X) voxel counts for point_range [xmin,ymin,zmin,xmax,ymax,zmax] and voxel_size [vx,vy,vz]."""
    nx, ny, nz = (round((point_range[i + 3] - point_range[i]) / voxel_size[i]) for i in range(3))
    return int(nz), int(ny), int(nx)


def check_modes(max_points_per_voxel: int, reduce: str, order: str) -> None:
    """ValueError unless the attributes are a valid combination."""
    if reduce not in REDUCE_MODES:
        raise ValueError(f"reduce must be one of {REDUCE_MODES}, got {reduce!r}")
    if order not in ORDER_MODES:
        raise ValueError(f"order must be one of {ORDER_MODES}, got {order!r}")
    if max_points_per_voxel < 0:
        raise ValueError(f"max_points_per_voxel must be >= 0, got {max_points_per_voxel}")
    if reduce == "none" and max_points_per_voxel == 0:
        raise ValueError('reduce="none" needs max_points_per_voxel > 0 (the padded point-list length)')


def _voxel_ids(key: torch.Tensor, order: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique keys [U] in ``order`` and each point's voxel id [Q] (index into them)."""
    uniq, inverse = torch.unique(key, sorted=True, return_inverse=True)
    if order == "key" or uniq.numel() == 0:
        return uniq, inverse
    positions = torch.arange(key.numel(), device=key.device)
    first = torch.full_like(uniq, key.numel()).scatter_reduce_(0, inverse, positions, "amin")
    arrival = torch.argsort(first)  # sorted-unique index, by first point
    rank = torch.empty_like(arrival)
    rank[arrival] = torch.arange(arrival.numel(), device=key.device)
    return uniq[arrival], rank[inverse]


def _rank_in_voxel(voxel: torch.Tensor, num_voxels: int) -> torch.Tensor:
    """Per point: how many earlier points (input order) share its voxel. voxel [Q] int64."""
    order = torch.argsort(voxel, stable=True)
    counts = torch.bincount(voxel, minlength=num_voxels)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(voxel)
    rank[order] = torch.arange(voxel.numel(), device=voxel.device) - starts[voxel[order]]
    return rank


def voxelize_impl(
    points: torch.Tensor,
    point_range: list[float],
    voxel_size: list[float],
    max_voxels: int,
    max_points_per_voxel: int = 0,
    reduce: str = "mean",
    order: str = "key",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """points[P,F] -> (voxel_features [V,F] or [V,Pmax,F], voxel_coords [V,4] i32, num_voxels [] i32,
    num_points_per_voxel [V] i32)."""
    check_modes(max_points_per_voxel, reduce, order)
    z_size, y_size, x_size = grid_shape(point_range, voxel_size)
    dev = points.device
    lo = torch.tensor(point_range[:3], dtype=torch.float32, device=dev)
    size = torch.tensor(voxel_size, dtype=torch.float32, device=dev)
    idx = torch.floor((points[:, :3].to(torch.float32) - lo) / size).to(torch.int64)  # (x, y, z)
    upper = torch.tensor([x_size, y_size, z_size], device=dev)
    inside = ((idx >= 0) & (idx < upper)).all(dim=1)
    idx, feats = idx[inside], points[inside]
    key = (idx[:, 2] * y_size + idx[:, 1]) * x_size + idx[:, 0]
    uniq, voxel = _voxel_ids(key, order)
    num = min(int(uniq.numel()), int(max_voxels))
    keep = voxel < num
    if max_points_per_voxel > 0:
        rank = _rank_in_voxel(voxel, int(uniq.numel()))
        keep &= rank < max_points_per_voxel
    counts = torch.bincount(voxel[keep], minlength=num)[:num]
    coords = decode_key(uniq[:num], (z_size, y_size, x_size))
    if reduce == "none":
        out = feats.new_zeros(num, max_points_per_voxel, feats.shape[1])
        out[voxel[keep], rank[keep]] = feats[keep]
    else:
        sums = feats.new_zeros(num, feats.shape[1]).index_add_(0, voxel[keep], feats[keep])
        out = sums / counts.to(feats.dtype).clamp(min=1)[:, None]
    num_t = torch.tensor(num, dtype=torch.int32, device=dev)
    return out, coords, num_t, counts.to(torch.int32)


@torch.library.custom_op("sparsefuse::voxelize", mutates_args=())
def voxelize(
    points: torch.Tensor,
    point_range: list[float],
    voxel_size: list[float],
    max_voxels: int,
    max_points_per_voxel: int = 0,
    reduce: str = "mean",
    order: str = "key",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """points[P,F] f32 (x, y, z, ...) -> voxel_features[V,F] (reduce="mean") or [V,Pmax,F] ("none"),
    voxel_coords[V,4] i32 (b,z,y,x), num_voxels[] i32."""
    out = voxelize_impl(points, point_range, voxel_size, max_voxels, max_points_per_voxel, reduce, order)
    return out[0], out[1], out[2]


@torch.library.custom_op("sparsefuse::voxelize_with_counts", mutates_args=())
def voxelize_with_counts(
    points: torch.Tensor,
    point_range: list[float],
    voxel_size: list[float],
    max_voxels: int,
    max_points_per_voxel: int = 0,
    reduce: str = "mean",
    order: str = "key",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`voxelize` plus num_points_per_voxel[V] i32 (the ONNX node's optional 4th output)."""
    return voxelize_impl(points, point_range, voxel_size, max_voxels, max_points_per_voxel, reduce, order)


def _fake_outputs(points, max_voxels, max_points_per_voxel, reduce, order):
    check_modes(int(max_points_per_voxel), reduce, order)
    num = torch.library.get_ctx().new_dynamic_size(min=0, max=int(max_voxels))
    features = (
        points.new_empty(num, int(max_points_per_voxel), points.shape[1])
        if reduce == "none"
        else points.new_empty(num, points.shape[1])
    )
    return (
        features,
        points.new_empty(num, 4, dtype=torch.int32),
        points.new_empty((), dtype=torch.int32),
        points.new_empty(num, dtype=torch.int32),
    )


@voxelize.register_fake
def _voxelize_fake(points, point_range, voxel_size, max_voxels, max_points_per_voxel=0, reduce="mean",
                   order="key"):
    return _fake_outputs(points, max_voxels, max_points_per_voxel, reduce, order)[:3]


@voxelize_with_counts.register_fake
def _voxelize_with_counts_fake(points, point_range, voxel_size, max_voxels, max_points_per_voxel=0,
                               reduce="mean", order="key"):
    return _fake_outputs(points, max_voxels, max_points_per_voxel, reduce, order)
