"""The BEVFusion-style reference model: top-level submodules ``camera``, ``lidar``, ``fusion``,
``head``, whose names are the modality tags of their parameters (docs/design.md §5)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from sparsefuse.errors import SparsefuseError
from sparsefuse.models.bevfusion.camera import CameraBranch, ResNet
from sparsefuse.models.bevfusion.fusion import Fusion, Heads
from sparsefuse.models.bevfusion.lidar import LidarBranch, SparseConv3d
from sparsefuse.models.geometry import camera_bev_ranks, feature_size
from sparsefuse.models.rig import Rig

if TYPE_CHECKING:
    from sparsefuse.models.presets import Preset

OUTPUT_NAMES = ("seg_logits", "heatmap", "boxes")
INPUT_NAMES = ("images", "points")
MODALITIES = ("camera", "lidar", "fusion", "head")
# MMPrune4U feature sites: site name -> module path whose forward output is the feature.
FEATURE_SITES = {"camera_bev": "camera.bev", "lidar_bev": "lidar.bev", "fused_bev": "fusion.fuser"}
SEG_CLASSES = ("drivable", "car", "truck", "pedestrian", "barrier")
DET_CLASSES = ("car", "truck", "pedestrian", "barrier")
BOX_CHANNELS = ("dx", "dy", "z", "log_w", "log_l", "log_h", "sin_yaw", "cos_yaw")


def modality_of(name: str) -> str:
    """Modality tag of a parameter or module path: its first component (e.g. ``lidar``)."""
    tag = name.split(".", 1)[0]
    if tag not in MODALITIES:
        raise ValueError(f"{name!r} is not under one of the modality modules {MODALITIES}")
    return tag


@dataclass(frozen=True)
class PrunableWeight:
    """One prunable weight tensor (docs/design.md §5): torch parameter name = ONNX initializer name."""

    name: str  # e.g. "lidar.encoder.stages.1.0.weight"
    kind: str  # "conv2d" | "linear" | "sparseconv3d"
    modality: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


_KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Conv2d, "conv2d"), (nn.Linear, "linear"), (SparseConv3d, "sparseconv3d"))


def prunable_weights(model: nn.Module) -> list[PrunableWeight]:
    """Every conv2d / linear / sparse conv weight of ``model``, in module order."""
    found = []
    for path, module in model.named_modules():
        for cls, kind in _KINDS:
            if isinstance(module, cls):
                name = f"{path}.weight"
                found.append(PrunableWeight(name, kind, modality_of(name), tuple(module.weight.shape)))
    return found


class BEVFusion(nn.Module):
    """forward(images [Ncam,3,H,W] f32 in [0,1], points [P,4] f32) ->
    (seg_logits [1,5,Y,X], heatmap [1,4,Y,X], boxes [1,8,Y,X]); see OUTPUT_NAMES."""

    output_names = OUTPUT_NAMES
    input_names = INPUT_NAMES
    feature_site_paths = FEATURE_SITES

    def __init__(self, preset: Preset, rig: Rig) -> None:
        super().__init__()
        self.preset_name = preset.name
        self.rig = rig
        self.num_cameras = len(rig.cameras)
        self.image_size = rig.cameras[0].image_size
        fusion_shape = check_grids(preset, rig)
        self.bev_shape = fusion_shape
        ranks = camera_bev_ranks(rig, preset.feature_stride, preset.camera_bev_stride)
        backbone = ResNet(preset.stem_channels, preset.backbone_depths, preset.backbone_widths,
                          preset.backbone_strides, preset.bottleneck, preset.deep_stem)
        pool_shape = (fusion_shape[0] * preset.camera_bev_stride, fusion_shape[1] * preset.camera_bev_stride)
        self.camera = CameraBranch(backbone, preset.neck_channels, preset.depth_net_channels,
                                   rig.num_depth_bins, preset.camera_channels, ranks, pool_shape,
                                   preset.camera_bev_stride)
        self.lidar = LidarBranch(rig.point_range, rig.voxel_size, preset.max_voxels, rig.voxel_grid,
                                 lidar_stage_channels(preset.lidar_channels, rig), preset.lidar_blocks,
                                 preset.lidar_encoder_out, preset.lidar_bev_channels)
        if self.lidar.bev_shape != fusion_shape:
            raise SparsefuseError(
                f"LiDAR BEV grid {self.lidar.bev_shape} does not match the fusion grid {fusion_shape}",
                "use a voxel grid whose XY size is a power-of-two multiple of the BEV grid "
                "(rig point_range / voxel_size vs bev_range / bev_cell)")
        self.fusion = Fusion(preset.camera_channels, preset.lidar_bev_channels, preset.fusion_channels,
                             preset.bev_encoder_blocks)
        self.head = Heads(preset.fusion_channels, preset.head_channels, len(SEG_CLASSES), len(DET_CLASSES),
                          len(BOX_CHANNELS))

    def forward(self, images: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, ...]:
        expected = (self.num_cameras, 3, *self.image_size)
        if tuple(images.shape) != expected:  # static shapes: checked once at export time
            raise SparsefuseError(
                f"images have shape {tuple(images.shape)}, the model's rig needs {expected}",
                "pass one image per rig camera at the preset's image size")
        camera_bev = self.camera(images)
        lidar_bev = self.lidar(points)
        return self.head(self.fusion(camera_bev, lidar_bev))

    def feature_sites(self) -> dict[str, nn.Module]:
        """MMPrune4U feature sites: name -> module whose output is that BEV feature [1,C,Y,X]."""
        modules = dict(self.named_modules())
        return {site: modules[path] for site, path in FEATURE_SITES.items()}

    @contextmanager
    def capture_features(self) -> Iterator[dict[str, torch.Tensor]]:
        """Record each feature site's output during the forward passes run inside the block."""
        captured: dict[str, torch.Tensor] = {}
        handles = [module.register_forward_hook(_recorder(captured, site))
                   for site, module in self.feature_sites().items()]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def prunable_weights(self) -> list[PrunableWeight]:
        return prunable_weights(self)


# Residual branches start small so that a deep, norm-free random network keeps its activations
# in range (the same idea as zero-init of the last BN gamma, without making weights exactly 0).
RESIDUAL_INIT_SCALE = 0.2


def init_weights(model: nn.Module) -> None:
    """Deterministic (given the torch seed) init: He-normal convs, zero biases, scaled residuals."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, SparseConv3d):
            module.reset_parameters()
    with torch.no_grad():
        for module in model.modules():
            # Blocks name their residual branch's last conv in a class attribute (a module alias
            # would register the conv twice and give its weight two names).
            residual_out = getattr(module, "residual_out", None)
            if isinstance(residual_out, str):
                getattr(module, residual_out).weight.mul_(RESIDUAL_INIT_SCALE)
    for module in model.modules():
        if isinstance(module, Heads):
            module.reset_head_bias()


def _recorder(store: dict[str, torch.Tensor], site: str):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        store[site] = output.detach()
    return hook


def lidar_stage_channels(channels: tuple[int, ...], rig: Rig) -> tuple[int, ...]:
    """Encoder stage channels for the rig: one stride-2 stage per factor 2 between the voxel grid
    and the BEV grid (the preset's channels, truncated or extended with its last width)."""
    _, vy, vx = rig.voxel_grid
    by, bx = rig.bev_shape
    ratio = vx / bx
    downsamples = round(math.log2(ratio)) if ratio >= 1 else -1
    if downsamples < 0 or vy / by != ratio or 2 ** downsamples != ratio:
        raise SparsefuseError(
            f"rig voxel grid {vy}x{vx} is not a power-of-two multiple of the BEV grid {by}x{bx}",
            "choose voxel_size and bev_cell so that bev_cell / voxel_size is 1, 2, 4, 8, ...")
    stages = downsamples + 1
    return tuple(channels[:stages]) + (channels[-1],) * max(0, stages - len(channels))


def check_grids(preset: Preset, rig: Rig) -> tuple[int, int]:
    """The fusion grid (Y, X) = rig.bev_shape, after checking the rig against the preset."""
    if len(rig.cameras) < 1:
        raise SparsefuseError("rig has no camera", "add at least one camera to the rig")
    sizes = {cam.image_size for cam in rig.cameras}
    if len(sizes) != 1:
        raise SparsefuseError(f"rig cameras have different image sizes {sorted(sizes)}",
                              "resize the rig with Rig.resized(H, W)")
    feature_size(next(iter(sizes)), preset.feature_stride)
    pr, bev = rig.point_range, rig.bev_range
    lidar_xy = (pr[0], pr[1], pr[3], pr[4])
    if not all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(lidar_xy, bev, strict=True)):
        raise SparsefuseError(
            f"rig point_range x/y {lidar_xy} differs from bev_range {bev}",
            "the camera and LiDAR BEV maps must cover the same area: make them equal")
    return rig.bev_shape
