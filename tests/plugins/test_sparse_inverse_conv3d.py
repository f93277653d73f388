"""SparseInverseConv3d: reference against spconv 2.3.8's SparseInverseConv3d (the oracle, CPU) and
against dense conv_transpose3d, ONNX function against the reference, dynamo export, autograd."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sparse_conv3d import densify, random_sparse, run_with_lookup, within_fp32_tolerance

from sparsefuse.errors import SparsefuseError
from sparsefuse.plugins import onnx_ops
from sparsefuse.plugins.common import linear_key
from sparsefuse.plugins.sparse_conv3d import output_spatial_shape, sparse_conv3d
from sparsefuse.plugins.sparse_inverse_conv3d import (
    build_inverse_kernel_map,
    coarse_shape,
    sparse_inverse_conv3d,
)

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def paired_sites(seed: int, batch: int, shape: list[int], n: int, geometry: dict) -> tuple[torch.Tensor, ...]:
    """(fine coords [N,4], coarse coords [M,4] = the strided sparse_conv3d's output sites)."""
    _, fine = random_sparse(seed, batch, shape, n, 1)
    weight = torch.zeros(1, *geometry["kernel_size"], 1, dtype=torch.float64)
    _, coarse = sparse_conv3d(torch.zeros(fine.shape[0], 1, dtype=torch.float64), fine, weight, None, shape,
                              subm=False, activation="none", **geometry)
    return fine, coarse


# --- spconv oracle ---------------------------------------------------------------------------------

SPCONV_CASES = [  # (fine grid, kernel, stride, padding, dilation, batch, activation)
    ([9, 10, 11], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1], 2, "none"),
    ([8, 12, 10], [2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1], 1, "relu"),
    ([7, 13, 9], [3, 1, 3], [2, 1, 3], [1, 0, 0], [1, 1, 1], 2, "none"),
    ([9, 11, 12], [3, 3, 3], [1, 2, 2], [2, 1, 0], [2, 1, 1], 1, "relu"),
]


@pytest.mark.parametrize("case", SPCONV_CASES)
def test_reference_matches_spconv_inverse_conv_per_coordinate(case):
    spconv = pytest.importorskip("spconv.pytorch")
    shape, kernel, stride, padding, dilation, batch, act = case
    torch.manual_seed(0)
    _, fine = random_sparse(1, batch, shape, 150, 1)
    features = torch.randn(fine.shape[0], 3)
    down = spconv.SparseConv3d(3, 4, kernel, stride, padding, dilation, bias=False, indice_key="k1")
    inverse = spconv.SparseInverseConv3d(4, 5, kernel, indice_key="k1", bias=True)
    net = spconv.SparseSequential(down, inverse)
    with torch.no_grad():
        mid = down(spconv.SparseConvTensor(features, fine, shape, batch))
        out = net(spconv.SparseConvTensor(features, fine, shape, batch))
        assert list(mid.spatial_shape) == coarse_shape(shape, kernel, stride, padding, dilation)
        # spconv's weight layout is ours ([Cout, kz, ky, kx, Cin]); its coarse sites are in its own order.
        ref = sparse_inverse_conv3d(mid.features, mid.indices, fine, inverse.weight, inverse.bias, shape,
                                    kernel, stride, padding, dilation, act)
    expected = torch.relu(out.features) if act == "relu" else out.features
    key_ours, key_theirs = linear_key(fine, shape), linear_key(out.indices, shape)
    assert torch.equal(torch.sort(key_ours).values, torch.sort(key_theirs).values)  # same site set
    ours = ref[torch.argsort(key_ours)].numpy()
    theirs = expected[torch.argsort(key_theirs)].numpy()
    assert np.abs(ours).max() > 0.1  # non-trivial case
    assert within_fp32_tolerance(ours, theirs)
    # The coarse sites spconv produced are ours (sparse_conv3d), as a set.
    _, coarse = sparse_conv3d(features.double(), fine, down.weight.double(), None, shape, kernel, stride,
                              padding, dilation, False, "none")
    grid = list(mid.spatial_shape)
    assert torch.equal(torch.sort(linear_key(mid.indices, grid)).values, linear_key(coarse, grid))


# --- dense oracle -----------------------------------------------------------------------------------


@st.composite
def inverse_case(draw):
    shape = [draw(st.integers(2, 7)) for _ in range(3)]
    kernel = [draw(st.integers(1, 3)) for _ in range(3)]
    stride = [draw(st.integers(1, 3)) for _ in range(3)]
    dilation = [draw(st.integers(1, 2)) for _ in range(3)]
    padding = [draw(st.integers(0, d * (k - 1))) for k, d in zip(kernel, dilation, strict=True)]
    if min(output_spatial_shape(shape, kernel, stride, padding, dilation, False)) < 1:
        padding = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
    batch = draw(st.integers(1, 2))
    return {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "batch": batch,
        "n": draw(st.integers(0, batch * shape[0] * shape[1] * shape[2])),
        "cin": draw(st.integers(1, 3)),
        "cout": draw(st.integers(1, 3)),
        "bias": draw(st.booleans()),
        "activation": draw(st.sampled_from(["none", "relu"])),
        "paired": draw(st.booleans()),  # coarse sites = the strided conv's outputs, or a random subset
        "geometry": {"kernel_size": kernel, "stride": stride, "padding": padding, "dilation": dilation},
        "shape": shape,
    }


def make_inputs(case: dict, dtype=torch.float64):
    geometry, shape = case["geometry"], case["shape"]
    fine, coarse = paired_sites(case["seed"], case["batch"], shape, case["n"], geometry)
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    if not case["paired"]:
        grid = coarse_shape(shape, **geometry)
        count = int(torch.randint(0, 20, (1,), generator=gen))
        _, coarse = random_sparse(case["seed"] + 2, case["batch"], grid, count, 1)
    features = torch.randn(coarse.shape[0], case["cin"], generator=gen, dtype=dtype)
    weight = torch.randn(case["cout"], *geometry["kernel_size"], case["cin"], generator=gen, dtype=dtype)
    bias = torch.randn(case["cout"], generator=gen, dtype=dtype) if case["bias"] else None
    return features, coarse, fine, weight, bias


def dense_transposed(case: dict, features, coarse, fine, weight, bias) -> torch.Tensor:
    """conv_transpose3d of the dense coarse tensor, padded to the fine grid, read at the fine sites."""
    g, shape = case["geometry"], case["shape"]
    grid = coarse_shape(shape, **g)
    dense = densify(features, coarse, case["batch"], grid)
    per_axis = zip(grid, g["stride"], g["padding"], g["dilation"], g["kernel_size"], strict=True)
    reach = [(o - 1) * s - 2 * p + d * (k - 1) + 1 for o, s, p, d, k in per_axis]
    extra = [n - r for n, r in zip(shape, reach, strict=True)]  # in [0, stride): output_padding
    out = F.conv_transpose3d(dense, weight.permute(4, 0, 1, 2, 3), bias, g["stride"], g["padding"],
                             [max(e, 0) for e in extra], 1, g["dilation"])
    out = torch.relu(out) if case["activation"] == "relu" else out
    c = fine.long()
    return out[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]


@SETTINGS
@given(inverse_case())
def test_reference_equals_dense_transposed_conv_at_the_fine_sites(case):
    features, coarse, fine, weight, bias = make_inputs(case)
    out = sparse_inverse_conv3d(features, coarse, fine, weight, bias, case["shape"],
                                activation=case["activation"], **case["geometry"])
    assert out.shape == (fine.shape[0], case["cout"])
    torch.testing.assert_close(out, dense_transposed(case, features, coarse, fine, weight, bias),
                               rtol=1e-9, atol=1e-9)


def test_weight_index_is_k_without_flip():
    """One coarse site, distinct weights per offset: fine site x sees exactly W[k], x = o*s - p + k*d."""
    shape, kernel, stride, padding = [7, 7, 7], [3, 3, 3], [2, 2, 2], [1, 1, 1]
    fine = torch.tensor([[0, z, y, x] for z in range(1, 6) for y in range(1, 6) for x in range(1, 6)],
                        dtype=torch.int32)
    coarse = torch.tensor([[0, 2, 1, 2]], dtype=torch.int32)
    weight = torch.arange(27, dtype=torch.float64).reshape(1, 3, 3, 3, 1) + 1
    out = sparse_inverse_conv3d(torch.ones(1, 1, dtype=torch.float64), coarse, fine, weight, None, shape,
                                kernel, stride, padding, [1, 1, 1], "none")
    for value, site in zip(out[:, 0].tolist(), fine.tolist(), strict=True):
        k = [x - (o * 2 - 1) for x, o in zip(site[1:], [2, 1, 2], strict=True)]
        expected = (k[0] * 3 + k[1]) * 3 + k[2] + 1 if all(0 <= v < 3 for v in k) else 0
        assert value == expected


def test_table_and_sorted_lookups_give_identical_maps():
    case = {"seed": 5, "batch": 2, "n": 90, "geometry": {"kernel_size": [3, 3, 3], "stride": [2, 2, 2],
                                                         "padding": [1, 1, 1], "dilation": [1, 1, 1]}}
    fine, coarse = paired_sites(case["seed"], 2, [6, 7, 8], 90, case["geometry"])
    maps = [build_inverse_kernel_map(coarse, fine, [6, 7, 8], lookup=lookup, **case["geometry"])
            for lookup in ("table", "sorted")]
    assert sum(int(i.numel()) for i in maps[0].in_index) > 90
    for a, b in zip(maps[0].in_index + maps[0].out_index, maps[1].in_index + maps[1].out_index, strict=True):
        assert torch.equal(a, b)


def test_user_mistakes_raise_sparsefuse_errors():
    fine = torch.tensor([[0, 1, 1, 1]], dtype=torch.int32)
    args = ([4, 4, 4], [3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1])
    feats, weight = torch.ones(1, 1), torch.ones(1, 3, 3, 3, 1)
    with pytest.raises(SparsefuseError, match="activation"):
        sparse_inverse_conv3d(feats, fine, fine, weight, None, *args, "gelu")
    with pytest.raises(SparsefuseError, match="outside the grid"):
        outside = torch.tensor([[0, 2, 0, 0]], dtype=torch.int32)  # the coarse grid is 2x2x2
        sparse_inverse_conv3d(feats, outside, fine, weight, None, *args, "none")
    with pytest.raises(SparsefuseError, match="empty"):
        sparse_inverse_conv3d(feats, fine, fine, weight, None, [1, 4, 4], [3, 3, 3], [2, 2, 2], [0, 0, 0],
                              [1, 1, 1], "none")


# --- autograd ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["none", "relu"])
def test_gradcheck_float64(activation):
    case = {"seed": 3, "batch": 2, "n": 30, "cin": 2, "cout": 3, "bias": True, "activation": activation,
            "paired": True, "shape": [4, 5, 6],
            "geometry": {"kernel_size": [3, 3, 3], "stride": [2, 2, 2], "padding": [1, 1, 1],
                         "dilation": [1, 1, 1]}}
    features, coarse, fine, weight, bias = make_inputs(case)
    assert coarse.shape[0] > 3

    def conv(f, w, b):
        return sparse_inverse_conv3d(f, coarse, fine, w, b, case["shape"], activation=activation,
                                     **case["geometry"])

    inputs = tuple(t.requires_grad_() for t in (features, weight, bias))
    assert torch.autograd.gradcheck(conv, inputs, fast_mode=True)
    # and against autograd through the dense oracle
    out = conv(*inputs)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(dense_transposed(case, *inputs[:1], coarse, fine, *inputs[1:]), inputs, grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


# --- ONNX function ----------------------------------------------------------------------------------


def one_node_model(case: dict, features, coarse, fine, weight, bias) -> tuple[onnx.ModelProto, dict]:
    """(SparseInverseConv3d one-node model with its body, feeds)."""
    feeds = {"features": features.numpy(), "coords": coarse.numpy(), "out_coords": fine.numpy(),
             "weight": weight.numpy()}
    if bias is not None:
        feeds["bias"] = bias.numpy()
    attrs = dict(case["geometry"], spatial_shape=case["shape"], activation=case["activation"])
    return onnx_ops.single_node_model("SparseInverseConv3d", feeds, attrs), feeds


def run_function(case: dict, features, coarse, fine, weight, bias) -> np.ndarray:
    model, feeds = one_node_model(case, features, coarse, fine, weight, bias)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, feeds)
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inverse_case())
def test_function_matches_reference(case):
    features, coarse, fine, weight, bias = make_inputs(case, torch.float32)
    ref = sparse_inverse_conv3d(features, coarse, fine, weight, bias, case["shape"],
                                activation=case["activation"], **case["geometry"])
    out = run_function(case, features, coarse, fine, weight, bias)
    assert out.shape == tuple(ref.shape) and out.dtype == np.float32
    assert within_fp32_tolerance(out, ref.numpy())


def test_function_on_a_grid_too_big_for_a_dense_table():
    """64x2048x2048 fine grid (268M cells): the body's sorted lookup stays exact in small memory."""
    shape = [64, 2048, 2048]
    geometry = {"kernel_size": [3, 3, 3], "stride": [2, 2, 2], "padding": [1, 1, 1], "dilation": [1, 1, 1]}
    gen = torch.Generator().manual_seed(4)
    centers = torch.stack([torch.randint(2, s - 2, (12,), generator=gen) for s in shape], 1)
    near = centers.repeat_interleave(25, 0) + torch.randint(-2, 3, (300, 3), generator=gen)
    fine = torch.unique(torch.cat([torch.zeros(300, 1, dtype=torch.int64), near], 1), dim=0).int()
    fine = fine[torch.randperm(fine.shape[0], generator=gen)]
    _, coarse = sparse_conv3d(torch.zeros(fine.shape[0], 1), fine, torch.zeros(1, 3, 3, 3, 1), None, shape,
                              subm=False, activation="none", **geometry)
    case = {"shape": shape, "geometry": geometry, "activation": "relu"}
    features = torch.randn(coarse.shape[0], 4, generator=gen)
    weight, bias = torch.randn(3, 3, 3, 3, 4, generator=gen), torch.randn(3, generator=gen)
    ref = sparse_inverse_conv3d(features, coarse, fine, weight, bias, shape, activation="relu", **geometry)
    kmap = build_inverse_kernel_map(coarse, fine, shape, lookup="sorted", **geometry)
    assert sum(int(i.numel()) for i in kmap.in_index) > fine.shape[0]  # neighbours were found
    assert within_fp32_tolerance(run_function(case, features, coarse, fine, weight, bias), ref.numpy())


class DownUp(torch.nn.Module):
    """A strided conv, then its inverse back onto the input sites (an spconv U-Net skip)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = torch.nn.Parameter(torch.randn(4, 3, 3, 3, 2))
        self.up = torch.nn.Parameter(torch.randn(3, 3, 3, 3, 4))
        self.up_bias = torch.nn.Parameter(torch.randn(3))

    def forward(self, features, coords):
        geometry = ([3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1])
        ops = torch.ops.sparsefuse
        x, c = ops.sparse_conv3d(features, coords, self.down, None, [8, 8, 8], *geometry, False, "relu")
        return ops.sparse_inverse_conv3d(x, c, coords, self.up, self.up_bias, [8, 8, 8], *geometry, "relu")


def test_dynamo_export_gives_one_node_with_static_rows_and_runs():
    torch.manual_seed(0)
    module = DownUp().eval()
    features, coords = random_sparse(1, 1, [8, 8, 8], 40, 2, torch.float32)
    n = torch.export.Dim("num_voxels", min=2, max=100_000)
    program = torch.onnx.export(module, (features, coords), dynamo=True, input_names=["features", "coords"],
                                dynamic_shapes=({0: n}, {0: n}),
                                custom_translation_table=onnx_ops.custom_translation_table(), verbose=False)
    model = program.model_proto
    nodes = [node for node in model.graph.node if node.op_type == "SparseInverseConv3d"]
    assert len(nodes) == 1 and nodes[0].domain == "sparsefuse" and len(nodes[0].input) == 5
    assert nodes[0].input[2] == "coords"  # the fine sites are the model input itself
    rows = model.graph.output[0].type.tensor_type.shape.dim[0]
    assert rows.dim_param == model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # M = N, static
    session = ort.InferenceSession(onnx_ops.attach_functions(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    features, coords = random_sparse(2, 1, [8, 8, 8], 57, 2, torch.float32)
    (out,) = session.run(None, {"features": features.numpy(), "coords": coords.numpy()})
    with torch.no_grad():
        ref = module(features, coords)
    assert out.shape == (57, 3) and float(np.abs(out).max()) > 0
    assert within_fp32_tolerance(out, ref.numpy())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inverse_case())
def test_table_and_sorted_bodies_are_bit_identical(case):
    features, coarse, fine, weight, bias = make_inputs(case, torch.float32)
    model, feeds = one_node_model(case, features, coarse, fine, weight, bias)
    (by_table,) = run_with_lookup(model, feeds, "SparseInverseConv3d", 2**62)
    (by_sort,) = run_with_lookup(model, feeds, "SparseInverseConv3d", 0)
    np.testing.assert_array_equal(by_table, by_sort)
    ref = sparse_inverse_conv3d(features, coarse, fine, weight, bias, case["shape"],
                                activation=case["activation"], **case["geometry"])
    assert within_fp32_tolerance(by_sort, ref.numpy())
