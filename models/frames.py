"""Deterministic random but plausible model inputs, for export and verification (until the
synthetic driving benchmark provides rendered frames).

A frame is ``dict(images=[Ncam,3,H,W] f32 in [0,1], points=[P,4] f32 (x, y, z, intensity))``
in the ego frame (docs/contracts.md). Points look like a LiDAR sweep: a ground plane whose density
falls with range, box-shaped objects, a far wall of vegetation/buildings, and a few percent of
points outside the preset's point range (which Voxelize must drop).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from sparsefuse.errors import SparsefuseError
from sparsefuse.models.presets import Preset

GROUND_Z = 0.0  # m: the ego frame sits on the ground (cameras at ~1.5 m, models/rig.py)
SHARES = {"ground": 0.55, "objects": 0.25, "walls": 0.15}  # the rest is outside the range
MAX_POINTS = 4_000_000  # per frame: ten nuScenes-style sweeps are ~0.35 M; more is a typo, not a scan


def check_num_points(value: int | None, flag: str) -> None:
    """A CLI point count: None (the preset's), or 0..MAX_POINTS (refused before anything is allocated)."""
    if value is not None and not 0 <= value <= MAX_POINTS:
        raise SparsefuseError(f"{flag} {value} is outside [0, {MAX_POINTS}]",
                              f"give the LiDAR points per frame, e.g. {flag} 30000, or leave it out")


def random_frame(preset: Preset, seed: int, num_points: int | None = None,
                 num_cameras: int | None = None) -> dict[str, torch.Tensor]:
    """Images and points for ``preset``; same arguments -> identical tensors.

    Without ``num_points`` the count varies with the seed around ``preset.num_points_typical``
    (+-20 %), so that frames exercise the dynamic point count. ``num_cameras`` defaults to the
    preset's (pass ``len(rig.cameras)`` for a model built on a user rig).
    """
    rng = np.random.default_rng(seed)
    if num_points is None:
        num_points = int(round(preset.num_points_typical * rng.uniform(0.8, 1.2)))
    if num_points < 0:
        raise ValueError(f"num_points must be >= 0, got {num_points}")
    cameras = preset.num_cameras if num_cameras is None else num_cameras
    return {"images": random_images(rng, preset.image_size, cameras),
            "points": random_points(rng, preset, num_points)}


def random_images(rng: np.random.Generator, image_size: tuple[int, int], num_cameras: int) -> torch.Tensor:
    """[Ncam,3,H,W] f32 in [0,1]: sky above, road below, smooth blobs and a little pixel noise."""
    height, width = image_size
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    sky = np.array([0.55, 0.65, 0.85], dtype=np.float32)[:, None, None]
    road = np.array([0.35, 0.33, 0.30], dtype=np.float32)[:, None, None]
    horizon = 0.45 + 0.1 * rng.uniform(-1, 1, size=(num_cameras, 1, 1, 1)).astype(np.float32)
    t = np.clip((rows[None, None] - horizon) * 8.0 + 0.5, 0.0, 1.0)  # [Ncam,1,H,1]
    base = (1 - t) * sky[None] + t * road[None]
    coarse = rng.uniform(-0.25, 0.25, size=(num_cameras, 3, max(height // 16, 1), max(width // 16, 1)))
    blobs = F.interpolate(torch.from_numpy(coarse.astype(np.float32)), size=(height, width), mode="bilinear",
                          align_corners=False)
    noise = rng.normal(0.0, 0.02, size=(num_cameras, 3, height, width)).astype(np.float32)
    images = torch.from_numpy(base).expand(-1, 3, height, width) + blobs + torch.from_numpy(noise)
    return images.clamp(0.0, 1.0).contiguous()


def random_points(rng: np.random.Generator, preset: Preset, num_points: int) -> torch.Tensor:
    """[P,4] f32 LiDAR-like points; about 5 % fall outside ``preset.point_range``."""
    counts = rng.multinomial(num_points, [*SHARES.values(), 1.0 - sum(SHARES.values())])
    x_lo, y_lo, z_lo, x_hi, y_hi, z_hi = preset.point_range
    reach = 0.95 * min(x_hi, y_hi, -x_lo, -y_lo)
    parts = [
        _ground(rng, counts[0], reach),
        _objects(rng, counts[1], reach),
        _walls(rng, counts[2], reach),
        _outside(rng, counts[3], preset.point_range),
    ]
    xyz = np.concatenate(parts, axis=0)
    xyz = xyz[rng.permutation(xyz.shape[0])]
    intensity = rng.uniform(0.0, 1.0, size=(xyz.shape[0], 1))
    return torch.from_numpy(np.concatenate([xyz, intensity], axis=1).astype(np.float32))


def _polar(rng: np.random.Generator, n: int, r: np.ndarray, z: np.ndarray) -> np.ndarray:
    azimuth = rng.uniform(-np.pi, np.pi, size=n)
    return np.stack([r * np.cos(azimuth), r * np.sin(azimuth), z], axis=1)


def _ground(rng: np.random.Generator, n: int, reach: float) -> np.ndarray:
    r = np.minimum(2.0 + rng.exponential(reach / 4.0, size=n), reach)
    return _polar(rng, n, r, GROUND_Z + rng.normal(0.0, 0.05, size=n))


def _objects(rng: np.random.Generator, n: int, reach: float) -> np.ndarray:
    """Points on the surfaces of 10..40 boxes (cars, trucks, pedestrians, barriers)."""
    if n == 0:
        return np.zeros((0, 3))
    num_boxes = int(rng.integers(10, 41))
    sizes = rng.choice(np.array([[4.5, 1.9, 1.6], [10.0, 2.6, 3.4], [0.7, 0.7, 1.8], [2.0, 0.5, 1.0]]),
                       size=num_boxes)
    centres_r = rng.uniform(4.0, 0.8 * reach, size=num_boxes)
    centres = _polar(rng, num_boxes, centres_r, GROUND_Z + sizes[:, 2] / 2)
    yaw = rng.uniform(-np.pi, np.pi, size=num_boxes)
    which = rng.integers(0, num_boxes, size=n)
    local = rng.uniform(-0.5, 0.5, size=(n, 3))
    face = rng.integers(0, 3, size=n)
    local[np.arange(n), face] = rng.choice([-0.5, 0.5], size=n)  # snap one axis onto a face
    local *= sizes[which]
    c, s = np.cos(yaw[which]), np.sin(yaw[which])
    rotated = np.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]], 1)
    return centres[which] + rotated


def _walls(rng: np.random.Generator, n: int, reach: float) -> np.ndarray:
    r = rng.uniform(0.6 * reach, reach, size=n)
    return _polar(rng, n, r, rng.uniform(GROUND_Z, GROUND_Z + 3.0, size=n))


def _outside(rng: np.random.Generator, n: int, point_range: tuple[float, ...]) -> np.ndarray:
    """Beyond the XY range, or above / below the z range."""
    x_lo, y_lo, z_lo, x_hi, y_hi, z_hi = point_range
    far = max(x_hi, y_hi, -x_lo, -y_lo) * 1.5
    r = rng.uniform(0.0, far, size=n)
    z = np.where(r > far / 1.5 * 1.42, rng.uniform(GROUND_Z, GROUND_Z + 2.0, size=n),
                 np.where(rng.uniform(size=n) < 0.5, rng.uniform(z_hi + 0.1, z_hi + 5.0, size=n),
                          rng.uniform(z_lo - 5.0, z_lo - 0.1, size=n)))
    return _polar(rng, n, r, z)
