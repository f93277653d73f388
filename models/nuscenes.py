"""nuScenes adapter: the rig from calibrated_sensor, LiDAR sweeps, camera images, map masks and
3D boxes, as frames in the same format as models/synthetic (for users who have the dataset).

It reads the nuScenes JSON tables directly (``<dataroot>/<version>/<table>.json``, the devkit's
table and field names) instead of depending on nuscenes-devkit, whose install pulls in OpenCV,
Shapely, scikit-learn and pycocotools. Conventions of the dataset:
- quaternions are (w, x, y, z); ``calibrated_sensor`` is sensor -> ego, ``ego_pose`` is ego -> global;
- ``sample_annotation`` boxes are global, ``size`` = (w, l, h) m;
- LiDAR files ``*.pcd.bin`` are float32 x 5 (x, y, z, intensity 0..255, ring) in the sensor frame;
- ``map.json`` rows point to the semantic prior masks (PNG, 0.1 m per pixel, row 0 at the top,
  i.e. pixel (col, row) = (x / 0.1, H - y / 0.1) in global metres); nonzero = drivable.
Frames: ``images`` [Ncam, 3, H, W] f32 in [0, 1] (resized to the rig), ``points`` [P, 4] f32
(x, y, z, intensity / 255) in the ego frame, ``gt_boxes`` [N, 7], ``gt_labels`` [N], ``seg_masks``
[5, Y, X] u8, ``night`` (scene description mentions night), ``seed`` (sample index).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np

from sparsefuse.errors import SparsefuseError
from sparsefuse.models.rig import Camera, Rig, _tuple2d
from sparsefuse.models.synthetic.labels import BevGrid, object_masks

CAMERA_CHANNELS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)
LIDAR_CHANNEL = "LIDAR_TOP"
MAP_RESOLUTION = 0.1  # m per pixel of the semantic prior masks
# nuScenes category prefix -> our detection class (models/synthetic CLASS_NAMES index)
CATEGORY_MAP = (
    ("vehicle.car", 0),
    ("vehicle.truck", 1),
    ("vehicle.bus", 1),
    ("vehicle.trailer", 1),
    ("vehicle.construction", 1),
    ("human.pedestrian", 2),
    ("movable_object.barrier", 3),
)
TABLES = (
    "sample",
    "sample_data",
    "calibrated_sensor",
    "sensor",
    "ego_pose",
    "sample_annotation",
    "instance",
    "category",
    "scene",
    "log",
    "map",
)


def quaternion_to_matrix(q: list[float] | np.ndarray) -> np.ndarray:
    """(w, x, y, z) -> 3x3 rotation matrix (normalised first)."""
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def transform(translation: list[float], rotation: list[float]) -> np.ndarray:
    """4x4 rigid transform from a nuScenes (translation, rotation quaternion) record."""
    t = np.eye(4)
    t[:3, :3] = quaternion_to_matrix(rotation)
    t[:3, 3] = translation
    return t


def load_lidar_file(path: str | Path) -> np.ndarray:
    """A ``.pcd.bin`` sweep -> [P, 5] float32 (x, y, z, intensity, ring) in the sensor frame."""
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 5:
        raise SparsefuseError(
            f"{path} is not a nuScenes .pcd.bin (float32 x 5 per point)",
            "point the adapter at the dataset's samples/ or sweeps/ files",
        )
    return raw.reshape(-1, 5)


class NuScenes:
    """The JSON tables of one nuScenes version, indexed by token."""

    def __init__(self, dataroot: str | Path, version: str = "v1.0-mini") -> None:
        self.dataroot = Path(dataroot)
        table_dir = self.dataroot / version
        if not table_dir.is_dir():
            raise SparsefuseError(
                f"nuScenes tables not found: {table_dir}",
                "pass the dataset root (holding v1.0-*/, samples/, sweeps/, maps/) and --version",
            )
        self.tables: dict[str, list[dict]] = {}
        for name in TABLES:
            path = table_dir / f"{name}.json"
            if not path.is_file():
                raise SparsefuseError(f"nuScenes table missing: {path}", "the dataset copy is incomplete")
            self.tables[name] = json.loads(path.read_text())
        self.by_token = {name: {row["token"]: row for row in rows} for name, rows in self.tables.items()}

    def get(self, table: str, token: str) -> dict:
        return self.by_token[table][token]

    @cached_property
    def _sample_data_by_sample(self) -> dict[str, dict[str, dict]]:
        index: dict[str, dict[str, dict]] = {}
        for sd in self.tables["sample_data"]:
            if sd.get("is_key_frame", True):
                channel = self.get(
                    "sensor", self.get("calibrated_sensor", sd["calibrated_sensor_token"])["sensor_token"]
                )["channel"]
                index.setdefault(sd["sample_token"], {})[channel] = sd
        return index

    @cached_property
    def _annotations_by_sample(self) -> dict[str, list[dict]]:
        index: dict[str, list[dict]] = {}
        for ann in self.tables["sample_annotation"]:
            index.setdefault(ann["sample_token"], []).append(ann)
        return index

    def sample_data(self, sample_token: str, channel: str) -> dict:
        try:
            return self._sample_data_by_sample[sample_token][channel]
        except KeyError:
            raise SparsefuseError(
                f"sample {sample_token} has no {channel} data", "use samples with all 6 cameras and LIDAR_TOP"
            ) from None

    def annotations(self, sample_token: str) -> list[dict]:
        return self._annotations_by_sample.get(sample_token, [])

    def samples(self) -> list[dict]:
        """All samples, scene by scene in time order."""
        order = []
        for scene in self.tables["scene"]:
            token = scene["first_sample_token"]
            while token:
                sample = self.get("sample", token)
                order.append(sample)
                token = sample["next"]
        return order


def rig_from_nuscenes(nusc: NuScenes, sample_token: str, template: Rig) -> Rig:
    """The sensor rig of one sample at native image size: intrinsics and camera->ego from
    calibrated_sensor; depth bins and LiDAR / BEV grids from ``template``."""
    cameras = []
    for channel in CAMERA_CHANNELS:
        sd = nusc.sample_data(sample_token, channel)
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        k = np.asarray(cs["camera_intrinsic"], np.float64)
        if k.shape != (3, 3):
            raise SparsefuseError(
                f"{channel} calibrated_sensor has no 3x3 camera_intrinsic", "check the tables"
            )
        cameras.append(
            Camera(
                channel,
                (int(sd["height"]), int(sd["width"])),
                _tuple2d(k),
                _tuple2d(transform(cs["translation"], cs["rotation"])),
            )
        )
    lidar = nusc.get(
        "calibrated_sensor", nusc.sample_data(sample_token, LIDAR_CHANNEL)["calibrated_sensor_token"]
    )
    return replace(
        template,
        name="nuscenes",
        cameras=tuple(cameras),
        lidar_to_ego=_tuple2d(transform(lidar["translation"], lidar["rotation"])),
    )


def load_points(nusc: NuScenes, sample_token: str, nsweeps: int = 1) -> np.ndarray:
    """[P, 4] f32 (x, y, z, intensity / 255) in the key frame's ego frame, ``nsweeps`` sweeps merged
    (earlier sweeps moved through their ego poses into the key frame, as BEVFusion does)."""
    key = nusc.sample_data(sample_token, LIDAR_CHANNEL)
    global_to_key = np.linalg.inv(transform(**_pose(nusc.get("ego_pose", key["ego_pose_token"]))))
    clouds, sd = [], key
    for _ in range(nsweeps):
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        to_key = global_to_key @ transform(**_pose(pose)) @ transform(cs["translation"], cs["rotation"])
        pts = load_lidar_file(nusc.dataroot / sd["filename"])
        xyz = pts[:, :3].astype(np.float64) @ to_key[:3, :3].T + to_key[:3, 3]
        clouds.append(np.concatenate([xyz, pts[:, 3:4] / 255.0], axis=1))
        if not sd.get("prev"):
            break
        sd = nusc.get("sample_data", sd["prev"])
    return np.concatenate(clouds).astype(np.float32)


def _pose(record: dict) -> dict:
    return {"translation": record["translation"], "rotation": record["rotation"]}


def load_images(nusc: NuScenes, sample_token: str, image_size: tuple[int, int]) -> np.ndarray:
    """[6, 3, H, W] f32 in [0, 1], each camera resized (bilinear) to ``image_size`` = (H, W)."""
    from PIL import Image

    height, width = image_size
    out = []
    for channel in CAMERA_CHANNELS:
        sd = nusc.sample_data(sample_token, channel)
        with Image.open(nusc.dataroot / sd["filename"]) as img:
            rgb = img.convert("RGB").resize((width, height), Image.BILINEAR)
        out.append(np.asarray(rgb, np.float32).transpose(2, 0, 1) / np.float32(255.0))
    return np.stack(out)


def load_boxes(nusc: NuScenes, sample_token: str) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [N, 7] f32 (x, y, z, w, l, h, yaw) in the ego frame, labels [N]) of the mapped classes."""
    lidar = nusc.sample_data(sample_token, LIDAR_CHANNEL)
    ego = transform(**_pose(nusc.get("ego_pose", lidar["ego_pose_token"])))
    global_to_ego = np.linalg.inv(ego)
    boxes, labels = [], []
    for ann in nusc.annotations(sample_token):
        name = nusc.get("category", nusc.get("instance", ann["instance_token"])["category_token"])["name"]
        cls = next((c for prefix, c in CATEGORY_MAP if name.startswith(prefix)), None)
        if cls is None:
            continue
        centre = global_to_ego[:3, :3] @ np.asarray(ann["translation"]) + global_to_ego[:3, 3]
        heading = (global_to_ego[:3, :3] @ quaternion_to_matrix(ann["rotation"]))[:, 0]
        w, l, h = ann["size"]
        boxes.append([*centre, w, l, h, np.arctan2(heading[1], heading[0])])
        labels.append(cls)
    return np.asarray(boxes, np.float32).reshape(-1, 7), np.asarray(labels, np.int64)


def drivable_mask(nusc: NuScenes, sample_token: str, grid: BevGrid) -> np.ndarray:
    """uint8 [Y, X]: the log's map mask sampled at the BEV cell centres (ego frame -> global)."""
    from PIL import Image

    sample = nusc.get("sample", sample_token)
    log_token = nusc.get("scene", sample["scene_token"])["log_token"]
    rows = [m for m in nusc.tables["map"] if log_token in m.get("log_tokens", [])]
    if not rows:
        return np.zeros(grid.shape, np.uint8)
    with Image.open(nusc.dataroot / rows[0]["filename"]) as img:
        mask = np.asarray(img.convert("L")) > 0
    lidar = nusc.sample_data(sample_token, LIDAR_CHANNEL)
    ego = transform(**_pose(nusc.get("ego_pose", lidar["ego_pose_token"])))
    xy = grid.centres()
    pts = np.concatenate([xy, np.zeros(xy.shape[:-1] + (1,))], axis=-1) @ ego[:3, :3].T + ego[:3, 3]
    col = np.floor(pts[..., 0] / MAP_RESOLUTION).astype(np.int64)
    row = np.floor(mask.shape[0] - pts[..., 1] / MAP_RESOLUTION).astype(np.int64)
    inside = (col >= 0) & (col < mask.shape[1]) & (row >= 0) & (row < mask.shape[0])
    out = np.zeros(grid.shape, np.uint8)
    out[inside] = mask[row[inside], col[inside]]
    return out


def iterate_frames(nusc: NuScenes, rig: Rig, nsweeps: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Frames in the synthetic format; ``rig`` gives the network image size and the BEV grid."""
    grid = BevGrid(rig.bev_range[0], rig.bev_range[1], rig.bev_cell, rig.bev_shape)
    image_size = rig.cameras[0].image_size
    for index, sample in enumerate(nusc.samples()):
        token = sample["token"]
        boxes, labels = load_boxes(nusc, token)
        keep = grid.contains(boxes[:, :2].astype(np.float64))
        boxes, labels = boxes[keep], labels[keep]
        description = nusc.get("scene", sample["scene_token"]).get("description", "")
        yield {
            "images": load_images(nusc, token, image_size),
            "points": load_points(nusc, token, nsweeps),
            "gt_boxes": boxes,
            "gt_labels": labels,
            "seg_masks": np.concatenate(
                [drivable_mask(nusc, token, grid)[None], object_masks(boxes.astype(np.float64), labels, grid)]
            ),
            "night": np.bool_("night" in description.lower()),
            "seed": np.int64(index),
        }
