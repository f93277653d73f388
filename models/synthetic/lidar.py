"""A 32-beam rotating LiDAR (HDL-32E-like, as on nuScenes) ray-cast against the scene.

Points come back in the ego frame as [P, 4] float32 (x, y, z, intensity in [0, 1]).
Far objects get few points (fixed angular resolution); the point count varies per frame
(random azimuth phase, dropout, what is in range).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsefuse.models.synthetic.raycast import GROUND, cast
from sparsefuse.models.synthetic.scene import GRASS, MARKING, ROAD, SIDEWALK, Scene, ground_material


@dataclass(frozen=True)
class LidarConfig:
    beams: int = 32
    elevation_deg: tuple[float, float] = (-30.67, 10.67)  # lowest, highest beam
    azimuth_steps: int = 500  # firings per revolution
    mount: tuple[float, float, float] = (0.94, 0.0, 1.84)  # sensor origin in the ego frame, m
    max_range: float = 70.0  # m
    range_noise: float = 0.02  # m, std
    dropout: float = 0.05  # base probability a return is lost


# Ground materials return nearly alike (incidence angle dominates), so the drivable area is mostly
# a camera cue; paint is only faintly brighter.
_GROUND_REFLECTIVITY = {GRASS: 0.10, ROAD: 0.08, SIDEWALK: 0.11, MARKING: 0.2}


def beam_directions(config: LidarConfig, phase: float) -> np.ndarray:
    """Unit ray directions [beams * azimuth_steps, 3] in the ego frame."""
    elev = np.deg2rad(np.linspace(config.elevation_deg[0], config.elevation_deg[1], config.beams))
    azim = phase + 2 * np.pi * np.arange(config.azimuth_steps) / config.azimuth_steps
    el, az = np.meshgrid(elev, azim, indexing="ij")
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)


def simulate_lidar(
    scene: Scene, config: LidarConfig, point_range: tuple[float, ...], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(points[P,4] f32 in the ego frame, hit box id per point [P] (-1 = ground)).

    Only points inside ``point_range`` = (xmin, ymin, zmin, xmax, ymax, zmax) are kept.
    """
    dirs = beam_directions(config, float(rng.uniform(0, 2 * np.pi / config.azimuth_steps)))
    origin = np.asarray(config.mount, np.float64)
    hits = cast(origin, dirs, scene.boxes, config.max_range)
    keep = np.isfinite(hits.t)
    t, ids, normal, d = hits.t[keep], hits.hit_id[keep], hits.normal[keep], dirs[keep]
    xyz = origin + t[:, None] * d
    reflect = np.empty(t.shape)
    on_ground = ids == GROUND
    mat = ground_material(scene.roads, xyz[on_ground, :2])
    reflect[on_ground] = (
        np.vectorize(_GROUND_REFLECTIVITY.__getitem__, otypes=[float])(mat) if mat.size else 0.0
    )
    reflect[~on_ground] = scene.reflectivity[ids[~on_ground]]
    cos_inc = np.abs(np.sum(normal * d, axis=1))
    intensity = reflect * (0.3 + 0.7 * cos_inc) * (1.0 + 0.1 * rng.standard_normal(t.shape))
    noisy_t = t + config.range_noise * rng.standard_normal(t.shape)
    xyz = origin + noisy_t[:, None] * d
    p_drop = config.dropout + 0.35 * (t / config.max_range) ** 2 + 0.1 * (intensity < 0.05)
    kept = rng.random(t.shape) >= p_drop
    pr = point_range
    inside = np.all((xyz >= pr[:3]) & (xyz < pr[3:]), axis=1)
    sel = kept & inside
    points = np.concatenate([xyz[sel], np.clip(intensity[sel], 0.0, 1.0)[:, None]], axis=1)
    return points.astype(np.float32), ids[sel]
