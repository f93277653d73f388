"""PyTorch reference for ``sparsefuse::voxelize`` (DESIGN.md §4).

Semantics, shared by the ONNX function and the CUDA kernel:
- grid shape (Z, Y, X) = round((max - min) / voxel_size) per axis;
- voxel index = floor((p - min) / voxel_size) computed in float32 with a true division
  (no reciprocal multiply), so every implementation bins a point identically;
- points whose index falls outside the grid are dropped;
- voxels are ordered by linear key ((b*Z + z)*Y + y)*X + x with b = 0 (one sweep per call);
- only the first ``max_voxels`` voxels in that order are kept (points of later voxels are dropped);
- every feature column is averaged over the points of the voxel (reduce = mean).
"""

from __future__ import annotations

import torch

from sparsefuse.plugins.common import decode_key


def grid_shape(point_range: list[float], voxel_size: list[float]) -> tuple[int, int, int]:
    """(Z, Y, X) voxel counts for point_range [xmin,ymin,zmin,xmax,ymax,zmax] and voxel_size [vx,vy,vz]."""
    nx, ny, nz = (round((point_range[i + 3] - point_range[i]) / voxel_size[i]) for i in range(3))
    return int(nz), int(ny), int(nx)


@torch.library.custom_op("sparsefuse::voxelize", mutates_args=())
def voxelize(
    points: torch.Tensor, point_range: list[float], voxel_size: list[float], max_voxels: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """points[P,F] f32 (x, y, z, ...) -> voxel_features[V,F] f32, voxel_coords[V,4] i32 (b,z,y,x),
    num_voxels[] i32."""
    z_size, y_size, x_size = grid_shape(point_range, voxel_size)
    lo = torch.tensor(point_range[:3], dtype=torch.float32, device=points.device)
    size = torch.tensor(voxel_size, dtype=torch.float32, device=points.device)
    idx = torch.floor((points[:, :3].to(torch.float32) - lo) / size).to(torch.int64)  # (x, y, z)
    upper = torch.tensor([x_size, y_size, z_size], device=points.device)
    inside = ((idx >= 0) & (idx < upper)).all(dim=1)
    idx, feats = idx[inside], points[inside]
    key = (idx[:, 2] * y_size + idx[:, 1]) * x_size + idx[:, 0]
    uniq, inverse = torch.unique(key, sorted=True, return_inverse=True)
    num = min(int(uniq.numel()), int(max_voxels))
    keep = inverse < num
    sums = feats.new_zeros(num, feats.shape[1]).index_add_(0, inverse[keep], feats[keep])
    counts = torch.bincount(inverse[keep], minlength=num).to(feats.dtype).clamp_(min=1)
    coords = decode_key(uniq[:num], (z_size, y_size, x_size))
    return sums / counts[:, None], coords, torch.tensor(num, dtype=torch.int32, device=points.device)


@voxelize.register_fake
def _voxelize_fake(points, point_range, voxel_size, max_voxels):
    num = torch.library.get_ctx().new_dynamic_size(min=0, max=int(max_voxels))
    return (
        points.new_empty(num, points.shape[1]),
        points.new_empty(num, 4, dtype=torch.int32),
        points.new_empty((), dtype=torch.int32),
    )
