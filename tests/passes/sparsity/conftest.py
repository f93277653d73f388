"""A small camera + LiDAR model with the reference model's structure (modality modules, feature
sites, sparse convs, a residual join, a concat), fast enough for the sparsity tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsefuse.plugins.scatter_dense  # noqa: F401  (registers the torch ops)
import sparsefuse.plugins.sparse_conv3d  # noqa: F401
import sparsefuse.plugins.voxelize  # noqa: F401
from sparsefuse.models.bevfusion.lidar import SparseConv3d

POINT_RANGE = [-4.0, -4.0, -1.0, 4.0, 4.0, 1.0]
VOXEL = [0.5, 0.5, 0.5]
GRID = (4, 16, 16)  # Z, Y, X


class ToyCamera(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.conv = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.bev = nn.Conv2d(16, 8, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.stem(images))
        return self.bev(x.mean(dim=0, keepdim=True))


class ToyLidar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = SparseConv3d(4, 8, GRID, 3, subm=True)
        self.conv2 = SparseConv3d(8, 8, GRID, 3, subm=True)
        self.bev = nn.Sequential(nn.Conv2d(8 * GRID[0], 8, 1), nn.ReLU())

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        feats, coords, _ = torch.ops.sparsefuse.voxelize(points, POINT_RANGE, VOXEL, 4096)
        feats, coords = self.conv1(feats, coords)
        feats, coords = self.conv2(feats, coords)
        return self.bev(torch.ops.sparsefuse.scatter_dense(feats, coords, list(GRID), 1))


class ToyFusion(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fuser = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.res = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, cam: torch.Tensor, lid: torch.Tensor) -> torch.Tensor:
        x = self.fuser(torch.cat([cam, lid], dim=1))
        return torch.relu(x + self.res(x))


class ToyHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seg = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
        self.heatmap = nn.Conv2d(16, 2, 1)
        self.boxes = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor):
        return self.seg(x), self.heatmap(x), self.boxes(x) * 10.0


class ToyFusionModel(nn.Module):
    feature_site_paths = {"camera_bev": "camera.bev", "lidar_bev": "lidar.bev", "fused_bev": "fusion.fuser"}

    def __init__(self) -> None:
        super().__init__()
        self.camera = ToyCamera()
        self.lidar = ToyLidar()
        self.fusion = ToyFusion()
        self.head = ToyHead()

    def forward(self, images: torch.Tensor, points: torch.Tensor):
        bev = self.fusion(self.camera(images), self.lidar(points))
        return self.head(bev)


def toy_model(seed: int = 0) -> ToyFusionModel:
    torch.manual_seed(seed)
    model = ToyFusionModel()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, SparseConv3d):
                module.reset_parameters()
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def toy_frame(seed: int, num_points: int = 300) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(POINT_RANGE[:3]), torch.tensor(POINT_RANGE[3:])
    xyz = lo + torch.rand(num_points, 3, generator=gen) * (hi - lo) * 0.999
    points = torch.cat([xyz, torch.rand(num_points, 1, generator=gen)], dim=1)
    return {"images": torch.rand(2, 3, 16, 16, generator=gen), "points": points}


@pytest.fixture
def model() -> ToyFusionModel:
    return toy_model()


@pytest.fixture
def frames() -> list[dict[str, torch.Tensor]]:
    return [toy_frame(s) for s in range(3)]


@pytest.fixture(autouse=True)
def one_thread():
    """The shared 2-core machine: intra-op threads oversubscribe and make tiny ops ~20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
