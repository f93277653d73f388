"""Fusion (concat + conv fuser, residual BEV encoder) and the two heads (BEV segmentation,
CenterPoint-style heatmap + box regression)."""

from __future__ import annotations

import math

import torch
from torch import nn

from sparsefuse.models.bevfusion.camera import conv_relu

# CenterPoint initializes the heatmap bias so that sigmoid(bias) = 0.1 (few positives at start).
HEATMAP_PRIOR = 0.1


class ResBlock(nn.Module):
    """relu(x + conv3x3(relu(conv3x3(x))))."""

    residual_out = "conv2"  # last conv of the residual branch (scaled at init)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class Fusion(nn.Module):
    """camera BEV [1,Cc,Y,X] + LiDAR BEV [1,Cl,Y,X] -> fused BEV [1,F,Y,X] -> encoded BEV."""

    def __init__(self, camera_channels: int, lidar_channels: int, channels: int, blocks: int) -> None:
        super().__init__()
        self.fuser = conv_relu(camera_channels + lidar_channels, channels, 3)
        self.encoder = nn.Sequential(*(ResBlock(channels) for _ in range(blocks)))

    def forward(self, camera_bev: torch.Tensor, lidar_bev: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.fuser(torch.cat([camera_bev, lidar_bev], dim=1)))


def _head(cin: int, mid: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_relu(cin, mid, 3), nn.Conv2d(mid, cout, 1))


class Heads(nn.Module):
    """BEV [1,F,Y,X] -> (seg_logits [1,S,Y,X], heatmap [1,K,Y,X] logits, boxes [1,8,Y,X])."""

    def __init__(self, channels: int, mid: int, seg_classes: int, det_classes: int,
                 box_dims: int = 8) -> None:
        super().__init__()
        self.seg = _head(channels, mid, seg_classes)
        self.heatmap = _head(channels, mid, det_classes)
        self.boxes = _head(channels, mid, box_dims)

    def reset_head_bias(self) -> None:
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.seg(x), self.heatmap(x), self.boxes(x)
