"""nuScenes adapter on the fabricated fixture (tests/fixtures/nuscenes_mini, see make_fixture.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sparsefuse.errors import SparsefuseError
from sparsefuse.models import nuscenes
from sparsefuse.models.presets import get_preset, preset_rig
from sparsefuse.models.rig import nuscenes_like_rig
from sparsefuse.models.synthetic.labels import BevGrid

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "nuscenes_mini"


@pytest.fixture(scope="module")
def nusc():
    return nuscenes.NuScenes(ROOT, "v1.0-mini")


@pytest.fixture(scope="module")
def template():
    return preset_rig(get_preset("bevfusion-tiny"))


def test_quaternion_to_matrix_yaw():
    q = [math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]  # 90 deg about z
    np.testing.assert_allclose(
        nuscenes.quaternion_to_matrix(q), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12
    )


def test_rig_from_calibrated_sensor(nusc, template):
    rig = nuscenes.rig_from_nuscenes(nusc, "sample0", template)
    reference = nuscenes_like_rig()
    assert [c.name for c in rig.cameras] == [c.name for c in reference.cameras]
    for cam, ref in zip(rig.cameras, reference.cameras, strict=True):
        assert cam.image_size == (18, 32)
        np.testing.assert_allclose(cam.T_cam_to_ego, ref.T_cam_to_ego, atol=1e-9)
        np.testing.assert_allclose(cam.K[0, 0], ref.K[0, 0] * 32 / 1600)
    np.testing.assert_allclose(np.asarray(rig.lidar_to_ego)[:3, 3], [0.94, 0.0, 1.84])
    assert rig.bev_range == template.bev_range and rig.point_range == template.point_range
    resized = rig.resized(*template.cameras[0].image_size)
    assert resized.cameras[0].image_size == template.cameras[0].image_size


def test_lidar_points_in_ego_frame_with_sweeps(nusc):
    key = nuscenes.load_points(nusc, "sample0", nsweeps=1)
    assert key.shape == (3, 4) and key.dtype == np.float32
    # LIDAR_TOP is yawed 90 deg: sensor (1, 0, 0) -> ego (0.94, 1, 1.84); intensity 255 -> 1
    np.testing.assert_allclose(key[0], [0.94, 1.0, 1.84, 1.0], atol=1e-6)
    np.testing.assert_allclose(key[1], [0.94 - 2.0, 0.0, 0.84, 0.2], atol=1e-6)
    both = nuscenes.load_points(nusc, "sample0", nsweeps=2)
    assert both.shape == (5, 4)
    # the previous sweep's ego was 1 m behind along the heading: its points land 1 m further back
    np.testing.assert_allclose(both[3], [0.94 - 1.0, 1.0, 1.84, 0.4], atol=1e-6)


def test_boxes_in_ego_frame_and_class_mapping(nusc):
    boxes, labels = nuscenes.load_boxes(nusc, "sample0")
    assert labels.tolist() == [0, 2]  # car, pedestrian; the animal is not mapped
    np.testing.assert_allclose(boxes[0], [5.0, 0.0, 0.8, 1.9, 4.5, 1.6, math.radians(10)], atol=1e-5)
    np.testing.assert_allclose(boxes[1, :3], [2.0, -6.0, 0.9], atol=1e-5)
    assert boxes[1, 6] == pytest.approx(math.radians(-90), abs=1e-5)


def test_map_mask_in_ego_frame(nusc):
    grid = BevGrid(-10.0, -10.0, 1.0, (20, 20))
    mask = nuscenes.drivable_mask(nusc, "sample0", grid)
    xy = grid.centres()
    # ego yaw 30 deg at global (10, 20): global y = 20 + x sin30 + y cos30; drivable where < 20
    global_y = 20 + xy[..., 0] * 0.5 + xy[..., 1] * math.cos(math.radians(30))
    global_x = 10 + xy[..., 0] * math.cos(math.radians(30)) - xy[..., 1] * 0.5
    clear = (np.abs(global_y - 20) > 0.2) & (global_x > 0.2)  # off the boundary, on the 40 m map
    assert not mask[global_x < -0.2].any()  # off the map: not drivable
    np.testing.assert_array_equal(mask[clear], (global_y < 20)[clear])


def test_frames_have_the_synthetic_format(nusc, template):
    frames = list(nuscenes.iterate_frames(nusc, template, nsweeps=2))
    assert len(frames) == 1
    frame = frames[0]
    height, width = template.cameras[0].image_size
    assert frame["images"].shape == (6, 3, height, width) and frame["images"].dtype == np.float32
    assert abs(frame["images"][2, 0].mean() - 80 / 255) < 0.05  # camera 2 has red level 80
    assert frame["points"].shape == (5, 4)
    assert frame["seg_masks"].shape == (5, *template.bev_shape) and frame["seg_masks"].dtype == np.uint8
    assert frame["seg_masks"][1].any() and frame["seg_masks"][3].any() and not frame["seg_masks"][2].any()
    assert bool(frame["night"])
    assert set(frame) == {"images", "points", "gt_boxes", "gt_labels", "seg_masks", "night", "seed"}


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(SparsefuseError, match="tables not found"):
        nuscenes.NuScenes(tmp_path, "v1.0-mini")
    bad = tmp_path / "x.pcd.bin"
    bad.write_bytes(np.zeros(7, np.float32).tobytes())
    with pytest.raises(SparsefuseError, match="float32 x 5"):
        nuscenes.load_lidar_file(bad)
