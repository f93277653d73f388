"""Procedural camera + LiDAR driving benchmark: scenes, sensors against the rig, BEV labels."""

from sparsefuse.models.synthetic.generate import SyntheticConfig, make_frame, make_scene, rig_grid
from sparsefuse.models.synthetic.labels import BevGrid, DetTargets, detection_targets, seg_masks
from sparsefuse.models.synthetic.lidar import LidarConfig
from sparsefuse.models.synthetic.scene import CLASS_NAMES, SEG_CLASSES, Scene, sample_scene

__all__ = [
    "CLASS_NAMES",
    "SEG_CLASSES",
    "BevGrid",
    "DetTargets",
    "LidarConfig",
    "Scene",
    "SyntheticConfig",
    "detection_targets",
    "make_frame",
    "make_scene",
    "rig_grid",
    "sample_scene",
    "seg_masks",
]
