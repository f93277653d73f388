"""Voxelize: reference against a brute-force binning and against spconv's PointToVoxel (hard
voxelization: arrival order, at most P points per voxel), ONNX function against the reference,
dynamo export as one node with a data-dependent voxel count."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsefuse.plugins import onnx_ops
from sparsefuse.plugins.voxelize import grid_shape, voxelize
from sparsefuse.plugins.voxelize.function import list_num_points
from sparsefuse.plugins.voxelize.reference import voxelize_with_counts

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
    """docs/tolerances.md: max|a-b| <= 1e-4 * max|ref| + 1e-5."""
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
    features, coords, num, counts = session.run(None, feeds)
    ref_counts = voxelize_with_counts(points, POINT_RANGE, VOXEL_SIZE, max_voxels)[3]
    np.testing.assert_array_equal(counts, ref_counts.numpy())  # the 4th output, default attributes
    return [features, coords, num]


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
    # The exporter lists every schema output: the fourth (num_points_per_voxel) is unused here.
    assert len(nodes) == 1 and nodes[0].domain == "sparsefuse" and len(nodes[0].output) == 4
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert (attrs["max_points_per_voxel"], attrs["reduce"], attrs["order"]) == (0, b"mean", b"key")
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


# ---- hard voxelization: max_points_per_voxel, reduce="none", order="arrival", num_points_per_voxel ----

MODES = [(0, "mean", "key"), (0, "mean", "arrival"), (3, "mean", "key"), (2, "mean", "arrival"),
         (3, "none", "key"), (4, "none", "arrival"), (1, "none", "arrival")]


def brute_force_modes(points: torch.Tensor, max_voxels: int, max_points: int, reduce: str, order: str):
    """Per point in input order: bin, open voxels (key or arrival order), keep each voxel's first
    max_points points; then mean or zero-padded lists. Returns (features, coords, counts)."""
    z_size, y_size, x_size = grid_shape(POINT_RANGE, VOXEL_SIZE)
    lo = np.array(POINT_RANGE[:3], np.float32)
    size = np.array(VOXEL_SIZE, np.float32)
    groups: dict[tuple[int, int, int], list[np.ndarray]] = {}
    for p in points.numpy():
        ix, iy, iz = (int(v) for v in np.floor((p[:3] - lo) / size))
        if 0 <= ix < x_size and 0 <= iy < y_size and 0 <= iz < z_size:
            groups.setdefault((iz, iy, ix), []).append(p.astype(np.float64))  # dicts keep arrival order
    keys = (sorted(groups) if order == "key" else list(groups))[:max_voxels]
    lists = [groups[k][:max_points] if max_points else groups[k] for k in keys]
    f = points.shape[1]
    if reduce == "mean":
        features = np.array([np.mean(v, axis=0) for v in lists]).reshape(len(keys), f)
    else:
        features = np.zeros((len(keys), max_points, f))
        for i, v in enumerate(lists):
            features[i, : len(v)] = v
    coords = np.array([(0, *k) for k in keys], np.int32).reshape(len(keys), 4)
    return features, coords, np.array([len(v) for v in lists], np.int32)


def dense_points(seed: int, n: int, features: int = 4) -> torch.Tensor:
    """Points inside the range crowded into few voxels (many voxels hold more than 4 points)."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(POINT_RANGE[:3]), torch.tensor(POINT_RANGE[3:])
    centre = lo + (hi - lo) * torch.rand(max(n // 6, 1), 3, generator=gen)
    pick = torch.randint(0, centre.shape[0], (n,), generator=gen)
    xyz = centre[pick] + 0.05 * torch.randn(n, 3, generator=gen)
    return torch.cat([xyz, torch.randn(n, features - 3, generator=gen)], dim=1).to(torch.float32)


@pytest.mark.parametrize(("max_points", "reduce", "order"), MODES)
@pytest.mark.parametrize("max_voxels", [7, 1000])
def test_reference_modes_match_brute_force(max_points, reduce, order, max_voxels):
    points = torch.cat([dense_points(3, 300), random_points(4, 100)])
    features, coords, num, counts = voxelize_with_counts(
        points, POINT_RANGE, VOXEL_SIZE, max_voxels, max_points, reduce, order)
    want_features, want_coords, want_counts = brute_force_modes(points, max_voxels, max_points, reduce, order)
    assert int(num) == coords.shape[0] == counts.shape[0] <= max_voxels
    np.testing.assert_array_equal(coords.numpy(), want_coords)
    np.testing.assert_array_equal(counts.numpy(), want_counts)
    if max_points:
        assert int(counts.max()) == max_points  # the case with more points than slots is exercised
    np.testing.assert_allclose(features.numpy(), want_features, rtol=1e-5, atol=1e-5)
    three = voxelize(points, POINT_RANGE, VOXEL_SIZE, max_voxels, max_points, reduce, order)
    for a, b in zip(three, (features, coords, num), strict=True):
        assert torch.equal(a, b)


def test_defaults_are_the_original_op():
    points = random_points(9, 400)
    plain = voxelize(points, POINT_RANGE, VOXEL_SIZE, 50)
    explicit = voxelize(points, POINT_RANGE, VOXEL_SIZE, 50, 0, "mean", "key")
    for a, b in zip(plain, explicit, strict=True):
        assert torch.equal(a, b)
    schema = torch.ops.sparsefuse.voxelize.default._schema
    defaults = {a.name: a.default_value for a in schema.arguments if a.has_default_value()}
    assert defaults == {"max_points_per_voxel": 0, "reduce": "mean", "order": "key"}


@pytest.mark.parametrize(
    ("max_points", "reduce", "order", "error"),
    [(0, "none", "arrival", "max_points_per_voxel > 0"), (2, "max", "key", "reduce"),
     (2, "none", "random", "order"), (-1, "mean", "key", ">= 0")],
)
def test_invalid_modes_are_rejected(max_points, reduce, order, error):
    with pytest.raises(ValueError, match=error):
        voxelize(random_points(1, 10), POINT_RANGE, VOXEL_SIZE, 10, max_points, reduce, order)


spconv_utils = pytest.importorskip("spconv.pytorch.utils")


@pytest.mark.parametrize(
    ("seed", "n", "max_voxels", "max_points"),
    [(0, 600, 10_000, 5),  # many voxels with more than 5 points
     (1, 2000, 40, 3),  # more voxels than max_voxels: the first 40 by arrival survive
     (2, 300, 10_000, 64),  # no voxel full
     (3, 1, 5, 2), (4, 0, 5, 2)],
)
def test_reference_matches_spconv_point_to_voxel(seed, n, max_voxels, max_points):
    """spconv 2.x PointToVoxel (CPU) is the oracle: exact voxels, zyx coords and counts."""
    points = torch.cat([dense_points(seed, n), random_points(seed, n // 3)])[: max(n, 0)]
    gen = spconv_utils.PointToVoxel(VOXEL_SIZE, POINT_RANGE, 4, max_voxels, max_points)
    assert list(gen.grid_size) == list(grid_shape(POINT_RANGE, VOXEL_SIZE))  # (Z, Y, X) both
    voxels, coords_zyx, num_points = gen(points)
    features, coords, num, counts = voxelize_with_counts(
        points, POINT_RANGE, VOXEL_SIZE, max_voxels, max_points, "none", "arrival")
    assert int(num) == voxels.shape[0]
    if n >= 600:
        assert int(num_points.max()) == max_points or max_points == 64
    assert torch.equal(features, voxels)
    assert torch.equal(coords[:, 1:], coords_zyx) and bool((coords[:, 0] == 0).all())
    assert torch.equal(counts, num_points)


def run_function_modes(points: torch.Tensor, max_voxels: int, max_points: int, reduce: str,
                       order: str) -> list[np.ndarray]:
    feeds = {"points": points.numpy()}
    attrs = {"point_range": POINT_RANGE, "voxel_size": VOXEL_SIZE, "max_voxels": max_voxels,
             "max_points_per_voxel": max_points, "reduce": reduce, "order": order}
    model = onnx_ops.single_node_model("Voxelize", feeds, attrs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 400), max_voxels=st.integers(1, 300),
       mode=st.sampled_from(MODES))
def test_function_modes_match_reference(seed, n, max_voxels, mode):
    points = torch.cat([dense_points(seed, n), random_points(seed, n // 2)])
    ref = voxelize_with_counts(points, POINT_RANGE, VOXEL_SIZE, max_voxels, *mode)
    features, coords, num, counts = run_function_modes(points, max_voxels, *mode)
    np.testing.assert_array_equal(coords, ref[1].numpy())
    assert int(num) == int(ref[2]) and num.dtype == np.int32
    np.testing.assert_array_equal(counts, ref[3].numpy())
    assert counts.dtype == np.int32 and features.shape == tuple(ref[0].shape)
    if mode[1] == "none":
        np.testing.assert_array_equal(features, ref[0].numpy())  # copies, bit-exact
    else:
        assert within_fp32_tolerance(features, ref[0].numpy())


def test_function_arrival_keeps_first_max_voxels_by_first_point():
    points = random_points(12, 500, spread=1.0)
    full = voxelize(points, POINT_RANGE, VOXEL_SIZE, 10_000, 0, "mean", "arrival")[1]
    by_key = voxelize(points, POINT_RANGE, VOXEL_SIZE, 10_000)[1]
    assert full.shape[0] > 20 and not torch.equal(full, by_key)
    _, coords, num, _ = run_function_modes(points, 20, 0, "mean", "arrival")
    assert int(num) == 20
    np.testing.assert_array_equal(coords, full[:20].numpy())


def test_three_output_node_gets_the_fourth_listed():
    node = onnx.helper.make_node("Voxelize", ["p"], ["a", "b", "c"], domain="sparsefuse")
    other = onnx.helper.make_node("Voxelize", ["p"], ["a", "b", "c", "d"], domain="sparsefuse")
    list_num_points([node, other])
    assert list(node.output) == ["a", "b", "c", "a__num_points_per_voxel"]
    assert list(other.output) == ["a", "b", "c", "d"]


class HardVoxelizer(torch.nn.Module):
    def forward(self, points):
        voxels, coords, num, counts = torch.ops.sparsefuse.voxelize_with_counts(
            points, POINT_RANGE, VOXEL_SIZE, 50, 4, "none", "arrival")
        return voxels.sum(dim=1) / counts.clamp(min=1)[:, None].to(voxels.dtype), coords, num, counts


def test_dynamo_export_with_counts():
    n = torch.export.Dim("num_points", min=2, max=1_000_000)
    program = torch.onnx.export(
        HardVoxelizer().eval(), (dense_points(1, 300),), dynamo=True, input_names=["points"],
        dynamic_shapes=({0: n},), custom_translation_table=onnx_ops.custom_translation_table(), verbose=False,
    )
    model = program.model_proto
    nodes = [node for node in model.graph.node if node.op_type == "Voxelize"]
    assert len(nodes) == 1 and len(nodes[0].output) == 4
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert (attrs["max_points_per_voxel"], attrs["reduce"], attrs["order"]) == (4, b"none", b"arrival")
    session = ort.InferenceSession(
        onnx_ops.attach_functions(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    points = dense_points(2, 517)  # another point count
    got = session.run(None, {"points": points.numpy()})
    want = HardVoxelizer()(points)
    for a, b in zip(got[1:], want[1:], strict=True):
        np.testing.assert_array_equal(a, b.numpy())
    assert within_fp32_tolerance(got[0], want[0].numpy())
