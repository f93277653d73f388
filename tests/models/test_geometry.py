"""Frustum geometry and BEVPool rank precomputation (models/geometry.py, plugins/bev_pool/precompute.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsefuse.plugins  # noqa: F401  (registers torch.ops.sparsefuse.*)
from sparsefuse.errors import SparsefuseError
from sparsefuse.models.geometry import (
    bev_cell_of,
    camera_bev_ranks,
    depth_bin_targets,
    feature_size,
    frustum_bev_cells,
    frustum_points,
    pixel_centres,
    pool_grid,
)
from sparsefuse.models.presets import get_preset, preset_rig
from sparsefuse.plugins.bev_pool.precompute import precompute_ranks


@pytest.fixture(scope="module")
def tiny_rig():
    return preset_rig(get_preset("bevfusion-tiny"))


def brute_force_lift_splat(depth: np.ndarray, feat: np.ndarray, cells: np.ndarray,
                           num_cells: int) -> np.ndarray:
    """LSS by definition: every frustum point carries depth * feat (outer product over D and C),
    scatter-added into its BEV cell. depth [N,D,H,W], feat [N,H,W,C], cells [N,D,H,W] -> [C, cells]."""
    lifted = depth[..., None] * feat[:, None]  # [N,D,H,W,C]
    out = np.zeros((num_cells, feat.shape[-1]), dtype=np.float64)
    keep = cells >= 0
    np.add.at(out, cells[keep], lifted[keep])
    return out.T


def pool_with_ranks(depth: np.ndarray, feat: np.ndarray, cells: np.ndarray,
                    shape: tuple[int, int]) -> np.ndarray:
    r = precompute_ranks(cells)
    bev = torch.ops.sparsefuse.bev_pool(
        torch.from_numpy(depth), torch.from_numpy(feat), *(torch.from_numpy(a) for a in (
            r.ranks_depth, r.ranks_feat, r.ranks_bev, r.interval_starts, r.interval_lengths)),
        [1, shape[0], shape[1]])
    return bev.numpy().reshape(feat.shape[-1], -1)


@settings(max_examples=40, deadline=None)
@given(
    n_cam=st.integers(1, 3), n_depth=st.integers(1, 5), height=st.integers(1, 4), width=st.integers(1, 5),
    y=st.integers(1, 4), x=st.integers(1, 4), channels=st.integers(1, 3), outside=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_ranks_pooling_equals_brute_force_lift_splat(n_cam, n_depth, height, width, y, x, channels, outside,
                                                     seed):
    rng = np.random.default_rng(seed)
    shape = (n_cam, n_depth, height, width)
    cells = rng.integers(0, y * x, size=shape)
    cells[rng.uniform(size=shape) < outside] = -1
    depth = rng.uniform(size=shape).astype(np.float32)
    feat = rng.normal(size=(n_cam, height, width, channels)).astype(np.float32)
    got = pool_with_ranks(depth, feat, cells, (y, x))
    want = brute_force_lift_splat(depth.astype(np.float64), feat.astype(np.float64), cells, y * x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(*(st.integers(1, 4),) * 4), cells=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_ranks_and_intervals_invariants(shape, cells, seed):
    rng = np.random.default_rng(seed)
    bev = rng.integers(-1, cells, size=shape)
    r = precompute_ranks(bev)
    arrays = (r.ranks_depth, r.ranks_feat, r.ranks_bev, r.interval_starts, r.interval_lengths)
    assert all(a.dtype == np.int32 for a in arrays)
    kept = np.flatnonzero(bev.reshape(-1) >= 0)
    assert r.num_points == kept.size
    # ranks_depth is a permutation of the kept points, sorted by cell, stable within a cell.
    np.testing.assert_array_equal(np.sort(r.ranks_depth), kept)
    np.testing.assert_array_equal(r.ranks_bev, bev.reshape(-1)[r.ranks_depth])
    assert np.all(np.diff(r.ranks_bev) >= 0)
    for cell in np.unique(r.ranks_bev):
        assert np.all(np.diff(r.ranks_depth[r.ranks_bev == cell]) > 0)
    # ranks_feat drops the depth index: (n, d, h, w) -> (n, h, w).
    n_cam, n_depth, height, width = shape
    n, rest = np.divmod(r.ranks_depth, n_depth * height * width)
    np.testing.assert_array_equal(r.ranks_feat, n * height * width + rest % (height * width))
    # One interval per non-empty cell, covering the points exactly, in order.
    assert r.num_intervals == np.unique(r.ranks_bev).size
    if r.num_intervals:
        assert r.interval_starts[0] == 0
        np.testing.assert_array_equal(r.interval_starts[1:], np.cumsum(r.interval_lengths)[:-1])
        assert r.interval_lengths.sum() == r.num_points and r.interval_lengths.min() >= 1
        for s, n_pts in zip(r.interval_starts, r.interval_lengths, strict=True):
            assert np.unique(r.ranks_bev[s:s + n_pts]).size == 1


def test_precompute_all_outside_gives_empty_arrays():
    r = precompute_ranks(np.full((2, 3, 2, 2), -1))
    assert r.num_points == 0 and r.num_intervals == 0
    assert r.ranks_bev.dtype == np.int32 and r.interval_lengths.dtype == np.int32


def test_precompute_rejects_bad_shape():
    with pytest.raises(ValueError, match="Ncam,D,H,W"):
        precompute_ranks(np.zeros((3, 4), dtype=np.int64))


def test_frustum_points_project_back_to_pixel_centres_and_depths(tiny_rig):
    stride = 8
    pts = frustum_points(tiny_rig, stride)  # [N,D,H,W,3]
    u, v = pixel_centres(tiny_rig.cameras[0].image_size, stride)
    assert pts.shape == (6, tiny_rig.num_depth_bins, v.size, u.size, 3)
    for i, cam in enumerate(tiny_rig.cameras):
        t = np.linalg.inv(cam.T_cam_to_ego)
        cam_pts = pts[i] @ t[:3, :3].T + t[:3, 3]
        np.testing.assert_allclose(cam_pts[..., 2], np.broadcast_to(tiny_rig.depth_bins[:, None, None],
                                                                    cam_pts.shape[:3]), atol=1e-9)
        pix = cam_pts @ cam.K.T
        np.testing.assert_allclose(pix[..., 0] / pix[..., 2], np.broadcast_to(u, pix.shape[:3]), atol=1e-6)
        np.testing.assert_allclose(pix[..., 1] / pix[..., 2], np.broadcast_to(v[:, None], pix.shape[:3]),
                                   atol=1e-6)


def test_front_camera_frustum_lies_ahead_with_left_columns_on_the_left(tiny_rig):
    pts = frustum_points(tiny_rig, 8)[0]  # CAM_FRONT at (1.7, 0, 1.5), optical axis along ego +x
    d = tiny_rig.depth_bins
    # Depth is along the optical axis, so every pixel of bin i lies at x = 1.7 + d_i.
    expected_x = np.broadcast_to((1.7 + d)[:, None, None], pts.shape[:3])
    np.testing.assert_allclose(pts[..., 0], expected_x, atol=1e-9)
    # Feature columns 10 and 11 (centres 84 and 92 px) straddle the principal point cx = 88 px.
    np.testing.assert_allclose(pts[:, :, 10:12, 1].mean(axis=2), 0.0, atol=1e-9)
    # Image left (small u) is ego left (+y); image top (small v) is up (+z).
    assert np.all(pts[:, :, 0, 1] > 0) and np.all(pts[:, :, -1, 1] < 0)
    assert np.all(pts[:, 0, :, 2] > 1.5) and np.all(pts[:, -1, :, 2] < 1.5)


def test_bev_cell_of_hand_computed(tiny_rig):
    # Tiny: fusion grid 64x64 of 1.6 m over +-51.2 m; pool grid (subdivision 2) 128x128 of 0.8 m.
    cell, (y_size, x_size) = pool_grid(tiny_rig, 2)
    assert cell == pytest.approx(0.8) and (y_size, x_size) == (128, 128)
    pts = np.array([
        [0.1, 0.1, 0.0],  # just past the centre: x=64, y=64
        [-51.2, -51.2, -5.0],  # lower corner, z at zmin (inside)
        [51.19, -51.2, 2.99],  # x=127, y=0
        [51.2, 0.0, 0.0],  # x on the upper edge: outside
        [0.0, 0.0, 3.0],  # z at zmax: outside
        [0.0, 0.0, -5.01],  # below zmin: outside
        [10.0, -20.0, 1.0],  # x = floor(61.2/0.8)=76, y = floor(31.2/0.8)=39
    ])
    got = bev_cell_of(pts, tiny_rig, 2)
    np.testing.assert_array_equal(got, [64 * 128 + 64, 0, 127, -1, -1, -1, 39 * 128 + 76])


def test_camera_ranks_cover_the_right_cells(tiny_rig):
    cells = frustum_bev_cells(tiny_rig, 8, 2)
    ranks = camera_bev_ranks(tiny_rig, 8, 2)
    assert ranks.num_points == int((cells >= 0).sum()) > 0
    # The front camera sees cells ahead of the car (x index past the middle), the back one behind.
    front = cells[0][cells[0] >= 0] % 128
    back = cells[3][cells[3] >= 0] % 128
    assert front.min() >= 64 and back.max() < 64


def test_feature_size_needs_divisible_images():
    assert feature_size((256, 704), 8) == (32, 88)
    u, v = pixel_centres((64, 176), 8)  # block j spans [8j, 8j + 8) px
    np.testing.assert_array_equal(u[[0, 1, -1]], [4.0, 12.0, 172.0])
    np.testing.assert_array_equal(v[[0, -1]], [4.0, 60.0])
    with pytest.raises(SparsefuseError, match="not divisible"):
        feature_size((250, 704), 8)


def test_mixed_image_sizes_rejected(tiny_rig):
    cams = (tiny_rig.cameras[0].resized(128, 352), *tiny_rig.cameras[1:])
    with pytest.raises(SparsefuseError, match="mixes camera image sizes"):
        camera_bev_ranks(replace(tiny_rig, cameras=cams), 8)


def test_depth_bin_targets_hand_computed(tiny_rig):
    cam = tiny_rig.cameras[0]  # CAM_FRONT: at (1.7, 0, 1.5) looking along +x, level
    assert cam.name == "CAM_FRONT"
    k = cam.K
    stride = 8
    dmin, _, step = tiny_rig.depth_range
    # a point 19 m ahead on the optical axis: camera z 19 m -> bin round((19 - dmin) / step)
    ahead = [1.7 + 19.0, 0.0, 1.5]
    nearer = [1.7 + 10.0, 0.0, 1.5]  # same pixel block, nearer: the camera sees this one
    behind = [1.7 - 19.0, 0.0, 1.5]
    too_far = [1.7 + 200.0, 0.0, 1.5]
    u, v = int(k[0, 2] // stride), int(k[1, 2] // stride)
    got = depth_bin_targets(np.array([ahead, behind, too_far]), tiny_rig, stride)
    assert got.shape == (len(tiny_rig.cameras), *feature_size(cam.image_size, stride))
    assert got[0, v, u] == round((19.0 - dmin) / step)
    assert np.count_nonzero(got[0] >= 0) == 1
    # the point behind CAM_FRONT lies ahead of CAM_BACK (and nowhere else)
    back = [i for i, c in enumerate(tiny_rig.cameras) if c.name == "CAM_BACK"][0]
    assert np.count_nonzero(got >= 0) == 2 and np.count_nonzero(got[back] >= 0) == 1
    got = depth_bin_targets(np.array([ahead, nearer]), tiny_rig, stride)
    assert got[0, v, u] == round((10.0 - dmin) / step)
    assert np.all(depth_bin_targets(np.zeros((0, 4)), tiny_rig, stride) == -1)
