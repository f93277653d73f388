"""Camera branch: ResNet-style backbone + FPN-like neck to 1/8, LSS depth net, BEVPool, downsample.

No normalization layers: every conv weight is exactly its ONNX initializer (the sparsity work
prunes by name). Residual branches end in a down-scaled init instead (see init_weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import sparsefuse.plugins  # noqa: F401  (registers torch.ops.sparsefuse.*)
from sparsefuse.plugins.bev_pool.precompute import BevPoolRanks

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), nn.ReLU())


class BasicBlock(nn.Module):
    """relu(shortcut(x) + conv3x3(relu(conv3x3(x))))."""

    residual_out = "conv2"  # last conv of the residual branch (scaled at init)

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.out_channels = width
        self.conv1 = nn.Conv2d(cin, width, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, width, 1, stride=stride) if stride != 1 or cin != width else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(skip + self.conv2(torch.relu(self.conv1(x))))


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (x4 expansion), projection shortcut."""

    expansion = 4
    residual_out = "conv3"

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1)
        self.conv3 = nn.Conv2d(width, self.out_channels, 1)
        self.shortcut = (nn.Conv2d(cin, self.out_channels, 1, stride=stride)
                         if stride != 1 or cin != self.out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return torch.relu(skip + self.conv3(y))


class ResNet(nn.Module):
    """Stem (/4 with a 7x7 conv + max pool, or /2 with a 3x3 conv) and stages; returns every stage."""

    def __init__(self, stem_channels: int, depths: tuple[int, ...], widths: tuple[int, ...],
                 strides: tuple[int, ...], bottleneck: bool, deep_stem: bool) -> None:
        super().__init__()
        if deep_stem:
            self.stem = nn.Sequential(nn.Conv2d(3, stem_channels, 7, stride=2, padding=3), nn.ReLU(),
                                      nn.MaxPool2d(3, stride=2, padding=1))
            stride_now = 4
        else:
            self.stem = conv_relu(3, stem_channels, 3, stride=2)
            stride_now = 2
        block = Bottleneck if bottleneck else BasicBlock
        cin = stem_channels
        stages, self.out_strides, self.out_channels = [], [], []
        for depth, width, stride in zip(depths, widths, strides, strict=True):
            blocks = []
            for i in range(depth):
                blocks.append(block(cin, width, stride if i == 0 else 1))
                cin = blocks[-1].out_channels
            stages.append(nn.Sequential(*blocks))
            stride_now *= stride
            self.out_strides.append(stride_now)
            self.out_channels.append(cin)
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class Neck(nn.Module):
    """FPN-like top-down fusion of the stages at stride >= 8 into one map at stride 8."""

    def __init__(self, in_channels: list[int], in_strides: list[int], channels: int) -> None:
        super().__init__()
        self.levels = [i for i, s in enumerate(in_strides) if s >= 8]
        if not self.levels or in_strides[self.levels[0]] != 8:
            raise ValueError(f"backbone strides {in_strides} have no stride-8 stage")
        self.lateral = nn.ModuleList(nn.Conv2d(in_channels[i], channels, 1) for i in self.levels)
        self.out = conv_relu(channels, channels, 3)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](feats[self.levels[-1]])
        for lateral, level in zip(reversed(self.lateral[:-1]), reversed(self.levels[:-1]), strict=True):
            y = lateral(feats[level])
            x = y + F.interpolate(x, size=y.shape[-2:], mode="nearest")
        return self.out(x)


class DepthNet(nn.Module):
    """LSS head: [Ncam, Cin, H, W] -> depth softmax [Ncam, D, H, W], context [Ncam, C, H, W]."""

    def __init__(self, cin: int, mid: int, depth_bins: int, context: int) -> None:
        super().__init__()
        self.depth_bins = depth_bins
        self.conv = conv_relu(cin, mid, 3)
        self.out = nn.Conv2d(mid, depth_bins + context, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.out(self.conv(x))
        return y[:, : self.depth_bins].softmax(dim=1), y[:, self.depth_bins:]


class CameraBranch(nn.Module):
    """images [Ncam,3,H,W] in [0,1] -> camera BEV feature [1, C, Y, X] on the fusion grid.

    BEVPool runs on a grid ``bev_stride`` times finer than the fusion grid; ``bev`` (the
    "camera_bev" feature site) is the strided conv that brings it to the fusion grid.
    """

    def __init__(self, backbone: ResNet, neck_channels: int, depth_mid: int, depth_bins: int,
                 channels: int, ranks: BevPoolRanks, pool_shape: tuple[int, int], bev_stride: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.backbone = backbone
        self.neck = Neck(backbone.out_channels, backbone.out_strides, neck_channels)
        self.depth_net = DepthNet(neck_channels, depth_mid, depth_bins, channels)
        for name in ("ranks_depth", "ranks_feat", "ranks_bev", "interval_starts", "interval_lengths"):
            # Derived from the rig, not learned: kept out of state_dict, exported as constants.
            self.register_buffer(name, torch.from_numpy(getattr(ranks, name).copy()), persistent=False)
        self.pool_shape = (1, int(pool_shape[0]), int(pool_shape[1]))
        self.bev = nn.Sequential(conv_relu(channels, channels, 3),
                                 conv_relu(channels, channels, 3, bev_stride))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        depth, context = self.depth_net(self.neck(self.backbone(x)))
        feat = context.permute(0, 2, 3, 1).contiguous()
        pooled = torch.ops.sparsefuse.bev_pool(
            depth.contiguous(), feat, self.ranks_depth, self.ranks_feat, self.ranks_bev,
            self.interval_starts, self.interval_lengths, list(self.pool_shape))
        return self.bev(pooled)
