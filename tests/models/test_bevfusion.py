"""The BEVFusion-style reference model (models/bevfusion/): shapes, speed, point counts,
modality tags, feature sites, grid alignment and torch.export with a dynamic point count."""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from sparsefuse.errors import SparsefuseError
from sparsefuse.models.bevfusion import (
    FEATURE_SITES,
    MODALITIES,
    OUTPUT_NAMES,
    SparseConv3d,
    modality_of,
    prunable_weights,
)
from sparsefuse.models.frames import random_frame
from sparsefuse.models.geometry import frustum_bev_cells
from sparsefuse.models.presets import build_model, get_preset

TINY = "bevfusion-tiny"


@pytest.fixture(scope="module")
def tiny():
    return build_model(TINY, seed=0)


@pytest.fixture(scope="module")
def frame():
    return random_frame(get_preset(TINY), seed=0)


def run(model: nn.Module, frame: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model(frame["images"], frame["points"])


def test_output_names_and_shapes(tiny, frame):
    assert OUTPUT_NAMES == ("seg_logits", "heatmap", "boxes") == tiny.output_names
    seg, heatmap, boxes = run(tiny, frame)
    assert seg.shape == (1, 5, 64, 64)
    assert heatmap.shape == (1, 4, 64, 64)
    assert boxes.shape == (1, 8, 64, 64)
    for out in (seg, heatmap, boxes):
        assert out.dtype == torch.float32 and torch.isfinite(out).all() and out.std() > 0


def single_thread_cpu_seconds(model: nn.Module, frame: dict[str, torch.Tensor]) -> float:
    """Process CPU time of one forward on one torch thread (no OpenMP spin-wait in the count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.process_time()
        run(model, frame)
        return time.process_time() - start
    finally:
        torch.set_num_threads(threads)


def test_tiny_forward_time(tiny, frame):
    run(tiny, frame)  # warm-up: first-call allocations and op dispatch caches
    wall = []
    for _ in range(3):
        start = time.perf_counter()
        run(tiny, frame)
        wall.append(time.perf_counter() - start)
    cpu = single_thread_cpu_seconds(tiny, frame)
    load = os.getloadavg()[0]
    print(f"\nbevfusion-tiny forward (measured), {frame['points'].shape[0]} points, "
          f"{torch.get_num_threads()} torch threads, load {load:.1f}: "
          f"wall median {statistics.median(wall):.3f} s "
          f"min {min(wall):.3f} s; 1-thread CPU {cpu:.3f} s")
    # Budget: 2 s on 2 cores; asserted at 4 s for margin. When other jobs oversubscribe the
    # cores, wall time measures them too, so the check falls back to single-thread CPU time.
    if load <= 1.5 * (os.cpu_count() or 1):
        assert min(wall) <= 4.0
    else:
        assert cpu <= 4.0


def test_same_seed_same_outputs_and_different_seed_differs(frame):
    a = run(build_model(TINY, seed=3), frame)
    b = run(build_model(TINY, seed=3), frame)
    c = run(build_model(TINY, seed=4), frame)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("num_points", [0, 1, 7, 20000])
def test_any_point_count(tiny, num_points):
    frame = random_frame(get_preset(TINY), seed=11, num_points=num_points)
    assert frame["points"].shape == (num_points, 4)
    outs = run(tiny, frame)
    assert [tuple(o.shape) for o in outs] == [(1, 5, 64, 64), (1, 4, 64, 64), (1, 8, 64, 64)]
    assert all(torch.isfinite(o).all() for o in outs)


def test_images_must_match_the_rig(tiny, frame):
    with pytest.raises(SparsefuseError, match=r"rig needs \(6, 3, 64, 176\)"):
        tiny(frame["images"][:4], frame["points"])
    with pytest.raises(SparsefuseError, match="images have shape"):
        tiny(frame["images"][:, :, :32], frame["points"])


def test_lidar_bev_without_points_is_bias_only(tiny):
    with torch.no_grad():
        bev = tiny.lidar(torch.zeros(0, 4))
    # No voxel -> dense zeros -> conv bias + ReLU everywhere (zero padding leaves the map flat).
    expected = torch.relu(tiny.lidar.bev[0].bias).view(1, -1, 1, 1).expand_as(bev)
    torch.testing.assert_close(bev, expected)


@pytest.mark.parametrize("xy", [(20.3, -7.9), (-40.1, 33.3)])
def test_single_point_lands_in_its_bev_cell(tiny, xy):
    """LiDAR grid alignment: one point changes the LiDAR BEV only around its own cell."""
    x, y = xy
    with torch.no_grad():
        empty = tiny.lidar(torch.zeros(0, 4))
        one = tiny.lidar(torch.tensor([[x, y, -1.0, 0.5]]))
    changed = (one - empty).abs().amax(dim=1)[0]  # [Y,X]
    ys, xs = torch.nonzero(changed > 0, as_tuple=True)
    assert ys.numel() > 0
    cell_x, cell_y = int((x + 51.2) // 1.6), int((y + 51.2) // 1.6)
    # Stride-2 convs spread a site over <= 2 cells per axis, the 3x3 BEV conv over one more.
    assert (xs - cell_x).abs().max() <= 2 and (ys - cell_y).abs().max() <= 2


def test_camera_pooling_equals_brute_force_lift_splat(tiny):
    """The model's precomputed rank buffers pool exactly what a brute-force lift-splat gives."""
    cam = tiny.camera
    cells = frustum_bev_cells(tiny.rig, 8, 2)  # [N,D,H,W] on the 128x128 pool grid
    gen = torch.Generator().manual_seed(0)
    n, d, h, w = cells.shape
    depth = torch.rand(n, d, h, w, generator=gen).softmax(dim=1)
    feat = torch.randn(n, h, w, 32, generator=gen)
    got = torch.ops.sparsefuse.bev_pool(depth, feat, cam.ranks_depth, cam.ranks_feat, cam.ranks_bev,
                                        cam.interval_starts, cam.interval_lengths, list(cam.pool_shape))
    lifted = (depth.double()[..., None] * feat.double()[:, None]).reshape(-1, 32)  # [N*D*H*W, C]
    flat = torch.from_numpy(cells.reshape(-1))
    keep = flat >= 0
    want = torch.zeros(128 * 128, 32, dtype=torch.float64).index_add_(0, flat[keep], lifted[keep])
    torch.testing.assert_close(got[0].reshape(32, -1).double(), want.T, rtol=1e-5, atol=1e-5)
    assert got.shape == (1, 32, 128, 128)


def test_every_parameter_has_exactly_one_name(tiny):
    assert len(list(tiny.named_parameters(remove_duplicate=False))) == len(list(tiny.parameters()))


def test_every_parameter_has_a_modality(tiny):
    tags = {name: modality_of(name) for name, _ in tiny.named_parameters()}
    assert set(tags.values()) == set(MODALITIES)
    assert tags["lidar.encoder.conv_input.weight"] == "lidar"
    assert tags["camera.backbone.stem.0.weight"] == "camera"
    assert tags["fusion.fuser.0.weight"] == "fusion"
    assert tags["head.heatmap.1.bias"] == "head"
    with pytest.raises(ValueError, match="modality"):
        modality_of("backbone.weight")


def test_every_prunable_weight_is_listed_with_kind_and_modality(tiny):
    units = prunable_weights(tiny)
    by_name = {u.name: u for u in units}
    params = dict(tiny.named_parameters())
    kinds = ((nn.Conv2d, "conv2d"), (nn.Linear, "linear"), (SparseConv3d, "sparseconv3d"))
    expected = {f"{path}.weight": kind for path, m in tiny.named_modules()
                for cls, kind in kinds if isinstance(m, cls)}
    assert {n: u.kind for n, u in by_name.items()} == expected
    for u in units:
        assert u.name in params and u.shape == tuple(params[u.name].shape)
        assert u.modality == modality_of(u.name) in MODALITIES
    kinds = {u.kind for u in units}
    assert kinds == {"conv2d", "sparseconv3d"}
    sparse = [u for u in units if u.kind == "sparseconv3d"]
    assert all(u.modality == "lidar" and len(u.shape) == 5 for u in sparse)
    assert {u.modality for u in units} == set(MODALITIES)
    assert sum(u.numel for u in units) > 0.9 * sum(p.numel() for p in tiny.parameters())


def test_feature_sites_capture_three_bev_maps(tiny, frame):
    assert set(FEATURE_SITES) == {"camera_bev", "lidar_bev", "fused_bev"}
    sites = tiny.feature_sites()
    assert {modality_of(path) for path in FEATURE_SITES.values()} == {"camera", "lidar", "fusion"}
    with tiny.capture_features() as feats:
        outs = run(tiny, frame)
    assert feats["camera_bev"].shape == (1, 32, 64, 64)
    assert feats["lidar_bev"].shape == (1, 64, 64, 64)
    assert feats["fused_bev"].shape == (1, 64, 64, 64)
    # The fused map is what the BEV encoder and heads consume.
    with torch.no_grad():
        torch.testing.assert_close(tiny.head(tiny.fusion.encoder(feats["fused_bev"]))[0], outs[0])
    assert all(not m._forward_hooks for m in sites.values())  # hooks removed on exit


def test_sparse_conv_modules_match_dense_conv3d():
    """The module passes spconv-layout weights and its attributes to the op in the right order."""
    gen = torch.Generator().manual_seed(1)
    shape = (5, 6, 7)
    dense_in = torch.randn(1, 3, *shape, generator=gen) * (torch.rand(1, 1, *shape, generator=gen) < 0.3)
    coords = torch.nonzero(dense_in[0].abs().sum(0) > 0).to(torch.int32)
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.int32), coords], dim=1)
    feats = dense_in[0][:, coords[:, 1], coords[:, 2], coords[:, 3]].T.contiguous()
    for conv in (SparseConv3d(3, 4, shape, 3, subm=True, activation="none"),
                 SparseConv3d(3, 4, shape, (3, 1, 1), stride=(2, 1, 1), padding=0, activation="relu")):
        conv.reset_parameters()
        nn.init.normal_(conv.bias, generator=gen)
        with torch.no_grad():
            out, out_coords = conv(feats, coords)
            ref = F.conv3d(dense_in, conv.weight.permute(0, 4, 1, 2, 3), conv.bias, stride=conv.stride,
                           padding=tuple(k // 2 for k in conv.kernel_size) if conv.subm else conv.padding)
        if conv.activation == "relu":
            ref = torch.relu(ref)
        assert tuple(ref.shape[2:]) == conv.out_shape
        c = out_coords.long()
        torch.testing.assert_close(out, ref[0][:, c[:, 1], c[:, 2], c[:, 3]].T, rtol=1e-5, atol=1e-5)


def test_torch_export_with_dynamic_point_count(tiny):
    preset = get_preset(TINY)
    at_export = random_frame(preset, seed=5, num_points=4000)
    num_points = torch.export.Dim("num_points", min=2, max=1 << 24)
    with torch.no_grad():
        program = torch.export.export(tiny, (at_export["images"], at_export["points"]),
                                      dynamic_shapes=(None, {0: num_points}))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    for op in ("voxelize", "sparse_conv3d", "scatter_dense", "bev_pool"):
        assert f"sparsefuse.{op}.default" in targets
    # Rank buffers are graph constants (non-persistent buffers), not learned parameters.
    specs = program.graph_signature.input_specs
    buffers = {spec.target for spec in specs if spec.kind.name == "BUFFER"}
    assert "camera.ranks_bev" in buffers and "camera.ranks_bev" not in tiny.state_dict()
    # Every parameter keeps its one torch name in the graph (ONNX initializer names follow it).
    params = {spec.target for spec in specs if spec.kind.name == "PARAMETER"}
    assert params == set(dict(tiny.named_parameters()))
    exported = program.module()
    for n in (2, 9000):  # different counts than at export time
        fresh = random_frame(preset, seed=100 + n, num_points=n)
        with torch.no_grad():
            got = exported(fresh["images"], fresh["points"])
        for a, b in zip(got, run(tiny, fresh), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert np.isfinite(sum(float(o.sum()) for o in got))
