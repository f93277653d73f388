"""Camera rendering by per-pixel ray casting (supersampled) against the ground and the boxes.

Each pixel's ray goes through K^-1 [u, v, 1] (u, v at pixel centres = index + 0.5 convention of
the sub-samples) and cam_to_ego, so the projection is exactly the rig's pinhole model; the nearest
hit wins (z-buffer). Images come back as [Ncam, 3, H, W] float32 in [0, 1], quantized to 1/255.
"""

from __future__ import annotations

import numpy as np

from sparsefuse.models.rig import Camera, Rig
from sparsefuse.models.synthetic.raycast import GROUND, NOTHING, Hits, cast
from sparsefuse.models.synthetic.scene import CLUTTER, GRASS, MARKING, ROAD, SIDEWALK, Scene, ground_material

_GROUND_RGB = {
    GRASS: (0.24, 0.42, 0.18),
    ROAD: (0.30, 0.30, 0.32),
    SIDEWALK: (0.62, 0.6, 0.56),
    MARKING: (0.92, 0.92, 0.88),
}
_SKY_DAY, _SKY_NIGHT = np.array([0.55, 0.7, 0.92]), np.array([0.03, 0.03, 0.07])
_GLASS, _TYRE, _SKIN, _TROUSERS = (0.1, 0.12, 0.16), (0.05, 0.05, 0.05), (0.85, 0.65, 0.5), (0.15, 0.15, 0.28)
MAX_VIEW = 150.0  # m, render distance


def pixel_rays(camera: Camera, supersample: int) -> np.ndarray:
    """Unit ego-frame ray directions [H*s, W*s, 3] through the sub-pixel centres."""
    height, width = camera.image_size
    offs = (np.arange(supersample) + 0.5) / supersample
    u = (np.arange(width)[:, None] + offs[None]).reshape(-1)
    v = (np.arange(height)[:, None] + offs[None]).reshape(-1)
    uu, vv = np.meshgrid(u, v)
    pix = np.stack([uu, vv, np.ones_like(uu)], -1)
    rays = pix @ np.linalg.inv(camera.K).T @ camera.T_cam_to_ego[:3, :3].T
    return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


def project_points(camera: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ego points [N, 3] -> (pixel coordinates (u, v) [N, 2], depth along the optical axis [N], m).

    Pixel (row i, column j) covers u in [j, j + 1), v in [i, i + 1).
    """
    t = camera.T_cam_to_ego
    cam = (np.asarray(points, np.float64) - t[:3, 3]) @ t[:3, :3]
    uvw = cam @ camera.K.T
    return uvw[:, :2] / uvw[:, 2:3], cam[:, 2]


def _hash01(ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Deterministic value noise in [0, 1) from integer lattice coordinates."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF) / 65536.0


def _ground_colour(scene: Scene, xy: np.ndarray) -> np.ndarray:
    mat = ground_material(scene.roads, xy)
    rgb = np.zeros(xy.shape[:-1] + (3,))
    for m, colour in _GROUND_RGB.items():
        rgb[mat == m] = colour
    coarse = _hash01(np.floor(xy[..., 0] / 0.7), np.floor(xy[..., 1] / 0.7))
    fine = _hash01(np.floor(xy[..., 0] / 0.2), np.floor(xy[..., 1] / 0.2))
    texture = 1.0 + 0.12 * (coarse - 0.5) + 0.08 * (fine - 0.5)
    tiles = (mat == SIDEWALK) & ((np.mod(xy[..., 0], 1.0) < 0.06) | (np.mod(xy[..., 1], 1.0) < 0.06))
    rgb[tiles] *= 0.8
    return rgb * texture[..., None]


def _box_colour(scene: Scene, ids: np.ndarray, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(albedo [R,3], emissive [R,3]) of box hits, with class-specific textures."""
    labels, boxes = scene.labels[ids], scene.boxes[ids]
    albedo = scene.colors[ids].copy()
    emissive = np.zeros_like(albedo)
    hz = local[:, 2] / boxes[:, 5] + 0.5  # 0 at the bottom, 1 at the top
    hx = local[:, 0] / boxes[:, 4]  # -0.5 rear .. 0.5 front
    hy = local[:, 1] / boxes[:, 3]
    car, truck, ped, barrier = (labels == k for k in range(4))
    albedo[car & (hz > 0.55) & (hz < 0.9) & (np.abs(hx) < 0.35)] = _GLASS
    albedo[(car | truck) & (hz < 0.22) & (np.abs(np.abs(hx) - 0.3) < 0.1)] = _TYRE
    cargo = truck & (hx < 0.25)
    albedo[cargo] = np.array([0.78, 0.78, 0.76]) * (1.0 - 0.1 * (np.mod(hx[cargo] * 8, 1.0) < 0.1))[:, None]
    albedo[truck & ~cargo & (hz > 0.6) & (hz < 0.85)] = _GLASS
    albedo[ped & (hz > 0.86)] = _SKIN
    albedo[ped & (hz < 0.47)] = _TROUSERS
    clutter = labels == CLUTTER  # mottled (foliage, grime, rust) instead of smooth paint
    cell = np.floor(local[clutter] / 0.25)
    albedo[clutter] *= (0.6 + 0.8 * _hash01(cell[:, 0] + 7 * cell[:, 1], cell[:, 2]))[:, None]
    stripes = barrier & (np.mod(local[:, 0], 0.6) < 0.3) & (hz > 0.45)
    albedo[stripes] = (0.95, 0.95, 0.95)
    lamp = (car | truck) & (np.abs(hz - 0.35) < 0.07) & (np.abs(np.abs(hy) - 0.35) < 0.12)
    emissive[lamp & (hx > 0.49)] = (0.9, 0.9, 0.7)  # headlamps
    emissive[lamp & (hx < -0.49)] = (0.8, 0.05, 0.05)  # tail lamps
    return albedo, emissive


def _shade(scene: Scene, hits: Hits, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Radiance [R, 3] before exposure and sensor noise."""
    light = scene.lighting
    out = np.zeros(dirs.shape)
    elev = np.clip(dirs[:, 2], 0.0, 1.0)[:, None]
    sky = (_SKY_NIGHT if light.night else _SKY_DAY) * (1.0 - 0.4 * elev)
    out[:] = sky
    point = origin + np.where(np.isfinite(hits.t), hits.t, 0.0)[:, None] * dirs
    ground = hits.hit_id == GROUND
    out[ground] = _ground_colour(scene, point[ground, :2])
    on_box = hits.hit_id >= 0
    emissive = np.zeros_like(out)
    if on_box.any():
        albedo, emissive[on_box] = _box_colour(scene, hits.hit_id[on_box], hits.local[on_box])
        out[on_box] = albedo
    sun = np.array([np.cos(light.sun_azimuth) * 0.6, np.sin(light.sun_azimuth) * 0.6, 0.8])
    lambert = np.clip(hits.normal @ (sun / np.linalg.norm(sun)), 0.0, 1.0)
    solid = ground | on_box
    if light.night:
        # ego headlights: forward cone, falling off with distance; otherwise only ambient light
        fwd = np.clip(dirs[:, 0], 0.0, 1.0) ** 6
        lit = 0.35 + 2.5 * fwd * np.exp(-np.where(np.isfinite(hits.t), hits.t, 1e3) / 15.0)
        out[solid] *= lit[solid, None]
        out += emissive * 3.0
    else:
        out[solid] *= (0.5 + 0.5 * lambert[solid])[:, None]
        haze = 1.0 - np.exp(-np.where(np.isfinite(hits.t), hits.t, 1e3) / 250.0)
        out[solid] = out[solid] * (1 - haze[solid, None]) + _SKY_DAY * haze[solid, None]
        out += emissive * 0.3
    out[hits.hit_id == NOTHING] = sky[hits.hit_id == NOTHING]
    return out


def render_camera(
    scene: Scene, camera: Camera, supersample: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(image [3, H, W] f32 in [0, 1], visible sub-pixels per box [N] int64)."""
    height, width = camera.image_size
    dirs = pixel_rays(camera, supersample).reshape(-1, 3)
    origin = camera.T_cam_to_ego[:3, 3]
    hits = cast(origin, dirs, scene.boxes, MAX_VIEW)
    rgb = _shade(scene, hits, origin, dirs).reshape(height, supersample, width, supersample, 3).mean((1, 3))
    rgb = rgb * scene.lighting.brightness + scene.lighting.noise_std * rng.standard_normal(rgb.shape)
    image = np.round(np.clip(rgb, 0.0, 1.0) * 255.0) / 255.0
    visible = np.bincount(hits.hit_id[hits.hit_id >= 0], minlength=len(scene.labels))
    return image.transpose(2, 0, 1).astype(np.float32), visible.astype(np.int64)


def render_cameras(
    scene: Scene, rig: Rig, supersample: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(images [Ncam, 3, H, W] f32, visible sub-pixels per box summed over cameras [N])."""
    images, visible = [], np.zeros(len(scene.labels), np.int64)
    for cam in rig.cameras:
        image, vis = render_camera(scene, cam, supersample, rng)
        images.append(image)
        visible += vis
    return np.stack(images), visible
