"""Voxelize: reference against a brute-force binning, ONNX function against the reference,
dynamo export as one node with a data-dependent voxel count."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsefuse.plugins import onnx_ops
from sparsefuse.plugins.voxelize import grid_shape, voxelize

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
POINT_RANGE = [-3.2, -2.4, -1.0, 3.2, 2.4, 1.0]
VOXEL_SIZE = [0.4, 0.3, 0.5]


def random_points(seed: int, n: int, features: int = 4, spread: float = 1.3) -> torch.Tensor:
    """Points around the range (some outside it), a few exactly on voxel boundaries."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(POINT_RANGE[:3]), torch.tensor(POINT_RANGE[3:])
    xyz = lo + (hi - lo) * (torch.rand(n, 3, generator=gen) * spread - (spread - 1) / 2)
    on_edge = torch.rand(n, generator=gen) < 0.2
    snapped = lo + torch.round((xyz - lo) / torch.tensor(VOXEL_SIZE)) * torch.tensor(VOXEL_SIZE)
    xyz = torch.where(on_edge[:, None], snapped, xyz)
    extra = torch.randn(n, features - 3, generator=gen)
    return torch.cat([xyz, extra], dim=1).to(torch.float32)


def brute_force(points: torch.Tensor, max_voxels: int):
    """Per point: float32 floor((p - min) / size); group by (z, y, x); mean; first max_voxels keys."""
    z_size, y_size, x_size = grid_shape(POINT_RANGE, VOXEL_SIZE)
    lo = np.array(POINT_RANGE[:3], np.float32)
    size = np.array(VOXEL_SIZE, np.float32)
    groups: dict[tuple[int, int, int], list[np.ndarray]] = {}
    for p in points.numpy():
        ix, iy, iz = (int(v) for v in np.floor((p[:3] - lo) / size))
        if 0 <= ix < x_size and 0 <= iy < y_size and 0 <= iz < z_size:
            groups.setdefault((iz, iy, ix), []).append(p.astype(np.float64))
    keys = sorted(groups)[:max_voxels]
    features = np.array([np.mean(groups[k], axis=0) for k in keys]).reshape(len(keys), points.shape[1])
    coords = np.array([(0, *k) for k in keys], np.int32).reshape(len(keys), 4)
    return features, coords


def within_fp32_tolerance(actual: np.ndarray, ref: np.ndarray) -> bool:
    """DESIGN.md §7: max|a-b| <= 1e-4 * max|ref| + 1e-5."""
    if ref.size == 0:
        return actual.size == 0
    return float(np.abs(actual - ref).max()) <= 1e-4 * float(np.abs(ref).max()) + 1e-5


def test_grid_shape_is_zyx():
    assert grid_shape(POINT_RANGE, VOXEL_SIZE) == (4, 16, 16)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 300), max_voxels=st.integers(1, 400))
def test_reference_matches_brute_force(seed, n, max_voxels):
    points = random_points(seed, n)
    features, coords, num = voxelize(points, POINT_RANGE, VOXEL_SIZE, max_voxels)
    expected_features, expected_coords = brute_force(points, max_voxels)
    np.testing.assert_array_equal(coords.numpy(), expected_coords)
    assert int(num) == coords.shape[0] <= max_voxels
    np.testing.assert_allclose(features.numpy(), expected_features, rtol=1e-5, atol=1e-5)


def run_function(points: torch.Tensor, max_voxels: int) -> list[np.ndarray]:
    feeds = {"points": points.numpy()}
    attrs = {"point_range": POINT_RANGE, "voxel_size": VOXEL_SIZE, "max_voxels": max_voxels}
    model = onnx_ops.single_node_model("Voxelize", feeds, attrs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def check_function(points: torch.Tensor, max_voxels: int) -> None:
    ref_features, ref_coords, ref_num = voxelize(points, POINT_RANGE, VOXEL_SIZE, max_voxels)
    features, coords, num = run_function(points, max_voxels)
    assert coords.dtype == np.int32 and num.dtype == np.int32 and num.shape == ()
    np.testing.assert_array_equal(coords, ref_coords.numpy())
    assert int(num) == int(ref_num)
    assert features.shape == tuple(ref_features.shape)
    assert within_fp32_tolerance(features, ref_features.numpy())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 400), max_voxels=st.integers(1, 300))
def test_function_matches_reference(seed, n, max_voxels):
    check_function(random_points(seed, n), max_voxels)


@pytest.mark.parametrize(
    "points",
    [
        torch.zeros(0, 4),  # no points
        torch.tensor([[0.1, 0.2, 0.3, 1.0]]),  # one point
        torch.tensor([[10.0, 0.0, 0.0, 1.0], [0.0, -9.0, 0.0, 2.0]]),  # all outside
        torch.tensor([[-3.2, -2.4, -1.0, 1.0], [3.2, 2.4, 1.0, 2.0]]),  # exactly on min (in) and max (out)
        torch.tensor([[float("nan"), 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 5.0], [1e30, 0.0, 0.0, 1.0]]),
    ],
    ids=["empty", "single", "all-outside", "range-edges", "nan-and-huge"],
)
def test_function_edge_cases(points):
    check_function(points.to(torch.float32), max_voxels=10)


def test_function_keeps_first_max_voxels_in_key_order():
    points = random_points(11, 500, spread=1.0)
    full = voxelize(points, POINT_RANGE, VOXEL_SIZE, 10_000)[1]
    assert full.shape[0] > 20
    features, coords, num = run_function(points, 20)
    assert int(num) == 20
    np.testing.assert_array_equal(coords, full[:20].numpy())


def test_float16_points():
    points = random_points(5, 200).to(torch.float16)
    ref_features, ref_coords, _ = voxelize(points, POINT_RANGE, VOXEL_SIZE, 1000)
    features, coords, _ = run_function(points, 1000)
    assert features.dtype == np.float16
    np.testing.assert_array_equal(coords, ref_coords.numpy())
    ref = ref_features.float().numpy()
    assert float(np.abs(features.astype(np.float32) - ref).max()) <= 1e-2 * float(np.abs(ref).max()) + 1e-3


class Voxelizer(torch.nn.Module):
    def forward(self, points):
        features, coords, num = torch.ops.sparsefuse.voxelize(points, POINT_RANGE, VOXEL_SIZE, 1000)
        return features * 2.0, coords, num


def test_dynamo_export_gives_one_node_with_dynamic_counts():
    points = random_points(1, 300)
    n = torch.export.Dim("num_points", min=2, max=1_000_000)
    program = torch.onnx.export(
        Voxelizer().eval(),
        (points,),
        dynamo=True,
        input_names=["points"],
        dynamic_shapes=({0: n},),
        custom_translation_table=onnx_ops.custom_translation_table(),
        verbose=False,
    )
    model = program.model_proto
    nodes = [node for node in model.graph.node if node.op_type == "Voxelize"]
    assert len(nodes) == 1 and nodes[0].domain == "sparsefuse" and len(nodes[0].output) == 3
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # P is symbolic
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param  # V is data-dependent

    session = ort.InferenceSession(
        onnx_ops.attach_functions(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    points = random_points(2, 517)  # another point count
    features, coords, num = session.run(None, {"points": points.numpy()})
    ref_features, ref_coords, ref_num = Voxelizer()(points)
    np.testing.assert_array_equal(coords, ref_coords.numpy())
    assert int(num) == int(ref_num)
    assert within_fp32_tolerance(features, ref_features.numpy())
