"""Model presets: ``bevfusion-tiny`` (CI scale) and ``bevfusion-base`` (the BEVFusion paper's
workload), and ``build_model``, the one way to construct a reference model.

Grids follow the rig: ``bev_range`` / ``bev_cell`` is the fusion (output) grid; the camera
pools on a grid ``camera_bev_stride`` times finer and a strided conv brings it down; the LiDAR
voxel grid is 2**(len(lidar_channels) - 1) times finer in XY than the fusion grid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from sparsefuse.errors import SparsefuseError
from sparsefuse.models.bevfusion import BEVFusion, init_weights
from sparsefuse.models.rig import Rig, bev_grid_shape, load_rig
from sparsefuse.plugins.voxelize import grid_shape
from sparsefuse.spec import InputSpec, ModelSpec, OutputSpec, validate_spec

DEFAULT_RIG = "nuscenes_6cam"


@dataclass(frozen=True)
class Preset:
    """Architecture and grids of one reference model. Lengths in metres, sizes (H, W) in pixels."""

    name: str
    image_size: tuple[int, int]
    num_cameras: int
    depth_range: tuple[float, float, float]  # (dmin, dmax, step): D = (dmax - dmin) / step
    point_range: tuple[float, float, float, float, float, float]
    voxel_size: tuple[float, float, float]
    bev_range: tuple[float, float, float, float]
    bev_cell: float  # fusion grid cell
    max_voxels: int
    num_points_typical: int
    # camera branch
    feature_stride: int
    stem_channels: int
    backbone_depths: tuple[int, ...]
    backbone_widths: tuple[int, ...]
    backbone_strides: tuple[int, ...]
    bottleneck: bool
    deep_stem: bool
    neck_channels: int
    depth_net_channels: int
    camera_channels: int  # context / camera BEV channels C
    camera_bev_stride: int
    # LiDAR branch
    lidar_channels: tuple[int, ...]  # per encoder stage; stages after the first downsample by 2
    lidar_blocks: int  # submanifold convs per stage
    lidar_encoder_out: int
    lidar_bev_channels: int
    # fusion and heads
    fusion_channels: int
    bev_encoder_blocks: int
    head_channels: int

    @property
    def num_depth_bins(self) -> int:
        dmin, dmax, step = self.depth_range
        return int(round((dmax - dmin) / step))

    @property
    def feature_size(self) -> tuple[int, int]:
        return self.image_size[0] // self.feature_stride, self.image_size[1] // self.feature_stride

    @property
    def bev_shape(self) -> tuple[int, int]:
        """(Y, X) of the fusion grid and of the outputs."""
        return bev_grid_shape(self.bev_range, self.bev_cell)

    @property
    def voxel_grid(self) -> tuple[int, int, int]:
        """(Z, Y, X) voxels of Voxelize; the sparse encoder adds one z slice (41 for 40)."""
        return grid_shape(list(self.point_range), list(self.voxel_size))


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="bevfusion-tiny", image_size=(64, 176), num_cameras=6, depth_range=(1.0, 49.0, 3.0),
            point_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), voxel_size=(0.4, 0.4, 0.5),
            bev_range=(-51.2, -51.2, 51.2, 51.2), bev_cell=1.6, max_voxels=16000, num_points_typical=10000,
            feature_stride=8, stem_channels=16, backbone_depths=(1, 1, 1), backbone_widths=(32, 64, 128),
            backbone_strides=(2, 2, 2), bottleneck=False, deep_stem=False, neck_channels=64,
            depth_net_channels=64, camera_channels=32, camera_bev_stride=2, lidar_channels=(16, 32, 64),
            lidar_blocks=1, lidar_encoder_out=64, lidar_bev_channels=64, fusion_channels=64,
            bev_encoder_blocks=2, head_channels=32,
        ),
        Preset(
            name="bevfusion-base", image_size=(256, 704), num_cameras=6, depth_range=(1.0, 60.0, 0.5),
            point_range=(-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), voxel_size=(0.075, 0.075, 0.2),
            bev_range=(-54.0, -54.0, 54.0, 54.0), bev_cell=0.6, max_voxels=160000,
            num_points_typical=250000,  # 10 nuScenes sweeps, as BEVFusion
            feature_stride=8, stem_channels=64, backbone_depths=(3, 4, 6, 3),  # ResNet-50
            backbone_widths=(64, 128, 256, 512), backbone_strides=(1, 2, 2, 2), bottleneck=True,
            deep_stem=True, neck_channels=256, depth_net_channels=256, camera_channels=80,
            camera_bev_stride=2, lidar_channels=(16, 32, 64, 128), lidar_blocks=2, lidar_encoder_out=128,
            lidar_bev_channels=256, fusion_channels=256, bev_encoder_blocks=2, head_channels=64,
        ),
    )
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise SparsefuseError(f"unknown model {name!r}", f"choose one of: {', '.join(list_presets())}")
    return PRESETS[name]


def preset_rig(preset: Preset, rig: Rig | None = None) -> Rig:
    """The rig a model of ``preset`` is built for, resized to the preset's image size.

    Without ``rig``: the built-in nuScenes-like rig with the preset's grids. A given rig keeps
    its own grids (its calibration), checked against the architecture when the model is built.
    """
    if rig is None:
        rig = replace(load_rig(DEFAULT_RIG), depth_range=preset.depth_range, point_range=preset.point_range,
                      voxel_size=preset.voxel_size, bev_range=preset.bev_range, bev_cell=preset.bev_cell)
    height, width = preset.image_size
    if any(cam.image_size != (height, width) for cam in rig.cameras):
        rig = rig.resized(height, width)
    return rig


def build_model(name: str, rig: Rig | None = None, seed: int = 0) -> nn.Module:
    """A reference model in eval mode; same (name, rig, seed) -> same weights, bit for bit."""
    preset = get_preset(name)
    rig = preset_rig(preset, rig)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BEVFusion(preset, rig)
        init_weights(model)
    return model.eval()


def preset_spec(name: str) -> ModelSpec:
    """The presets' built-in spec: ``forward(images, points)`` with a dynamic point count; the
    heads' consumers apply a sigmoid (segmentation and heatmap) and read box regression only where
    the heatmap fires (boxes weighted by the heatmap's max class probability)."""
    get_preset(name)
    return validate_spec(ModelSpec(
        inputs=(InputSpec("images", "float32", 4), InputSpec("points", "float32", 2, ((0, "num_points"),))),
        outputs=(OutputSpec("seg_logits", "sigmoid"), OutputSpec("heatmap", "sigmoid"),
                 OutputSpec("boxes", "weighted", weight_by="heatmap")),
        modalities=(("camera", "camera"), ("lidar", "lidar"), ("fusion", "fusion"), ("head", "head")),
    ))
