"""Camera frustum geometry for LSS / BEVPool, evaluated once per rig at model construction.

A frustum point is (camera n, depth bin d, feature pixel h, w). Its image position is the centre
of the ``stride x stride`` block of input pixels that feature pixel covers; its depth is the bin
depth along the optical axis (camera z, as in LSS / BEVFusion). Nothing here runs in forward():
the model only keeps the BEVPool ranks derived from these cells.
"""

from __future__ import annotations

import numpy as np

from sparsefuse.errors import SparsefuseError
from sparsefuse.models.rig import Camera, Rig
from sparsefuse.plugins.bev_pool.precompute import BevPoolRanks, precompute_ranks


def feature_size(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """(H, W) of a feature map at ``1/stride`` of ``image_size`` = (H, W) pixels."""
    height, width = image_size
    if height % stride or width % stride:
        raise SparsefuseError(
            f"image size {height}x{width} is not divisible by the camera feature stride {stride}",
            f"resize the rig's images to a multiple of {stride} (Rig.resized)",
        )
    return height // stride, width // stride


def pixel_centres(image_size: tuple[int, int], stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Image coordinates (u [W'], v [H'], pixels) of each feature pixel's block centre.

    Continuous pixel coordinates: input pixel j spans [j, j+1), as Camera.resized (which scales
    K without a half-pixel shift) and the synthetic renderer assume; block j spans
    [j*stride, (j+1)*stride), centre (j + 0.5) * stride.
    """
    feat_h, feat_w = feature_size(image_size, stride)
    return (np.arange(feat_w) + 0.5) * stride, (np.arange(feat_h) + 0.5) * stride


def camera_frustum(camera: Camera, depths: np.ndarray, stride: int) -> np.ndarray:
    """Ego-frame points [D,H',W',3] (m) of one camera's frustum: d * K^-1 [u, v, 1], then cam_to_ego."""
    u, v = pixel_centres(camera.image_size, stride)
    uu, vv = np.meshgrid(u, v)  # [H',W']
    pix = np.stack([uu, vv, np.ones_like(uu)], axis=-1)  # [H',W',3]
    rays = pix @ np.linalg.inv(camera.K).T  # camera frame, z = 1
    cam_pts = depths[:, None, None, None] * rays[None]  # [D,H',W',3]
    t = camera.T_cam_to_ego
    return cam_pts @ t[:3, :3].T + t[:3, 3]


def frustum_points(rig: Rig, stride: int) -> np.ndarray:
    """Ego-frame points [Ncam,D,H',W',3] of every camera's frustum."""
    depths = rig.depth_bins
    return np.stack([camera_frustum(cam, depths, stride) for cam in rig.cameras])


def pool_grid(rig: Rig, subdivision: int = 1) -> tuple[float, tuple[int, int]]:
    """BEVPool grid: cell size (m) and (Y, X), ``subdivision`` times finer than the rig's BEV grid."""
    y_size, x_size = rig.bev_shape
    return rig.bev_cell / subdivision, (y_size * subdivision, x_size * subdivision)


def bev_cell_of(points: np.ndarray, rig: Rig, subdivision: int = 1) -> np.ndarray:
    """Linear BEV cell y*X + x of ego points [...,3] on the pool grid; -1 outside.

    The grid spans rig.bev_range with cells of rig.bev_cell / subdivision. A point is outside
    when x or y leaves the BEV range or z leaves [zmin, zmax) of rig.point_range.
    """
    xmin, ymin, _, _ = rig.bev_range
    cell, (y_size, x_size) = pool_grid(rig, subdivision)
    zmin, zmax = rig.point_range[2], rig.point_range[5]
    ix = np.floor((points[..., 0] - xmin) / cell).astype(np.int64)
    iy = np.floor((points[..., 1] - ymin) / cell).astype(np.int64)
    z = points[..., 2]
    inside = (ix >= 0) & (ix < x_size) & (iy >= 0) & (iy < y_size) & (z >= zmin) & (z < zmax)
    return np.where(inside, iy * x_size + ix, -1)


def frustum_bev_cells(rig: Rig, stride: int, subdivision: int = 1) -> np.ndarray:
    """Pool-grid cell [Ncam,D,H',W'] int64 of every frustum point (-1 = outside), camera by camera."""
    depths = rig.depth_bins
    return np.stack([bev_cell_of(camera_frustum(cam, depths, stride), rig, subdivision)
                     for cam in rig.cameras])


def camera_bev_ranks(rig: Rig, stride: int, subdivision: int = 1) -> BevPoolRanks:
    """BEVPool ranks/intervals for the rig's cameras at feature stride ``stride``."""
    sizes = {cam.image_size for cam in rig.cameras}
    if len(sizes) != 1:
        raise SparsefuseError(
            f"rig {rig.name!r} mixes camera image sizes {sorted(sizes)}",
            "resize the rig to the network input size with Rig.resized(H, W)",
        )
    return precompute_ranks(frustum_bev_cells(rig, stride, subdivision))


def nearest_points(points: np.ndarray, rig: Rig, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Per camera feature pixel, the nearest ego point [P, >=3] (m) seen through its ``stride``-pixel
    block: (index int64 [Ncam, H', W'], -1 where none; camera z [Ncam, H', W'] m, inf where none)."""
    xyz = np.asarray(points, np.float64)[:, :3]
    indices, depths = [], []
    for cam in rig.cameras:
        feat_h, feat_w = feature_size(cam.image_size, stride)
        ego_to_cam = np.linalg.inv(cam.T_cam_to_ego)
        cam_pts = xyz @ ego_to_cam[:3, :3].T + ego_to_cam[:3, 3]
        front = np.flatnonzero(cam_pts[:, 2] > 1e-3)
        z = cam_pts[front, 2]
        uvw = cam_pts[front] @ cam.K.T
        u = np.floor(uvw[:, 0] / z / stride).astype(np.int64)
        v = np.floor(uvw[:, 1] / z / stride).astype(np.int64)
        inside = (u >= 0) & (u < feat_w) & (v >= 0) & (v < feat_h)
        pixel, z, point = v[inside] * feat_w + u[inside], z[inside], front[inside]
        order = np.lexsort((z, pixel))  # by pixel, nearest first
        first = order[np.r_[True, pixel[order][1:] != pixel[order][:-1]]] if len(order) else order
        index = np.full(feat_h * feat_w, -1, np.int64)
        depth = np.full(feat_h * feat_w, np.inf)
        index[pixel[first]], depth[pixel[first]] = point[first], z[first]
        indices.append(index.reshape(feat_h, feat_w))
        depths.append(depth.reshape(feat_h, feat_w))
    return np.stack(indices), np.stack(depths)


def depth_bin_targets(points: np.ndarray, rig: Rig, stride: int) -> np.ndarray:
    """LiDAR depth supervision for the LSS depth net (BEVDepth): int64 [Ncam, H', W'] depth bin of
    the nearest ego point [P, >=3] (m) seen through each feature pixel's block, -1 where none.

    Depth is camera z, binned to the nearest of ``rig.depth_bins``; points beyond the bins' reach
    (half a step past either end) give no target.
    """
    dmin, _, step = rig.depth_range
    _, depth = nearest_points(points, rig, stride)
    bins = np.round((depth - dmin) / step)
    valid = np.isfinite(bins) & (bins >= 0) & (bins < rig.num_depth_bins)
    return np.where(valid, bins, -1).astype(np.int64)
