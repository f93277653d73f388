"""A "bring your own model" reference: a BEVFusion-style camera + LiDAR detector (tiny).

Camera: a small CNN (stride 8) -> LSS depth softmax x context (outer product) -> frustum points
lifted to the ego frame from the camera intrinsics / extrinsics -> BEV cells -> this file's own
module-level ``bev_pool(feats, coords, B, D, H, W)`` in plain torch (the "user's" implementation,
the oracle for the conversion) -> BEV [1, C, Y, X]. LiDAR: spconv ``PointToVoxel`` held as an
attribute -> mean VFE -> SubMConv3d / SparseConv3d + BatchNorm1d + ReLU -> ``.dense()`` -> BEV.
Concat fuser, 2-D head returning {"heatmap", "reg"}.

``build(seed, static_geometry=False)``: the camera parameters are forward inputs
(``forward(images, points, intrinsics, cam_to_ego)``; geometry changes per frame -> runtime
ranks), or, with ``static_geometry=True``, fixed buffers (``forward(images, points)``; static
ranks). ``make_frames(count, seed, static_geometry=False)`` matches. Loadable by path.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import spconv.pytorch as spconv
import torch
from spconv.pytorch.utils import PointToVoxel
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loaded by path: find the shared blocks
from building_blocks import init_weights, sparse_block  # noqa: E402

NUM_CAMERAS = 2
IMAGE_SIZE = (32, 48)  # (H, W) pixels
STRIDE = 8
DEPTHS = (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0)  # bin centres along the optical axis (m)
CONTEXT = 8
BEV_RANGE = (-16.0, -16.0, 16.0, 16.0)  # xmin, ymin, xmax, ymax (m)
BEV_CELL = 0.5  # m -> 64 x 64 camera BEV cells
Z_RANGE = (-2.0, 4.0)  # one height cell for the camera BEV
POINT_RANGE = [-16.0, -16.0, -2.0, 16.0, 16.0, 4.0]
VOXEL_SIZE = [0.5, 0.5, 0.5]  # -> sparse grid (Z, Y, X) = (12, 64, 64)
MAX_VOXELS, MAX_POINTS = 6000, 8
NUM_CLASSES = 3


def bev_pool(feats: torch.Tensor, coords: torch.Tensor, B: int, D: int, H: int, W: int) -> torch.Tensor:  # noqa: N803
    """The user's pooling: feats [N,C], coords [N,4] int (x, y, z, b), all inside the grid ->
    [B, C, D, H, W], each cell the sum of its points' features (H indexes x, W indexes y)."""
    c = coords.long()
    flat = ((c[:, 3] * D + c[:, 2]) * H + c[:, 0]) * W + c[:, 1]
    grid = feats.new_zeros(B * D * H * W, feats.shape[1]).index_add_(0, flat, feats)
    return grid.view(B, D, H, W, feats.shape[1]).permute(0, 4, 1, 2, 3).contiguous()


def default_cameras() -> tuple[np.ndarray, np.ndarray]:
    """(intrinsics [Ncam,3,3], cam_to_ego [Ncam,4,4]): two cameras 1.5 m up, looking forward-left and
    forward-right; camera frame x right, y down, z forward; ego x forward, y left, z up."""
    height, width = IMAGE_SIZE
    k = np.array([[40.0, 0.0, width / 2], [0.0, 40.0, height / 2], [0.0, 0.0, 1.0]])
    axes = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # cam (x, y, z) in ego
    poses = []
    for yaw in (0.5, -0.5):
        rot = np.array([[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0], [0, 0, 1]])
        pose = np.eye(4)
        pose[:3, :3] = rot @ axes
        pose[:3, 3] = (0.5, 0.0, 1.5)
        poses.append(pose)
    return np.stack([k, k]).astype(np.float32), np.stack(poses).astype(np.float32)


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class CameraLSS(nn.Module):
    """images [Ncam,3,H,W] (+ intrinsics [Ncam,3,3], cam_to_ego [Ncam,4,4]) -> BEV [1, C, Y, X]."""

    def __init__(self, static_geometry: bool) -> None:
        super().__init__()
        self.static_geometry = static_geometry
        self.backbone = nn.Sequential(
            conv_bn_relu(3, 16, 2), conv_bn_relu(16, 16, 2), conv_bn_relu(16, 24, 2)
        )
        self.depth_net = nn.Conv2d(24, len(DEPTHS) + CONTEXT, 1)
        self.register_buffer("depths", torch.tensor(DEPTHS), persistent=False)
        feat_h, feat_w = IMAGE_SIZE[0] // STRIDE, IMAGE_SIZE[1] // STRIDE
        v, u = torch.meshgrid(
            (torch.arange(feat_h) + 0.5) * STRIDE, (torch.arange(feat_w) + 0.5) * STRIDE, indexing="ij"
        )
        self.register_buffer("pixels", torch.stack([u, v, torch.ones_like(u)], dim=-1), persistent=False)
        self.nx = (
            round((BEV_RANGE[2] - BEV_RANGE[0]) / BEV_CELL),
            round((BEV_RANGE[3] - BEV_RANGE[1]) / BEV_CELL),
            1,
        )
        lower = torch.tensor([BEV_RANGE[0], BEV_RANGE[1], Z_RANGE[0]])
        self.register_buffer("lower", lower, persistent=False)
        self.register_buffer(
            "cell", torch.tensor([BEV_CELL, BEV_CELL, Z_RANGE[1] - Z_RANGE[0]]), persistent=False
        )
        if static_geometry:
            k, pose = default_cameras()
            self.register_buffer("intrinsics", torch.from_numpy(k), persistent=False)
            self.register_buffer("cam_to_ego", torch.from_numpy(pose), persistent=False)

    def geometry(self, intrinsics: torch.Tensor, cam_to_ego: torch.Tensor) -> torch.Tensor:
        """Ego points [Ncam, D, h, w, 3] of the frustum: pose @ (d * K^-1 [u, v, 1]) for pinhole K
        (K^-1 written out: ONNX has no matrix inverse)."""
        fx, fy = intrinsics[:, 0, 0, None, None], intrinsics[:, 1, 1, None, None]
        cx, cy = intrinsics[:, 0, 2, None, None], intrinsics[:, 1, 2, None, None]
        u, v = self.pixels[None, ..., 0], self.pixels[None, ..., 1]
        rays = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u - cx)], dim=-1)  # [N,h,w,3]
        cam = self.depths[None, :, None, None, None] * rays[:, None]  # [N,D,h,w,3]
        rot, trans = cam_to_ego[:, :3, :3], cam_to_ego[:, :3, 3]
        return torch.einsum("nij,ndhwj->ndhwi", rot, cam) + trans[:, None, None, None, :]

    def pool(self, volume: torch.Tensor, geom: torch.Tensor) -> torch.Tensor:
        """Frustum features [Ncam,D,h,w,C] at ego points [Ncam,D,h,w,3] -> BEV [1, C, Y, X]."""
        channels = volume.shape[-1]
        cells = ((geom - self.lower) / self.cell).floor().long().reshape(-1, 3)  # (x, y, z)
        coords = torch.cat([cells, torch.zeros_like(cells[:, :1])], dim=1)  # (x, y, z, b)
        nx, ny, nz = self.nx
        kept = (
            (cells[:, 0] >= 0)
            & (cells[:, 0] < nx)
            & (cells[:, 1] >= 0)
            & (cells[:, 1] < ny)
            & (cells[:, 2] >= 0)
            & (cells[:, 2] < nz)
        )
        pooled = bev_pool(volume.reshape(-1, channels)[kept], coords[kept], 1, nz, nx, ny)  # [1,C,nz,X,Y]
        bev = torch.cat(pooled.unbind(dim=2), dim=1)  # [1, C*nz, X, Y]
        return bev.transpose(2, 3)  # [1, C, Y, X], rows = y like the LiDAR BEV

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor | None = None,
        cam_to_ego: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.static_geometry:
            intrinsics, cam_to_ego = self.intrinsics, self.cam_to_ego
        x = self.depth_net(self.backbone(images))
        depth = x[:, : len(DEPTHS)].softmax(dim=1)  # [N,D,h,w]
        context = x[:, len(DEPTHS) :]  # [N,C,h,w]
        volume = depth[:, :, None] * context[:, None]  # [N,D,C,h,w]
        volume = volume.permute(0, 1, 3, 4, 2)  # [N,D,h,w,C]
        return self.pool(volume, self.geometry(intrinsics, cam_to_ego))


class LidarBranch(nn.Module):
    """points [P,4] -> BEV [1, 32, 32, 32] (Y, X at 1 m)."""

    def __init__(self) -> None:
        super().__init__()
        self.voxel_generator = PointToVoxel(VOXEL_SIZE, POINT_RANGE, 4, MAX_VOXELS, MAX_POINTS)
        self.sparse_shape = [12, 64, 64]
        self.encoder = spconv.SparseSequential(
            sparse_block(4, 8, 3, padding=1, key="subm1"),
            sparse_block(8, 16, 3, stride=2, padding=1, subm=False, key="down1"),  # (6, 32, 32)
            sparse_block(16, 16, 3, padding=1, key="subm2"),
            sparse_block(16, 16, (3, 1, 1), stride=(2, 1, 1), subm=False, key="down2"),  # (2, 32, 32)
        )

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        voxels, coords, num_points = self.voxel_generator(points)
        features = voxels.sum(dim=1) / num_points.clamp(min=1).to(voxels.dtype)[:, None]
        batch = torch.zeros_like(coords[:, :1])
        x = spconv.SparseConvTensor(features, torch.cat([batch, coords], dim=1), self.sparse_shape, 1)
        dense = self.encoder(x).dense()  # [1, C, Z, Y, X]
        n, c, d, h, w = dense.shape
        return dense.view(n, c * d, h, w)


class BEVFusionLSS(nn.Module):
    def __init__(self, static_geometry: bool = False) -> None:
        super().__init__()
        self.camera = CameraLSS(static_geometry)
        self.camera_down = conv_bn_relu(CONTEXT, 16, 2)  # 64 -> 32
        self.lidar = LidarBranch()
        self.fuser = conv_bn_relu(16 + 32, 32)
        self.heatmap = nn.Conv2d(32, NUM_CLASSES, 1)
        self.reg = nn.Conv2d(32, 8, 1)

    def forward(
        self,
        images: torch.Tensor,
        points: torch.Tensor,
        intrinsics: torch.Tensor | None = None,
        cam_to_ego: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        cam = self.camera_down(self.camera(images, intrinsics, cam_to_ego))
        fused = self.fuser(torch.cat([cam, self.lidar(points)], dim=1))
        return {"heatmap": self.heatmap(fused), "reg": self.reg(fused)}


def build(seed: int = 0, static_geometry: bool = False) -> nn.Module:
    return init_weights(BEVFusionLSS(static_geometry), seed)


def make_frames(count: int, seed: int = 0, static_geometry: bool = False) -> list[dict[str, np.ndarray]]:
    """``count`` frames: images, a LiDAR sweep (ground + boxes, 1500-3000 points, varying), and unless
    ``static_geometry`` the camera parameters, jittered per frame (so the BEV geometry changes)."""
    rng = np.random.default_rng(seed)
    k, pose = default_cameras()
    frames = []
    for _ in range(count):
        n = int(rng.integers(1500, 3000))
        xy = rng.uniform(-15.5, 15.5, size=(n, 2))
        z = rng.normal(-1.6, 0.05, size=(n, 1))
        objects = rng.random(n) < 0.3
        z[objects, 0] = rng.uniform(-1.5, 1.5, size=int(objects.sum()))
        points = np.concatenate([xy, z, rng.random((n, 1))], axis=1).astype(np.float32)
        frame = {"images": rng.random((NUM_CAMERAS, 3, *IMAGE_SIZE)).astype(np.float32), "points": points}
        if not static_geometry:
            jitter = pose.copy()
            jitter[:, :3, 3] += rng.normal(0.0, 0.3, size=(NUM_CAMERAS, 3)).astype(np.float32)
            frame["intrinsics"] = (k * rng.uniform(0.9, 1.1)).astype(np.float32)
            frame["intrinsics"][:, 2, 2] = 1.0
            frame["cam_to_ego"] = jitter
        frames.append(frame)
    return frames
