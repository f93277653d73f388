"""Synthetic benchmark: determinism, projection, sensors, labels, frame cache."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from sparsefuse.models.presets import get_preset, preset_rig
from sparsefuse.models.synthetic import (
    BevGrid,
    SyntheticConfig,
    detection_targets,
    make_frame,
    make_scene,
    rig_grid,
    sample_scene,
    seg_masks,
)
from sparsefuse.models.synthetic.camera import pixel_rays, project_points, render_cameras
from sparsefuse.models.synthetic.dataset import load_frames, save_frames
from sparsefuse.models.synthetic.labels import point_classes
from sparsefuse.models.synthetic.lidar import LidarConfig, simulate_lidar
from sparsefuse.models.synthetic.raycast import GROUND, cast
from sparsefuse.models.synthetic.scene import (
    CLUTTER,
    MARKING,
    ROAD,
    SIDEWALK,
    Road,
    box_corners_3d,
    box_corners_bev,
    ground_material,
)


@pytest.fixture(scope="module")
def rig():
    return preset_rig(get_preset("bevfusion-tiny"))


@pytest.fixture(scope="module")
def frame(rig):
    return make_frame(11, rig)


def _scene_with(boxes, labels, night=False):
    scene = sample_scene(0)
    return replace(
        scene,
        boxes=np.asarray(boxes, np.float64).reshape(-1, 7),
        labels=np.asarray(labels),
        colors=np.full((len(labels), 3), 0.5),
        lighting=replace(scene.lighting, night=night, noise_std=0.0),
    )


def test_same_seed_gives_byte_identical_frames(rig, frame):
    again = make_frame(11, rig)
    assert frame.keys() == again.keys()
    for key in frame:
        assert frame[key].dtype == again[key].dtype
        assert frame[key].tobytes() == again[key].tobytes(), key
    other = sample_scene(12)
    assert other.boxes.shape != sample_scene(11).boxes.shape or not np.array_equal(
        other.boxes, sample_scene(11).boxes
    )


def test_frame_format(rig, frame):
    ncam = len(rig.cameras)
    height, width = rig.cameras[0].image_size
    assert frame["images"].shape == (ncam, 3, height, width) and frame["images"].dtype == np.float32
    assert 0.0 <= frame["images"].min() and frame["images"].max() <= 1.0
    # quantized to 1/255 so the uint8 cache is lossless
    assert np.array_equal(np.round(frame["images"] * 255) / np.float32(255), frame["images"])
    pts = frame["points"]
    assert pts.ndim == 2 and pts.shape[1] == 4 and pts.dtype == np.float32
    lo, hi = np.array(rig.point_range[:3]), np.array(rig.point_range[3:])
    assert np.all(pts[:, :3] >= lo) and np.all(pts[:, :3] < hi)
    assert np.all((pts[:, 3] >= 0) & (pts[:, 3] <= 1))
    assert frame["seg_masks"].shape == (5, *rig.bev_shape)
    assert frame["gt_boxes"].shape == (len(frame["gt_labels"]), 7)


def test_point_count_varies_per_frame(rig):
    counts = {
        simulate_lidar(sample_scene(s), LidarConfig(), rig.point_range, np.random.default_rng([s, 1]))[
            0
        ].shape[0]
        for s in (1, 2, 3)
    }
    assert len(counts) == 3


def test_scene_has_all_classes_plausibly_placed():
    counts = np.zeros(5, int)  # four labelled classes, then clutter
    for seed in range(15):
        scene = sample_scene(seed)
        counts += np.bincount(scene.labels, minlength=5)
        quads = box_corners_bev(scene.boxes)
        for i in range(len(quads)):  # no two objects overlap
            for j in range(i + 1, len(quads)):
                d = np.linalg.norm(scene.boxes[i, :2] - scene.boxes[j, :2])
                assert d > 0.3
        mat = ground_material(scene.roads, scene.boxes[:, :2])
        peds = scene.labels == 2
        cars = scene.labels == 0
        if peds.sum() >= 3:  # pedestrians mostly on sidewalks
            assert np.mean(mat[peds] == SIDEWALK) >= 0.5
        if cars.any():  # vehicles on the road
            assert np.mean(np.isin(mat[cars], (ROAD, MARKING))) >= 0.8
        np.testing.assert_allclose(scene.boxes[:, 2], scene.boxes[:, 5] / 2)  # standing on the ground
    assert np.all(counts > 5), counts
    sizes = {cls: sample_scene(3).boxes[sample_scene(3).labels == cls, 3:6] for cls in range(5)}
    if len(sizes[0]):
        assert np.all((sizes[0][:, 1] > 3.0) & (sizes[0][:, 1] < 6.5))  # car length


def test_clutter_looks_like_a_labelled_class_to_lidar_and_is_never_labelled(rig):
    boxes, reflect = [], []
    for seed in range(10):
        scene = sample_scene(seed)
        clutter = scene.labels == CLUTTER
        boxes.append(scene.boxes[clutter])
        reflect.append(scene.reflectivity[clutter])
        assert len(scene.reflectivity) == len(scene.labels)
    boxes, reflect = np.concatenate(boxes), np.concatenate(reflect)
    assert len(boxes) > 20
    small = boxes[:, 4] < 1.5  # pedestrian look-alikes (0.7 m long) vs car look-alikes (4.6 m)
    assert small.any() and (~small).any()
    # LiDAR cannot separate them by size or intensity: each copies its look-alike's distribution
    assert abs(np.median(boxes[small, 5]) - 1.75) < 0.15
    assert abs(np.median(boxes[~small, 4]) - 4.6) < 0.4
    assert abs(np.median(reflect[small]) - 0.2) < 0.03 and abs(np.median(reflect[~small]) - 0.35) < 0.05
    for seed in range(3):  # frames never label clutter: every gt box matches a labelled scene object
        scene, frame = make_scene(seed, SyntheticConfig()), make_frame(seed, rig)
        labelled = scene.boxes[scene.labels != CLUTTER]
        for box in frame["gt_boxes"].astype(np.float64):
            assert np.min(np.linalg.norm(labelled[:, :2] - box[:2], axis=1)) < 1e-3
        assert np.all(frame["gt_labels"] < CLUTTER)


def test_box_corner_projects_to_the_right_pixel(rig):
    cam = rig.cameras[0]  # CAM_FRONT: at (1.7, 0, 1.5), looking along +x, level
    assert cam.name == "CAM_FRONT"
    box = np.array([[21.7, 2.0, 1.0, 2.0, 4.0, 2.0, 0.0]])  # x 19.7..23.7, y 1..3, z 0..2
    corner = box_corners_3d(box)[0][
        np.argmin(np.linalg.norm(box_corners_3d(box)[0] - [19.7, 3.0, 2.0], axis=1))
    ]
    np.testing.assert_allclose(corner, [19.7, 3.0, 2.0])
    k = cam.K
    # by hand: camera x = -y_ego, camera y = -(z_ego - 1.5), depth = x_ego - 1.7
    u_hand = k[0, 2] + k[0, 0] * (-3.0) / 18.0
    v_hand = k[1, 2] + k[1, 1] * (-(2.0 - 1.5)) / 18.0
    uv, depth = project_points(cam, corner[None])
    np.testing.assert_allclose(uv[0], [u_hand, v_hand], atol=1e-9)
    assert depth[0] == pytest.approx(18.0)
    # the renderer agrees: the pixel just inside the corner sees the box, the one outside does not
    rays = pixel_rays(cam, 1)
    ids = cast(cam.T_cam_to_ego[:3, 3], rays.reshape(-1, 3), box, 150.0).hit_id.reshape(rays.shape[:2])
    col, row = int(math.floor(u_hand)), int(math.floor(v_hand))
    assert ids[row + 1, col + 1] == 0  # inside: right of and below the top-left corner
    assert ids[row - 1, col - 1] != 0
    assert ids[row + 1, col - 2] != 0 and ids[row - 2, col + 1] != 0


def test_zbuffer_nearer_box_occludes_farther(rig):
    cam = rig.cameras[0]
    boxes = np.array([[30.0, 0.0, 1.0, 2.0, 4.0, 2.0, 0.0], [15.0, 0.0, 1.0, 2.0, 4.0, 2.0, 0.0]])
    rays = pixel_rays(cam, 1).reshape(-1, 3)
    hits = cast(cam.T_cam_to_ego[:3, 3], rays, boxes, 150.0)
    uv, _ = project_points(cam, np.array([[13.0, 0.0, 1.0]]))  # centre of the near box's rear face
    idx = int(uv[0, 1]) * cam.image_size[1] + int(uv[0, 0])
    assert hits.hit_id[idx] == 1
    assert hits.t[idx] == pytest.approx((13.0 - 1.7) / rays[idx, 0], rel=1e-9)  # the rear face x = 13
    assert not np.any(hits.hit_id == 0)  # the far box hides completely behind the near one


def test_lidar_geometry_and_sparsity_with_range():
    boxes = [[10.0, 0.0, 0.85, 1.9, 4.5, 1.7, 0.0], [45.0, 10.0, 0.85, 1.9, 4.5, 1.7, 0.0]]
    scene = _scene_with(boxes, [0, 0])
    config = LidarConfig(range_noise=0.0, dropout=0.0)
    pts, ids = simulate_lidar(scene, config, (-60, -60, -5, 60, 60, 5), np.random.default_rng(0))
    near, far = np.sum(ids == 0), np.sum(ids == 1)
    assert near > 10 * max(far, 1)  # far objects get few points
    on_near = pts[ids == 0, :3]
    assert np.all(np.abs(on_near[:, 0] - 10.0) <= 2.25 + 1e-6) and np.all(on_near[:, 2] <= 1.7 + 1e-6)
    ground = pts[ids == GROUND]
    np.testing.assert_allclose(ground[:, 2], 0.0, atol=1e-9)  # exact geometry without noise
    assert np.min(on_near[:, 0]) == pytest.approx(10.0 - 2.25, abs=1e-6)  # the rear face


def test_night_darkens_cameras(rig):
    config = SyntheticConfig(force_night=True)
    night = make_scene(5, config)
    day = make_scene(5, replace(config, force_night=False))
    assert night.lighting.night and not day.lighting.night
    np.testing.assert_array_equal(day.boxes, night.boxes)  # same scene, other light
    small = rig.resized(16, 44)
    day_img, _ = render_cameras(day, small, 1, np.random.default_rng(0))
    night_img, _ = render_cameras(night, small, 1, np.random.default_rng(0))
    assert night_img.mean() < 0.5 * day_img.mean()


def test_cameras_see_far_objects_lidar_misses(rig):
    scene = _scene_with([[48.0, 0.0, 0.85, 1.9, 4.5, 1.7, 0.0]], [0])
    _, visible = render_cameras(scene, rig, 2, np.random.default_rng(0))
    _, ids = simulate_lidar(scene, LidarConfig(), rig.point_range, np.random.default_rng(0))
    assert visible[0] >= 16 and np.sum(ids == 0) < visible[0] / 4


def test_point_classes_hand_built():
    boxes = np.array([[10.0, 0.0, 0.75, 2.0, 4.0, 1.5, 0.0], [0.0, 10.0, 0.9, 0.7, 0.7, 1.8, math.pi / 2]])
    labels = np.array([0, 2])  # a car along x, a pedestrian
    points = np.array(
        [
            [11.9, 0.5, 1.0],  # inside the car
            [12.1, 0.0, 1.0],  # 0.1 m past the car's nose: a noisy surface hit, still the car
            [0.1, 10.2, 1.2],  # the pedestrian
            [20.0, 5.0, 0.0],  # ground
            [12.0, 0.0, 0.01],  # ground just beside the car
            [20.0, -5.0, 1.0],  # above ground, in no labelled box: other object (clutter)
            [13.0, 0.0, 1.0],  # 1 m past the car: other
        ]
    )
    assert point_classes(points, boxes, labels).tolist() == [1, 1, 3, 0, 0, 5, 5]
    assert point_classes(points, np.zeros((0, 7)), np.zeros(0, np.int64)).tolist() == [5, 5, 5, 0, 0, 5, 5]


def test_seg_masks_and_detection_targets():
    grid = BevGrid(-8.0, -8.0, 1.0, (16, 16))
    road = Road(0.0, 0.0, 0.0, 2, 3.5, 2.0)  # along x, y in [-3.5, 3.5]
    box = np.array([[2.5, 0.5, 0.85, 2.0, 4.0, 1.7, 0.0]])  # x 0.5..4.5, y -0.5..1.5
    masks = seg_masks((road,), box, np.array([0]), grid)
    assert masks[0, 8, :].all() and not masks[0, 0, :].any()  # y = 0.5 row drivable, y = -7.5 not
    car = np.argwhere(masks[1])
    assert car[:, 0].min() == 7 and car[:, 0].max() == 9 and car[:, 1].min() == 8 and car[:, 1].max() == 12
    assert not masks[2:].any()
    det = detection_targets(box, np.array([0]), grid)
    assert det.heatmap[0, 8, 10] == 1.0 and det.heatmap[0].max() == 1.0 and np.sum(det.heatmap == 1.0) == 1
    assert det.mask.sum() == 1 and det.mask[8, 10]
    np.testing.assert_allclose(
        det.boxes[:, 8, 10], [0.0, 0.0, 0.85, math.log(2), math.log(4), math.log(1.7), 0, 1], atol=1e-6
    )


def test_label_grid_matches_model_grid(rig, frame):
    grid = rig_grid(rig)
    assert grid.shape == rig.bev_shape and grid.xmin == rig.bev_range[0] and grid.ymin == rig.bev_range[1]
    assert np.all(grid.contains(frame["gt_boxes"][:, :2]))


def test_frame_cache_round_trip(tmp_path, frame):
    path = save_frames(tmp_path / "f.npz", [frame, frame])
    back = load_frames(path)
    assert len(back) == 2
    for key in frame:
        assert back[1][key].tobytes() == frame[key].tobytes(), key
        assert back[1][key].dtype == frame[key].dtype
