"""One synthetic frame = scene + LiDAR + 6 camera images + labels, deterministic per seed.

Frame dict (docs/contracts.md "Frames", plus labels):
- ``images`` [Ncam, 3, H, W] f32 in [0, 1] (multiples of 1/255); ``points`` [P, 4] f32 (x, y, z, intensity);
- ``gt_boxes`` [N, 7] f32 (x, y, z, w, l, h, yaw), ``gt_labels`` [N] i64 (CLASS_NAMES),
  only labelled objects (not clutter) inside the BEV grid that at least one sensor sees;
- ``seg_masks`` [5, Y, X] u8 (SEG_CLASSES) on the label grid; ``night`` bool; ``seed`` i64.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from sparsefuse.models.rig import Rig
from sparsefuse.models.synthetic.camera import render_cameras
from sparsefuse.models.synthetic.labels import BevGrid, seg_masks
from sparsefuse.models.synthetic.lidar import LidarConfig, simulate_lidar
from sparsefuse.models.synthetic.scene import CLUTTER, Scene, sample_lighting, sample_scene

MIN_LIDAR_POINTS = 1  # an object is labelled when it has this many LiDAR points ...
MIN_CAMERA_SUBPIXELS = 4  # ... or covers this many camera sub-pixels


@dataclass(frozen=True)
class SyntheticConfig:
    lidar: LidarConfig = field(default_factory=LidarConfig)
    supersample: int = 2  # camera sub-pixels per pixel side (anti-aliasing)
    night_prob: float = 0.25
    force_night: bool | None = None  # override the sampled lighting (evaluation splits)


def rig_grid(rig: Rig) -> BevGrid:
    """The rig's own BEV grid."""
    return BevGrid(rig.bev_range[0], rig.bev_range[1], rig.bev_cell, rig.bev_shape)


def make_scene(seed: int, config: SyntheticConfig) -> Scene:
    scene = sample_scene(seed, config.night_prob)
    if config.force_night is not None and scene.lighting.night != config.force_night:
        # re-sample only the lighting, deterministically, keeping the layout and objects
        rng = np.random.default_rng([seed, 7])
        scene = replace(scene, lighting=sample_lighting(rng, 1.0 if config.force_night else 0.0))
    return scene


def make_frame(
    seed: int, rig: Rig, grid: BevGrid | None = None, config: SyntheticConfig | None = None
) -> dict[str, np.ndarray]:
    """Render one frame for ``rig`` (already resized to the network input) with labels on ``grid``."""
    config = config or SyntheticConfig()
    grid = grid or rig_grid(rig)
    scene = make_scene(seed, config)
    points, point_ids = simulate_lidar(scene, config.lidar, rig.point_range, np.random.default_rng([seed, 1]))
    images, visible = render_cameras(scene, rig, config.supersample, np.random.default_rng([seed, 2]))
    lidar_count = np.bincount(point_ids[point_ids >= 0], minlength=len(scene.labels))
    seen = (lidar_count >= MIN_LIDAR_POINTS) | (visible >= MIN_CAMERA_SUBPIXELS)
    keep = seen & (scene.labels != CLUTTER)
    keep = keep & grid.contains(scene.boxes[:, :2]) if len(scene.labels) else keep
    boxes, labels = scene.boxes[keep], scene.labels[keep]
    return {
        "images": images,
        "points": points,
        "gt_boxes": boxes.astype(np.float32),
        "gt_labels": labels.astype(np.int64),
        "seg_masks": seg_masks(scene.roads, boxes, labels, grid),
        "night": np.bool_(scene.lighting.night),
        "seed": np.int64(seed),
    }
