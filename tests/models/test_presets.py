"""Presets, build_model and random frames (models/presets.py, models/frames.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import pytest
import torch

from sparsefuse.errors import SparsefuseError
from sparsefuse.models.bevfusion import SparseConv3d
from sparsefuse.models.frames import random_frame
from sparsefuse.models.presets import build_model, get_preset, list_presets, preset_rig
from sparsefuse.models.rig import load_rig


@pytest.fixture(scope="module")
def base():
    return build_model("bevfusion-base")


def test_known_presets_and_unknown_name_error():
    assert list_presets() == ["bevfusion-base", "bevfusion-tiny"]
    with pytest.raises(SparsefuseError) as err:
        get_preset("bevfusion-huge")
    assert "bevfusion-huge" in err.value.message
    assert "bevfusion-base" in err.value.hint and "bevfusion-tiny" in err.value.hint


def test_preset_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset("bevfusion-tiny").max_voxels = 1  # type: ignore[misc]


def test_tiny_preset_shapes():
    p = get_preset("bevfusion-tiny")
    assert p.image_size == (64, 176) and p.feature_size == (8, 22)
    assert p.num_depth_bins == 16 and p.bev_shape == (64, 64)
    assert p.voxel_grid == (16, 256, 256) and p.num_points_typical == 10000


def test_base_preset_constructs_with_the_paper_workload(base):
    p = get_preset("bevfusion-base")
    assert p.image_size == (256, 704) and p.feature_size == (32, 88) and p.num_cameras == 6
    assert p.num_depth_bins == 118 and p.camera_channels == 80
    rig = base.rig
    assert len(rig.cameras) == 6 and all(c.image_size == (256, 704) for c in rig.cameras)
    assert rig.num_depth_bins == 118
    assert rig.depth_bins[0] == 1.0 and rig.depth_bins[-1] == pytest.approx(59.5)
    # 0.075 m voxels over a 1440 x 1440 x 41 grid (40 voxel slices + 1, as BEVFusion's sparse_shape).
    assert rig.voxel_size == (0.075, 0.075, 0.2) and rig.voxel_grid == (40, 1440, 1440)
    assert base.lidar.sparse_shape == (41, 1440, 1440)
    assert base.lidar.encoder.conv_input.spatial_shape == (41, 1440, 1440)
    assert base.lidar.encoder.out_shape == (2, 180, 180) and base.lidar.bev_in_channels == 256
    # Camera: BEVPool on 360 x 360 cells of 0.3 m, a stride-2 conv to the 180 x 180 fusion grid.
    assert base.camera.pool_shape == (1, 360, 360) and base.bev_shape == (180, 180)
    assert base.camera.depth_net.out.out_channels == 118 + 80
    assert base.camera.ranks_bev.dtype == torch.int32 and base.camera.ranks_bev.numel() > 100_000
    assert int(base.camera.ranks_bev.max()) < 360 * 360
    # ResNet-50-class backbone: 3-4-6-3 bottlenecks, ~23.5 M parameters, 2048 channels at /32.
    backbone = base.camera.backbone
    assert [len(s) for s in backbone.stages] == [3, 4, 6, 3] and backbone.out_channels[-1] == 2048
    assert 23e6 < sum(t.numel() for t in backbone.parameters()) < 24e6
    assert backbone.out_strides == [4, 8, 16, 32]
    for name in ("seg", "heatmap", "boxes"):
        assert getattr(base.head, name)[-1].out_channels == {"seg": 5, "heatmap": 4, "boxes": 8}[name]
    sparse = [m for m in base.modules() if isinstance(m, SparseConv3d)]
    assert all(m.weight.shape[1:4] in ((3, 3, 3), (3, 1, 1)) for m in sparse)


def test_build_model_is_deterministic_by_seed():
    a, b, c = (build_model("bevfusion-tiny", seed=s).state_dict() for s in (7, 7, 8))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert not build_model("bevfusion-tiny").training


def test_default_rig_is_resized_nuscenes_with_preset_grids():
    p = get_preset("bevfusion-tiny")
    rig = preset_rig(p)
    nus = load_rig("nuscenes_6cam")
    assert [c.name for c in rig.cameras] == [c.name for c in nus.cameras]
    assert all(c.image_size == (64, 176) for c in rig.cameras)
    assert rig.cameras[0].K[0, 0] == pytest.approx(nus.cameras[0].K[0, 0] * 176 / 1600)
    assert rig.bev_range == p.bev_range and rig.bev_cell == p.bev_cell and rig.voxel_size == p.voxel_size
    assert rig.depth_range == p.depth_range and rig.point_range == p.point_range


def test_user_rig_grids_are_checked_against_the_architecture():
    p = get_preset("bevfusion-tiny")
    rig = preset_rig(p)
    # Four-camera rig: fine, the camera count comes from the rig.
    model = build_model("bevfusion-tiny", rig=replace(rig, cameras=rig.cameras[:4]))
    assert model.num_cameras == 4
    # Finer voxels: the sparse encoder gets one more stride-2 stage to reach the same BEV grid.
    finer = build_model("bevfusion-tiny", rig=replace(rig, voxel_size=(0.2, 0.2, 0.5)))
    assert finer.lidar.sparse_shape == (17, 512, 512) and finer.lidar.bev_shape == (64, 64)
    assert len(finer.lidar.encoder.stages) == 4
    with pytest.raises(SparsefuseError, match="power-of-two multiple"):
        build_model("bevfusion-tiny", rig=replace(rig, voxel_size=(0.3, 0.3, 0.5)))
    with pytest.raises(SparsefuseError, match="bev_range"):
        build_model("bevfusion-tiny", rig=replace(rig, bev_range=(-40.0, -40.0, 62.4, 62.4)))
    with pytest.raises(SparsefuseError, match="too flat"):
        build_model("bevfusion-tiny", rig=replace(rig, voxel_size=(0.4, 0.4, 8.0)))


def test_tiny_architecture_on_the_builtin_rig_file():
    """``--rig models/rigs/nuscenes_6cam.json`` with the tiny preset: the rig's grids win."""
    model = build_model("bevfusion-tiny", rig=load_rig("nuscenes_6cam"))
    assert model.rig.cameras[0].image_size == (64, 176) and model.rig.num_depth_bins == 118
    assert model.bev_shape == (180, 180) and model.lidar.sparse_shape == (41, 1440, 1440)
    assert model.lidar.bev_shape == (180, 180) and model.camera.pool_shape == (1, 360, 360)


def test_random_frame_is_deterministic_and_plausible():
    p = get_preset("bevfusion-tiny")
    a, b, c = random_frame(p, 1), random_frame(p, 1), random_frame(p, 2)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["points"], b["points"])
    assert a["points"].shape[0] != c["points"].shape[0]  # counts vary with the seed
    assert 8000 <= a["points"].shape[0] <= 12000
    images, points = a["images"], a["points"]
    assert images.shape == (6, 3, 64, 176) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0 and float(images.std()) > 0.05
    assert points.dtype == torch.float32 and points.shape[1] == 4
    lo, hi = torch.tensor(p.point_range[:3]), torch.tensor(p.point_range[3:])
    inside = ((points[:, :3] >= lo) & (points[:, :3] < hi)).all(dim=1).float().mean()
    assert 0.85 < float(inside) < 0.99  # mostly inside, some outside for Voxelize to drop
    assert random_frame(p, 3, num_points=123)["points"].shape == (123, 4)
    assert random_frame(p, 3, num_points=0)["points"].shape == (0, 4)
    assert random_frame(p, 3, num_points=5, num_cameras=4)["images"].shape == (4, 3, 64, 176)


@pytest.mark.slow
def test_base_preset_exports_with_a_dynamic_point_count(base):
    """torch.export of the paper-scale model (fake tensors only: nothing of it is run)."""
    images, points = torch.zeros(6, 3, 256, 704), torch.zeros(100, 4)
    num_points = torch.export.Dim("num_points", min=2, max=1 << 24)
    with torch.no_grad():
        program = torch.export.export(base, (images, points), dynamic_shapes=(None, {0: num_points}))
    calls = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert calls.count("sparsefuse.sparse_conv3d.default") == 13  # 1 input + 4x2 subm + 3 down + 1 out
    assert all(f"sparsefuse.{op}.default" in calls for op in ("voxelize", "scatter_dense", "bev_pool"))
    outputs = [n for n in program.graph.nodes if n.op == "output"][0].args[0]
    shapes = [tuple(o.meta["val"].shape) for o in outputs]
    assert shapes == [(1, 5, 180, 180), (1, 4, 180, 180), (1, 8, 180, 180)]
