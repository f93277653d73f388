"""ScatterDense: reference against a brute-force fold of height into channels, ONNX function
against the reference, dynamo export as one node."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsefuse.plugins import onnx_ops
from sparsefuse.plugins.common import decode_key
from sparsefuse.plugins.scatter_dense import scatter_dense

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def scatter_case(draw):
    shape = [draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6))]
    batch = draw(st.integers(1, 3))
    total = batch * shape[0] * shape[1] * shape[2]
    return {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "shape": shape,
        "batch": batch,
        "n": draw(st.integers(0, total)),
        "channels": draw(st.integers(1, 4)),
    }


def make_inputs(case: dict, dtype=torch.float32):
    gen = torch.Generator().manual_seed(case["seed"])
    total = case["batch"] * case["shape"][0] * case["shape"][1] * case["shape"][2]
    coords = decode_key(torch.randperm(total, generator=gen)[: case["n"]], case["shape"])
    features = torch.randn(coords.shape[0], case["channels"], generator=gen).to(dtype)
    return features, coords


@SETTINGS
@given(scatter_case())
def test_reference_folds_height_into_channels(case):
    features, coords = make_inputs(case)
    dense = scatter_dense(features, coords, case["shape"], case["batch"])
    z_size, y_size, x_size = case["shape"]
    channels = case["channels"]
    assert tuple(dense.shape) == (case["batch"], channels * z_size, y_size, x_size)
    expected = np.zeros(tuple(dense.shape), np.float32)
    for f, (b, z, y, x) in zip(features.numpy(), coords.tolist(), strict=True):
        for c in range(channels):
            expected[b, c * z_size + z, y, x] = f[c]
    np.testing.assert_array_equal(dense.numpy(), expected)


def run_function(features: torch.Tensor, coords: torch.Tensor, shape: list[int], batch: int) -> np.ndarray:
    feeds = {"features": features.numpy(), "coords": coords.numpy()}
    model = onnx_ops.single_node_model("ScatterDense", feeds, {"spatial_shape": shape, "batch_size": batch})
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scatter_case())
def test_function_matches_reference(case):
    features, coords = make_inputs(case)
    out = run_function(features, coords, case["shape"], case["batch"])
    np.testing.assert_array_equal(out, scatter_dense(features, coords, case["shape"], case["batch"]).numpy())


@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_function_empty_single_and_float16(n, dtype):
    case = {"seed": 3, "shape": [2, 3, 4], "batch": 2, "n": n, "channels": 3}
    features, coords = make_inputs(case, dtype)
    out = run_function(features, coords, case["shape"], case["batch"])
    assert out.dtype == features.numpy().dtype and out.shape == (2, 6, 3, 4)
    np.testing.assert_array_equal(out, scatter_dense(features, coords, case["shape"], case["batch"]).numpy())


def test_function_default_batch_size_is_one():
    features, coords = make_inputs({"seed": 4, "shape": [2, 3, 4], "batch": 1, "n": 5, "channels": 2})
    feeds = {"features": features.numpy(), "coords": coords.numpy()}
    model = onnx_ops.single_node_model("ScatterDense", feeds, {"spatial_shape": [2, 3, 4]})
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )[0]
    np.testing.assert_array_equal(out, scatter_dense(features, coords, [2, 3, 4], 1).numpy())


class ToBev(torch.nn.Module):
    def forward(self, features, coords):
        return torch.ops.sparsefuse.scatter_dense(features * 2.0, coords, [2, 5, 6], 1)


def test_dynamo_export_gives_one_node():
    features, coords = make_inputs({"seed": 1, "shape": [2, 5, 6], "batch": 1, "n": 20, "channels": 3})
    n = torch.export.Dim("num_voxels", min=2, max=100_000)
    program = torch.onnx.export(
        ToBev().eval(),
        (features, coords),
        dynamo=True,
        input_names=["features", "coords"],
        dynamic_shapes=({0: n}, {0: n}),
        custom_translation_table=onnx_ops.custom_translation_table(),
        verbose=False,
    )
    model = program.model_proto
    nodes = [node for node in model.graph.node if node.op_type == "ScatterDense"]
    assert len(nodes) == 1 and nodes[0].domain == "sparsefuse"
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 6, 5, 6]
    session = ort.InferenceSession(
        onnx_ops.attach_functions(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    features, coords = make_inputs({"seed": 2, "shape": [2, 5, 6], "batch": 1, "n": 33, "channels": 3})
    out = session.run(None, {"features": features.numpy(), "coords": coords.numpy()})[0]
    np.testing.assert_array_equal(out, ToBev()(features, coords).numpy())


# ---------------------------------------------------------------- autograd


def test_gradient_gathers_the_dense_gradient_at_each_voxel():
    torch.manual_seed(1)
    feats = torch.randn(5, 3, requires_grad=True)
    coords = torch.tensor(
        [[0, 0, 1, 2], [0, 1, 0, 0], [0, 1, 3, 3], [0, 0, 0, 1], [0, 1, 2, 0]], dtype=torch.int32
    )
    dense = scatter_dense(feats, coords, [2, 4, 4], 1)
    grad = torch.randn_like(dense)
    (got,) = torch.autograd.grad(dense, feats, grad)
    want = grad.view(1, 3, 2, 4, 4)[0].permute(1, 2, 3, 0)[
        coords[:, 1].long(), coords[:, 2].long(), coords[:, 3].long()
    ]
    torch.testing.assert_close(got, want)


def test_gradcheck_float64():
    keys = torch.randperm(2 * 2 * 3 * 4, generator=torch.Generator().manual_seed(0))[:9]
    coords = decode_key(keys, [2, 3, 4])
    feats = torch.randn(9, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: scatter_dense(f, coords, [2, 3, 4], 2), (feats,))
