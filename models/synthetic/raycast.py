"""Vectorized ray casting against the ground plane z = 0 and oriented boxes (slab test).

Shared by the LiDAR and the cameras, so both sensors see exactly the same geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROUND = -1  # hit id of the ground plane
NOTHING = -2  # hit id of a ray that hits nothing within range


@dataclass(frozen=True)
class Hits:
    """Nearest hit per ray: R rays."""

    t: np.ndarray  # [R] distance along the (unit) ray, m; inf where nothing was hit
    hit_id: np.ndarray  # [R] int64: box index, GROUND or NOTHING
    normal: np.ndarray  # [R, 3] unit surface normal in the ego frame (zeros where nothing)
    local: np.ndarray  # [R, 3] hit point in the hit box's frame (x along its heading), m


def cast(origin: np.ndarray, dirs: np.ndarray, boxes: np.ndarray, max_range: float) -> Hits:
    """Cast rays from one sensor ``origin[3]`` along unit ``dirs[R,3]`` against the ground and boxes[N,7].

    A box is (x, y, z, w, l, h, yaw); a sensor inside a box does not see that box.
    """
    dirs = np.asarray(dirs, np.float64)
    origin = np.asarray(origin, np.float64)
    n_rays = dirs.shape[0]
    t_best = np.full(n_rays, np.inf)
    hit_id = np.full(n_rays, NOTHING, np.int64)
    normal = np.zeros((n_rays, 3))
    local = np.zeros((n_rays, 3))

    down = dirs[:, 2] < -1e-9
    t_ground = np.where(down, -origin[2] / np.where(down, dirs[:, 2], -1.0), np.inf)
    ground = (t_ground > 0) & (t_ground <= max_range)
    t_best[ground] = t_ground[ground]
    hit_id[ground] = GROUND
    normal[ground] = (0.0, 0.0, 1.0)

    for i, (x, y, z, w, l, h, yaw) in enumerate(np.asarray(boxes, np.float64).reshape(-1, 7)):
        # cull with the bounding sphere first: only rays passing near the box get the slab test
        to_centre = np.array([x, y, z]) - origin
        along = dirs @ to_centre
        radius2 = 0.25 * (w * w + l * l + h * h)
        near_rays = float(to_centre @ to_centre) - along**2 <= radius2
        near_rays &= (along + np.sqrt(radius2) > 0) & (along - np.sqrt(radius2) < t_best)
        idx = np.flatnonzero(near_rays)
        if not idx.size:
            continue
        c, s = np.cos(yaw), np.sin(yaw)
        ox, oy, oz = (np.full(idx.size, -to_centre[k]) for k in range(3))
        dx, dy, dz = (dirs[idx, k] for k in range(3))
        lo = np.stack([c * ox + s * oy, -s * ox + c * oy, oz], axis=1)
        ld = np.stack([c * dx + s * dy, -s * dx + c * dy, dz], axis=1)
        half = np.array([l / 2, w / 2, h / 2])
        safe = np.where(np.abs(ld) < 1e-12, 1e-12, ld)
        t1, t2 = (-half - lo) / safe, (half - lo) / safe
        t_near = np.minimum(t1, t2)
        t_enter = t_near.max(axis=1)
        t_exit = np.maximum(t1, t2).min(axis=1)
        hit = (t_enter <= t_exit) & (t_enter > 1e-6) & (t_enter < t_best[idx])
        if not hit.any():
            continue
        rows = idx[hit]
        axis = t_near[hit].argmax(axis=1)
        n_local = np.zeros((rows.size, 3))
        n_local[np.arange(rows.size), axis] = -np.sign(ld[hit, axis])
        t_best[rows] = t_enter[hit]
        hit_id[rows] = i
        normal[rows] = np.stack(
            [c * n_local[:, 0] - s * n_local[:, 1], s * n_local[:, 0] + c * n_local[:, 1], n_local[:, 2]],
            axis=1,
        )
        local[rows] = lo[hit] + t_enter[hit, None] * ld[hit]
    return Hits(t_best, hit_id, normal, local)
