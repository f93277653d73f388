"""Sensor rig: cameras (intrinsics, camera->ego extrinsics, image size), depth bins and the
LiDAR / BEV grids. Loaded from JSON and validated once at the edge.

Conventions:
- ego frame: x forward, y left, z up, metres; camera frame: x right, y down, z forward (OpenCV);
- ``cam_to_ego`` is a 4x4 rigid transform taking camera-frame points to the ego frame;
- ``intrinsics`` is 3x3 for the image of size ``image_size`` = (H, W) pixels;
- ``point_range`` = [xmin, ymin, zmin, xmax, ymax, zmax] m, ``voxel_size`` = [vx, vy, vz] m;
- ``bev_range`` = [xmin, ymin, xmax, ymax] m with square cells of ``bev_cell`` m;
- depth bins: ``depth_range`` = [dmin, dmax, step] m;
  bin i has depth dmin + i*step for i in [0, D), D = round((dmax - dmin)/step) (BEVFusion).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sparsefuse.errors import SparsefuseError
from sparsefuse.plugins.voxelize import grid_shape

RIG_DIR = Path(__file__).parent / "rigs"
SCHEMA_VERSION = 1
MAX_CAMERAS = 64
MAX_IMAGE_SIDE = 16384  # pixels
MAX_TRANSLATION_M = 1000.0  # a sensor mounted more than 1 km from the ego origin is a unit mistake
MAX_GRID_BYTES = 8 * 2**30  # refuse a rig whose grids would need more than this (estimated, not allocated)


@dataclass(frozen=True)
class Camera:
    name: str
    image_size: tuple[int, int]  # (H, W) pixels
    intrinsics: tuple[tuple[float, ...], ...]  # 3x3
    cam_to_ego: tuple[tuple[float, ...], ...]  # 4x4

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the field's name for it
        return np.asarray(self.intrinsics, dtype=np.float64)

    @property
    def T_cam_to_ego(self) -> np.ndarray:  # noqa: N802
        return np.asarray(self.cam_to_ego, dtype=np.float64)

    def resized(self, height: int, width: int) -> Camera:
        """The same camera with the image resized to (height, width): intrinsics scaled."""
        sy, sx = height / self.image_size[0], width / self.image_size[1]
        k = self.K.copy()
        k[0] *= sx
        k[1] *= sy
        return replace(self, image_size=(height, width), intrinsics=_tuple2d(k))


@dataclass(frozen=True)
class Rig:
    name: str
    cameras: tuple[Camera, ...]
    depth_range: tuple[float, float, float]  # (dmin, dmax, step) m
    point_range: tuple[float, float, float, float, float, float]
    voxel_size: tuple[float, float, float]
    bev_range: tuple[float, float, float, float]  # (xmin, ymin, xmax, ymax) m
    bev_cell: float  # m
    lidar_to_ego: tuple[tuple[float, ...], ...] = field(
        default=((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0))
    )

    @property
    def num_depth_bins(self) -> int:
        dmin, dmax, step = self.depth_range
        return int(round((dmax - dmin) / step))

    @property
    def depth_bins(self) -> np.ndarray:
        """[D] depth of each bin, metres."""
        dmin, _, step = self.depth_range
        return dmin + step * np.arange(self.num_depth_bins, dtype=np.float64)

    @property
    def bev_shape(self) -> tuple[int, int]:
        """(Y, X) BEV cells."""
        return bev_grid_shape(self.bev_range, self.bev_cell)

    @property
    def voxel_grid(self) -> tuple[int, int, int]:
        """(Z, Y, X) voxel counts, exactly as Voxelize bins them."""
        return grid_shape(list(self.point_range), list(self.voxel_size))

    def resized(self, height: int, width: int) -> Rig:
        return replace(self, cameras=tuple(c.resized(height, width) for c in self.cameras))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "cameras": [
                {"name": c.name, "image_size": list(c.image_size),
                 "intrinsics": [list(r) for r in c.intrinsics],
                 "cam_to_ego": [list(r) for r in c.cam_to_ego]}
                for c in self.cameras
            ],
            "depth_range": list(self.depth_range),
            "point_range": list(self.point_range),
            "voxel_size": list(self.voxel_size),
            "bev_range": list(self.bev_range),
            "bev_cell": self.bev_cell,
            "lidar_to_ego": [list(r) for r in self.lidar_to_ego],
        }


def bev_grid_shape(bev_range: tuple[float, float, float, float], cell_m: float) -> tuple[int, int]:
    """(Y, X) cells of a BEV grid over [xmin, ymin, xmax, ymax] m with square cells of ``cell_m`` m."""
    xmin, ymin, xmax, ymax = bev_range
    return int(round((ymax - ymin) / cell_m)), int(round((xmax - xmin) / cell_m))


def _tuple2d(a: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in a)


def _bad(path: str, problem: str) -> SparsefuseError:
    return SparsefuseError(f"malformed rig {path}: {problem}",
                           "see models/rigs/nuscenes_6cam.json for the expected fields")


def rig_from_dict(data: Any, source: str = "<dict>") -> Rig:
    """Validate and build a Rig; every problem is one SparsefuseError naming the field."""
    if not isinstance(data, dict):
        raise _bad(source, "top level must be a JSON object")

    def need(obj: dict, key: str, where: str) -> Any:
        if key not in obj:
            raise _bad(source, f"missing field '{where}{key}'")
        return obj[key]

    def floats(value: Any, n: int, where: str) -> tuple[float, ...]:
        if not isinstance(value, list | tuple) or len(value) != n:
            raise _bad(source, f"'{where}' must be a list of {n} numbers")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise _bad(source, f"'{where}' must be a list of {n} numbers")
        try:
            out = tuple(float(v) for v in value)
        except OverflowError:
            raise _bad(source, f"'{where}' contains a number too large for a float") from None
        if not all(math.isfinite(v) for v in out):
            raise _bad(source, f"'{where}' contains a non-finite number")
        return out

    def rigid(value: Any, where: str) -> tuple[tuple[float, ...], ...]:
        """A 4x4 rigid transform: orthonormal rotation with det +1, last row 0 0 0 1, translation
        within MAX_TRANSLATION_M (a mistaken unit, e.g. millimetres, is caught here)."""
        t = matrix(value, 4, where)
        arr = np.asarray(t)
        rot = arr[:3, :3]
        if not np.allclose(arr[3], [0.0, 0.0, 0.0, 1.0]):
            raise _bad(source, f"'{where}' last row must be [0, 0, 0, 1] (a rigid transform)")
        if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-4) or np.linalg.det(rot) < 0:
            raise _bad(source, f"'{where}' rotation is not orthonormal with determinant +1")
        dist = float(np.linalg.norm(arr[:3, 3]))
        if dist > MAX_TRANSLATION_M:
            raise _bad(source, f"'{where}' translation is {dist:.4g} m from the ego origin "
                               f"(more than {MAX_TRANSLATION_M:g} m; metres are expected)")
        return t

    def matrix(value: Any, n: int, where: str) -> tuple[tuple[float, ...], ...]:
        if not isinstance(value, list | tuple) or len(value) != n:
            raise _bad(source, f"'{where}' must be a {n}x{n} matrix")
        return tuple(floats(row, n, f"{where}[{i}]") for i, row in enumerate(value))

    cams_raw = need(data, "cameras", "")
    if not isinstance(cams_raw, list) or not cams_raw:
        raise _bad(source, "'cameras' must be a non-empty list")
    if len(cams_raw) > MAX_CAMERAS:
        raise _bad(source, f"{len(cams_raw)} cameras (at most {MAX_CAMERAS})")
    name = data.get("name", "rig")
    if not isinstance(name, str):
        raise _bad(source, "'name' must be a string")
    cameras = []
    for i, cam in enumerate(cams_raw):
        where = f"cameras[{i}]."
        if not isinstance(cam, dict):
            raise _bad(source, f"'cameras[{i}]' must be an object")
        size = floats(need(cam, "image_size", where), 2, where + "image_size")
        if min(size) < 1 or max(size) > MAX_IMAGE_SIDE or any(s != int(s) for s in size):
            raise _bad(source, f"'{where}image_size' must be two integers (H, W) in [1, {MAX_IMAGE_SIDE}]")
        k = matrix(need(cam, "intrinsics", where), 3, where + "intrinsics")
        if k[0][0] <= 0 or k[1][1] <= 0:
            raise _bad(source, f"'{where}intrinsics' focal lengths must be positive")
        t = rigid(need(cam, "cam_to_ego", where), where + "cam_to_ego")
        cam_name = cam.get("name", f"cam{i}")
        if not isinstance(cam_name, str):
            raise _bad(source, f"'{where}name' must be a string")
        cameras.append(Camera(cam_name, (int(size[0]), int(size[1])), k, t))

    depth = floats(need(data, "depth_range", ""), 3, "depth_range")
    if not (0 < depth[0] < depth[1] and depth[2] > 0):
        raise _bad(source, "'depth_range' must be [dmin, dmax, step] with 0 < dmin < dmax, step > 0")
    pr = floats(need(data, "point_range", ""), 6, "point_range")
    vs = floats(need(data, "voxel_size", ""), 3, "voxel_size")
    if any(pr[i + 3] <= pr[i] for i in range(3)) or min(vs) <= 0:
        raise _bad(source, "'point_range' must have max > min per axis and 'voxel_size' must be positive")
    bev = floats(need(data, "bev_range", ""), 4, "bev_range")
    cell = floats([need(data, "bev_cell", "")], 1, "bev_cell")[0]
    if bev[2] <= bev[0] or bev[3] <= bev[1] or cell <= 0:
        raise _bad(source, "'bev_range' must be [xmin, ymin, xmax, ymax] with max > min and 'bev_cell' > 0")
    lidar = rigid(data.get("lidar_to_ego", np.eye(4).tolist()), "lidar_to_ego")
    rig = Rig(name, tuple(cameras), depth, pr, vs, bev, cell, lidar)  # type: ignore[arg-type]
    _check_memory(rig, source)
    return rig


def grid_memory_estimate(rig: Rig) -> dict[str, float]:
    """Bytes of the largest dense tensors the rig's grids imply, computed from the numbers alone
    (nothing allocated): the camera frustum (Ncam x D depth bins x a 32x88 feature map, BEVFusion's
    256x704 input at stride 8, x 3 float32 coordinates), the BEV grid (Y x X cells x 80 float32
    channels, BEVFusion's camera BEV width) and the voxel grid's linear index (Z x Y x X int32)."""
    (dmin, dmax, step), cameras = rig.depth_range, len(rig.cameras)
    (xmin, ymin, zmin, xmax, ymax, zmax), (vx, vy, vz) = rig.point_range, rig.voxel_size
    bxmin, bymin, bxmax, bymax = rig.bev_range
    depth_bins = (dmax - dmin) / step
    bev_cells = ((bymax - bymin) / rig.bev_cell) * ((bxmax - bxmin) / rig.bev_cell)
    voxel_cells = ((xmax - xmin) / vx) * ((ymax - ymin) / vy) * ((zmax - zmin) / vz)
    return {"frustum": cameras * depth_bins * 32 * 88 * 3 * 4, "bev grid": bev_cells * 80 * 4,
            "voxel grid": voxel_cells * 4}


def _check_memory(rig: Rig, source: str) -> None:
    for grid, need_bytes in grid_memory_estimate(rig).items():
        if not need_bytes <= MAX_GRID_BYTES:  # also catches inf
            raise SparsefuseError(
                f"malformed rig {source}: its {grid} would need about {need_bytes / 2**30:.3g} GiB "
                f"(more than {MAX_GRID_BYTES / 2**30:g} GiB)",
                "use coarser cells (bev_cell, voxel_size), a larger depth step or smaller ranges",
            )


def load_rig(path: str | Path) -> Rig:
    """Load a rig JSON file, or a built-in rig by name (e.g. ``nuscenes_6cam``)."""
    path = Path(path)
    if not path.suffix and not path.exists():
        path = RIG_DIR / f"{path.name}.json"
    if not path.is_file():
        raise SparsefuseError(f"rig file not found: {path}",
                              f"pass a JSON rig file, or one of: {', '.join(builtin_rigs())}")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise _bad(str(path), f"not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise SparsefuseError(f"cannot read rig file {path}: {exc.strerror or exc}",
                              "pass a readable JSON rig file") from None
    except json.JSONDecodeError as exc:
        raise _bad(str(path), f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except ValueError as exc:  # NaN / Infinity literals, or an integer too long to parse
        raise _bad(str(path), str(exc)) from None
    return rig_from_dict(data, str(path))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def builtin_rigs() -> list[str]:
    return sorted(p.stem for p in RIG_DIR.glob("*.json"))


def _look_at_cam_to_ego(
    yaw_deg: float, position: tuple[float, float, float], pitch_deg: float = 0.0
) -> np.ndarray:
    """Camera looking along ego heading ``yaw`` (deg, CCW from +x), optical axis level (+pitch down)."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    forward = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), -math.sin(pitch)])
    left = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
    up = np.cross(forward, left)
    rot = np.stack([-left, -up, forward], axis=1)  # columns: cam x (right), cam y (down), cam z (fwd) in ego
    t = np.eye(4)
    t[:3, :3] = rot
    t[:3, 3] = position
    return t


def nuscenes_like_rig() -> Rig:
    """A 6-camera rig with nuScenes-like geometry (1600x900 images, ~70 deg front FOV, 110 deg back)."""
    layout = [  # name, yaw deg, x, y, z, focal px
        ("CAM_FRONT", 0.0, 1.7, 0.0, 1.5, 1266.0),
        ("CAM_FRONT_RIGHT", -55.0, 1.5, -0.5, 1.5, 1260.0),
        ("CAM_BACK_RIGHT", -110.0, 1.0, -0.5, 1.5, 1260.0),
        ("CAM_BACK", 180.0, 0.0, 0.0, 1.5, 800.0),
        ("CAM_BACK_LEFT", 110.0, 1.0, 0.5, 1.5, 1260.0),
        ("CAM_FRONT_LEFT", 55.0, 1.5, 0.5, 1.5, 1260.0),
    ]
    cameras = []
    for name, yaw, x, y, z, f in layout:
        k = np.array([[f, 0.0, 800.0], [0.0, f, 450.0], [0.0, 0.0, 1.0]])
        cameras.append(Camera(name, (900, 1600), _tuple2d(k), _tuple2d(_look_at_cam_to_ego(yaw, (x, y, z)))))
    return Rig(
        name="nuscenes_6cam",
        cameras=tuple(cameras),
        depth_range=(1.0, 60.0, 0.5),
        point_range=(-54.0, -54.0, -5.0, 54.0, 54.0, 3.0),
        voxel_size=(0.075, 0.075, 0.2),
        bev_range=(-54.0, -54.0, 54.0, 54.0),
        bev_cell=0.6,
    )
