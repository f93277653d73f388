"""SparseConv3d: reference against dense Conv3d (the oracle), ONNX function against the reference,
dynamo export as one node."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsefuse.plugins import onnx_ops
from sparsefuse.plugins.common import decode_key, linear_key
from sparsefuse.plugins.sparse_conv3d import output_spatial_shape, sparse_conv3d

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_sparse(seed: int, batch: int, shape: list[int], n: int, channels: int, dtype=torch.float64):
    """n unique active sites (b, z, y, x) in random order and their features."""
    gen = torch.Generator().manual_seed(seed)
    total = batch * shape[0] * shape[1] * shape[2]
    keys = torch.randperm(total, generator=gen)[: min(n, total)]
    coords = decode_key(keys, shape)
    features = torch.randn(coords.shape[0], channels, generator=gen, dtype=dtype)
    return features, coords


def densify(features: torch.Tensor, coords: torch.Tensor, batch: int, shape: list[int]) -> torch.Tensor:
    """[B, C, Z, Y, X] with zeros at the inactive sites."""
    dense = features.new_zeros(batch, features.shape[1], *shape)
    c = coords.long()
    dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = features
    return dense


def within_fp32_tolerance(actual: np.ndarray, ref: np.ndarray) -> bool:
    """docs/tolerances.md: max|a-b| <= 1e-4 * max|ref| + 1e-5."""
    if ref.size == 0:
        return actual.size == 0
    return float(np.abs(actual - ref).max()) <= 1e-4 * float(np.abs(ref).max()) + 1e-5


@st.composite
def conv_case(draw, subm: bool):
    shape = [draw(st.integers(1, 6)) for _ in range(3)]
    batch = draw(st.integers(1, 2))
    if subm:
        kernel = [draw(st.sampled_from([1, 3, 5])) for _ in range(3)]
        stride, padding = [1, 1, 1], [0, 0, 0]
    else:
        kernel = [draw(st.integers(1, 3)) for _ in range(3)]
        stride = [draw(st.integers(1, 3)) for _ in range(3)]
        padding = [draw(st.integers(0, 2)) for _ in range(3)]
    dilation = [draw(st.integers(1, 2)) for _ in range(3)]
    out_shape = output_spatial_shape(shape, kernel, stride, padding, dilation, subm)
    if min(out_shape) < 1:
        padding = [(d * (k - 1)) // 2 + 1 for k, d in zip(kernel, dilation, strict=True)]
    total = batch * shape[0] * shape[1] * shape[2]
    return {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "batch": batch,
        "n": draw(st.integers(0, total)),
        "cin": draw(st.integers(1, 3)),
        "cout": draw(st.integers(1, 3)),
        "bias": draw(st.booleans()),
        "activation": draw(st.sampled_from(["none", "relu"])),
        "attrs": {
            "spatial_shape": shape,
            "kernel_size": kernel,
            "stride": stride,
            "padding": padding,
            "dilation": dilation,
            "subm": subm,
        },
    }


def make_inputs(case: dict, dtype=torch.float64):
    attrs = case["attrs"]
    features, coords = random_sparse(
        case["seed"], case["batch"], attrs["spatial_shape"], case["n"], case["cin"], dtype
    )
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    weight = torch.randn(case["cout"], *attrs["kernel_size"], case["cin"], generator=gen, dtype=dtype)
    bias = torch.randn(case["cout"], generator=gen, dtype=dtype) if case["bias"] else None
    return features, coords, weight, bias


def dense_reference(case: dict, features, coords, weight, bias) -> torch.Tensor:
    """torch Conv3d (cross-correlation) with the spconv weight layout permuted to [Cout,Cin,kz,ky,kx]."""
    attrs = case["attrs"]
    if attrs["subm"]:
        stride, padding = (
            1,
            [d * (k // 2) for k, d in zip(attrs["kernel_size"], attrs["dilation"], strict=True)],
        )
    else:
        stride, padding = attrs["stride"], attrs["padding"]
    dense = densify(features, coords, case["batch"], attrs["spatial_shape"])
    out = F.conv3d(dense, weight.permute(0, 4, 1, 2, 3), bias, stride, padding, attrs["dilation"])
    return torch.relu(out) if case["activation"] == "relu" else out


@SETTINGS
@given(conv_case(subm=True))
def test_submanifold_equals_dense_conv_at_active_sites(case):
    features, coords, weight, bias = make_inputs(case)
    out, out_coords = sparse_conv3d(
        features, coords, weight, bias, activation=case["activation"], **case["attrs"]
    )
    assert torch.equal(out_coords, coords)  # same sites, same order
    dense = dense_reference(case, features, coords, weight, bias)
    c = coords.long()
    expected = dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


@SETTINGS
@given(conv_case(subm=False))
def test_strided_equals_dense_conv_at_produced_sites(case):
    features, coords, weight, bias = make_inputs(case)
    attrs = case["attrs"]
    out, out_coords = sparse_conv3d(features, coords, weight, bias, activation=case["activation"], **attrs)
    # The site set is the support of a dense conv of the occupancy indicator, in linear-key order.
    occupancy = densify(
        torch.ones(coords.shape[0], 1, dtype=torch.float64), coords, case["batch"], attrs["spatial_shape"]
    )
    ones = torch.ones(1, 1, *attrs["kernel_size"], dtype=torch.float64)
    reach = F.conv3d(occupancy, ones, None, attrs["stride"], attrs["padding"], attrs["dilation"])[:, 0]
    expected_sites = torch.nonzero(reach > 0.5).to(torch.int32)  # row-major = ascending linear key
    assert torch.equal(out_coords, expected_sites)
    out_shape = output_spatial_shape(**attrs)
    keys = linear_key(out_coords, out_shape)
    assert bool((keys[1:] > keys[:-1]).all())
    dense = dense_reference(case, features, coords, weight, bias)
    c = out_coords.long()
    torch.testing.assert_close(out, dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]], rtol=1e-9, atol=1e-9)


def test_kernel_offset_order_is_row_major_without_flip():
    """One input site, a kernel with distinct weights: each output site sees exactly W[k] (spconv)."""
    coords = torch.tensor([[0, 2, 2, 2]], dtype=torch.int32)
    features = torch.ones(1, 1, dtype=torch.float64)
    weight = torch.arange(27, dtype=torch.float64).reshape(1, 3, 3, 3, 1)
    attrs = {
        "spatial_shape": [5, 5, 5],
        "kernel_size": [3, 3, 3],
        "stride": [1, 1, 1],
        "padding": [0, 0, 0],
        "dilation": [1, 1, 1],
        "subm": False,
    }
    out, out_coords = sparse_conv3d(features, coords, weight, None, activation="none", **attrs)
    # o = x - k (stride 1, no padding): offset (kz, ky, kx) reaches (2-kz, 2-ky, 2-kx).
    for row, site in zip(out[:, 0].tolist(), out_coords.tolist(), strict=True):
        kz, ky, kx = 2 - site[1], 2 - site[2], 2 - site[3]
        assert row == (kz * 3 + ky) * 3 + kx


def test_activation_is_validated():
    features, coords = random_sparse(0, 1, [3, 3, 3], 4, 2)
    with pytest.raises(ValueError, match="activation"):
        sparse_conv3d(
            features,
            coords,
            torch.zeros(2, 1, 1, 1, 2, dtype=torch.float64),
            None,
            [3, 3, 3],
            [1, 1, 1],
            [1, 1, 1],
            [0, 0, 0],
            [1, 1, 1],
            True,
            "gelu",
        )


# --- ONNX function ------------------------------------------------------------------------------


def run_function(case: dict, features, coords, weight, bias) -> list[np.ndarray]:
    feeds = {"features": features.numpy(), "coords": coords.numpy(), "weight": weight.numpy()}
    if bias is not None:
        feeds["bias"] = bias.numpy()
    attrs = dict(case["attrs"], activation=case["activation"])
    model = onnx_ops.single_node_model("SparseConv3d", feeds, attrs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out, out_coords, num_out = session.run(None, feeds)
    assert num_out.dtype == np.int32 and num_out.shape == () and num_out == out.shape[0]
    return [out, out_coords]


def check_function_against_reference(case: dict) -> None:
    features, coords, weight, bias = make_inputs(case, torch.float32)
    ref, ref_coords = sparse_conv3d(
        features, coords, weight, bias, activation=case["activation"], **case["attrs"]
    )
    out, out_coords = run_function(case, features, coords, weight, bias)
    assert out_coords.dtype == np.int32
    np.testing.assert_array_equal(out_coords, ref_coords.numpy())
    assert out.shape == tuple(ref.shape)
    assert within_fp32_tolerance(out, ref.numpy())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans().flatmap(conv_case))
def test_function_matches_reference(case):
    check_function_against_reference(case)


@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("subm", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_function_empty_and_single_site(n, subm, bias):
    case = {
        "seed": 7,
        "batch": 2,
        "n": n,
        "cin": 2,
        "cout": 3,
        "bias": bias,
        "activation": "relu",
        "attrs": {
            "spatial_shape": [4, 5, 6],
            "kernel_size": [3, 3, 3],
            "stride": [2, 2, 2],
            "padding": [1, 1, 1],
            "dilation": [1, 1, 1],
            "subm": subm,
        },
    }
    check_function_against_reference(case)


@pytest.mark.parametrize("subm", [True, False])
def test_function_float16(subm):
    case = {
        "seed": 9,
        "batch": 1,
        "n": 40,
        "cin": 4,
        "cout": 3,
        "bias": True,
        "activation": "none",
        "attrs": {
            "spatial_shape": [5, 6, 7],
            "kernel_size": [3, 3, 3],
            "stride": [2, 2, 2],
            "padding": [1, 1, 1],
            "dilation": [1, 1, 1],
            "subm": subm,
        },
    }
    features, coords, weight, bias = make_inputs(case, torch.float32)
    features, weight, bias = features.half(), weight.half(), bias.half()
    ref, ref_coords = sparse_conv3d(
        features.float(), coords, weight.float(), bias.float(), activation="none", **case["attrs"]
    )
    out, out_coords = run_function(case, features, coords, weight, bias)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out_coords, ref_coords.numpy())
    ref = ref.numpy()  # fp32 reference of the same (fp16-rounded) problem: docs/tolerances.md fp16 rule
    assert float(np.abs(out.astype(np.float32) - ref).max()) <= 1e-2 * float(np.abs(ref).max()) + 1e-3


def test_function_uses_schema_defaults():
    """A node that omits stride/padding/dilation/subm/activation gets the schema defaults."""
    features, coords = random_sparse(3, 1, [4, 4, 4], 10, 2, torch.float32)
    weight = torch.randn(3, 3, 3, 3, 2)
    feeds = {"features": features.numpy(), "coords": coords.numpy(), "weight": weight.numpy()}
    model = onnx_ops.single_node_model(
        "SparseConv3d", feeds, {"spatial_shape": [4, 4, 4], "kernel_size": [3, 3, 3]}
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out, out_coords, _ = session.run(None, feeds)
    ref, ref_coords = sparse_conv3d(
        features, coords, weight, None, [4, 4, 4], [3, 3, 3], [1, 1, 1], [0, 0, 0], [1, 1, 1], False, "none"
    )
    np.testing.assert_array_equal(out_coords, ref_coords.numpy())
    assert within_fp32_tolerance(out, ref.numpy())


# --- export ---------------------------------------------------------------------------------------


class TwoConvs(torch.nn.Module):
    """A strided conv with bias and ReLU, then a submanifold conv without bias."""

    def __init__(self) -> None:
        super().__init__()
        self.down = torch.nn.Module()
        self.down.weight = torch.nn.Parameter(torch.randn(4, 3, 3, 3, 2))
        self.down.bias = torch.nn.Parameter(torch.randn(4))
        self.subm_weight = torch.nn.Parameter(torch.randn(5, 3, 3, 3, 4))

    def forward(self, features, coords):
        x, c = torch.ops.sparsefuse.sparse_conv3d(
            features,
            coords,
            self.down.weight,
            self.down.bias,
            [8, 8, 8],
            [3, 3, 3],
            [2, 2, 2],
            [1, 1, 1],
            [1, 1, 1],
            False,
            "relu",
        )
        return torch.ops.sparsefuse.sparse_conv3d(
            x, c, self.subm_weight, None, [4, 4, 4], [3, 3, 3], [1, 1, 1], [0, 0, 0], [1, 1, 1], True, "none"
        )


def test_dynamo_export_gives_one_node_per_call_and_runs():
    torch.manual_seed(0)
    module = TwoConvs().eval()
    features, coords = random_sparse(1, 1, [8, 8, 8], 40, 2, torch.float32)
    n = torch.export.Dim("num_voxels", min=2, max=100_000)
    program = torch.onnx.export(
        module,
        (features, coords),
        dynamo=True,
        input_names=["features", "coords"],
        dynamic_shapes=({0: n}, {0: n}),
        custom_translation_table=onnx_ops.custom_translation_table(),
        verbose=False,
    )
    model = program.model_proto
    convs = [node for node in model.graph.node if node.op_type == "SparseConv3d"]
    assert len(convs) == 2 and all(node.domain == "sparsefuse" for node in convs)
    assert len(convs[0].input) == 4 and len(convs[1].input) == 3  # bias, then no bias
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in convs[0].attribute}
    assert attrs["subm"] == 0 and attrs["activation"] == b"relu" and attrs["stride"] == [2, 2, 2]
    assert {"down.weight", "down.bias", "subm_weight"} <= {init.name for init in model.graph.initializer}
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic N
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param  # data-dependent M

    session = ort.InferenceSession(
        onnx_ops.attach_functions(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    features, coords = random_sparse(2, 1, [8, 8, 8], 57, 2, torch.float32)  # another N
    out, out_coords = session.run(None, {"features": features.numpy(), "coords": coords.numpy()})
    with torch.no_grad():
        ref, ref_coords = module(features, coords)
    np.testing.assert_array_equal(out_coords, ref_coords.numpy())
    assert within_fp32_tolerance(out, ref.numpy())


# ---------------------------------------------------------------- autograd and kernel-map lookups


def test_gradients_match_plain_torch_autograd_over_the_kernel_map():
    from sparsefuse.plugins.sparse_conv3d.reference import apply_kernel_map, build_kernel_map

    torch.manual_seed(0)
    shape = [6, 11, 9]
    keys = torch.randperm(6 * 11 * 9)[:80]
    coords = torch.stack([torch.zeros_like(keys), keys // 99, (keys // 9) % 11, keys % 9], 1).int()
    for subm, stride, act in ((True, 1, "relu"), (False, 2, "none")):
        feats = torch.randn(80, 3, requires_grad=True)
        weight = torch.randn(4, 3, 3, 3, 3, requires_grad=True)
        bias = torch.randn(4, requires_grad=True)
        args = (shape, [3, 3, 3], [stride] * 3, [1, 1, 1], [1, 1, 1], subm, act)
        out, _ = sparse_conv3d(feats, coords, weight, bias, *args)
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, (feats, weight, bias), grad)
        ref = apply_kernel_map(feats, weight, bias, build_kernel_map(coords, *args[:-1]), act)
        want = torch.autograd.grad(ref, (feats, weight, bias), grad)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("subm", [True, False])
def test_gradcheck_float64(subm):
    case = {
        "seed": 3, "batch": 2, "n": 20, "cin": 2, "cout": 3, "bias": True, "activation": "none",
        "attrs": {"spatial_shape": [3, 4, 5], "kernel_size": [3, 3, 3], "stride": [1 if subm else 2] * 3,
                  "padding": [1, 1, 1], "dilation": [1, 1, 1], "subm": subm},
    }
    features, coords, weight, bias = make_inputs(case)
    attrs = list(case["attrs"].values())

    def conv(f, w, b):
        return sparse_conv3d(f, coords, w, b, *attrs, "none")[0]

    inputs = tuple(t.requires_grad_() for t in (features, weight, bias))
    assert torch.autograd.gradcheck(conv, inputs, fast_mode=True)


def _assert_same_map(a, b) -> None:
    assert torch.equal(a.out_coords, b.out_coords)
    assert len(a.in_index) == len(b.in_index)
    for x, y in zip(a.in_index + a.out_index, b.in_index + b.out_index, strict=True):
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(x, y)


@SETTINGS
@given(conv_case(subm=True), conv_case(subm=False))
def test_table_and_sorted_lookups_give_identical_kernel_maps(sub_case, strided_case):
    from sparsefuse.plugins.sparse_conv3d.reference import build_kernel_map

    for case in (sub_case, strided_case):
        _, coords = random_sparse(case["seed"], case["batch"], case["attrs"]["spatial_shape"], case["n"], 1)
        args = list(case["attrs"].values())
        table = build_kernel_map(coords, *args, lookup="table")
        _assert_same_map(table, build_kernel_map(coords, *args, lookup="sorted"))
        _assert_same_map(table, build_kernel_map(coords, *args))
        if not case["attrs"]["subm"]:  # output sites ordered by linear key
            keys = linear_key(table.out_coords, output_spatial_shape(*args))
            assert torch.equal(keys, torch.sort(keys).values) and keys.unique().numel() == keys.numel()


def test_auto_lookup_falls_back_to_sorted_keys_for_big_grids(monkeypatch):
    from sparsefuse.plugins.sparse_conv3d import reference

    calls = []
    finder = reference._key_finder

    def spy(keys, num_cells, lookup):
        calls.append(lookup)
        return finder(keys, num_cells, lookup)

    monkeypatch.setattr(reference, "_key_finder", spy)
    coords = torch.tensor([[0, 0, 0, 0], [0, 40, 1439, 1439]], dtype=torch.int32)
    base = ([41, 1440, 1440], [3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], True)
    kmap = reference.build_kernel_map(coords, *base)
    assert calls == ["sorted"] and [len(i) for i in kmap.in_index] == [0] * 13 + [2] + [0] * 13
    reference.build_kernel_map(coords.clamp(max=3), [4, 8, 8], *base[1:])
    assert calls == ["sorted", "table"]
    with pytest.raises(ValueError, match="lookup"):
        reference.build_kernel_map(coords, *base, lookup="hash")


@pytest.mark.parametrize("subm", [True, False])
def test_function_on_a_grid_too_big_for_a_dense_table(subm):
    """2x64x2048x2048 grid (537M cells, a 2 GiB int32 table): the body's sorted lookup needs memory for
    the sites only and matches the reference's sorted-key kernel map exactly."""
    from sparsefuse.plugins.sparse_conv3d.reference import apply_kernel_map, build_kernel_map

    shape = [64, 2048, 2048]
    gen = torch.Generator().manual_seed(11)
    centers = torch.stack([torch.randint(0, 2, (16,), generator=gen)]
                          + [torch.randint(2, s - 2, (16,), generator=gen) for s in shape], 1)
    near = centers.repeat_interleave(25, 0)
    near[:, 1:] += torch.randint(-2, 3, (400, 3), generator=gen)
    coords = torch.unique(near, dim=0).int()
    coords = coords[torch.randperm(coords.shape[0], generator=gen)]
    case = {"activation": "relu", "attrs": {"spatial_shape": shape, "kernel_size": [3, 3, 3],
                                            "stride": [1 if subm else 2] * 3, "padding": [1, 1, 1],
                                            "dilation": [1, 1, 1], "subm": subm}}
    features = torch.randn(coords.shape[0], 4, generator=gen)
    weight, bias = torch.randn(3, 3, 3, 3, 4, generator=gen), torch.randn(3, generator=gen)
    kmap = build_kernel_map(coords, *case["attrs"].values(), lookup="sorted")
    assert sum(int(i.numel()) for i in kmap.in_index) > 2 * coords.shape[0]  # real neighbourhoods
    ref = apply_kernel_map(features, weight, bias, kmap, "relu")
    out, out_coords = run_function(case, features, coords, weight, bias)
    np.testing.assert_array_equal(out_coords, kmap.out_coords.numpy())
    assert within_fp32_tolerance(out, ref.numpy())


def run_with_lookup(model: onnx.ModelProto, feeds: dict, op_type: str, table_max_cells: int
                    ) -> list[np.ndarray]:
    """Run ``model`` with its ``op_type`` body rebuilt for ``table_max_cells`` (0: always the sort)."""
    forced = onnx.ModelProto()
    forced.CopyFrom(model)
    kept = [f for f in forced.functions if f.name != op_type]
    del forced.functions[:]
    forced.functions.extend([*kept, onnx_ops.OPS[op_type].function_proto(18, table_max_cells)])
    session = ort.InferenceSession(forced.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans().flatmap(conv_case))
def test_table_and_sorted_bodies_are_bit_identical(case):
    """The body's two lookups (dense table, sort) give the same bits, whichever the grid size picks."""
    features, coords, weight, bias = make_inputs(case, torch.float32)
    feeds = {"features": features.numpy(), "coords": coords.numpy(), "weight": weight.numpy()}
    if bias is not None:
        feeds["bias"] = bias.numpy()
    attrs = dict(case["attrs"], activation=case["activation"])
    model = onnx_ops.single_node_model("SparseConv3d", feeds, attrs)
    by_table = run_with_lookup(model, feeds, "SparseConv3d", 2**62)
    by_sort = run_with_lookup(model, feeds, "SparseConv3d", 0)
    for a, b in zip(by_table, by_sort, strict=True):
        np.testing.assert_array_equal(a, b)
    ref, ref_coords = sparse_conv3d(features, coords, weight, bias, **attrs)
    np.testing.assert_array_equal(by_sort[1], ref_coords.numpy())
    assert within_fp32_tolerance(by_sort[0], ref.numpy())
