"""BEVPool: reference against a brute-force sum, ONNX function against the reference, dynamo
export as one node."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsefuse.plugins import onnx_ops
from sparsefuse.plugins.bev_pool import bev_pool

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def pool_case(draw):
    return {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "cams": draw(st.integers(1, 3)),
        "depth_bins": draw(st.integers(1, 4)),
        "hw": (draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        "channels": draw(st.integers(1, 5)),
        "bev_shape": [draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 6))],
        "points": draw(st.integers(0, 200)),
    }


def make_inputs(case: dict, dtype=torch.float32):
    """depth, feat and sorted ranks with their intervals (BEVPoolv2 interface)."""
    gen = torch.Generator().manual_seed(case["seed"])
    cams, d, (h, w), c = case["cams"], case["depth_bins"], case["hw"], case["channels"]
    depth = torch.rand(cams, d, h, w, generator=gen).to(dtype)
    feat = torch.randn(cams, h, w, c, generator=gen).to(dtype)
    p = case["points"]
    cells = case["bev_shape"][0] * case["bev_shape"][1] * case["bev_shape"][2]
    ranks_bev, order = torch.sort(torch.randint(0, cells, (p,), generator=gen))
    ranks_depth = torch.randint(0, cams * d * h * w, (p,), generator=gen)[order]
    ranks_feat = torch.randint(0, cams * h * w, (p,), generator=gen)[order]
    _, lengths = torch.unique_consecutive(ranks_bev, return_counts=True)
    starts = torch.cumsum(lengths, 0) - lengths
    i32 = torch.int32
    return (
        depth,
        feat,
        ranks_depth.to(i32),
        ranks_feat.to(i32),
        ranks_bev.to(i32),
        starts.to(i32),
        lengths.to(i32),
    )


def within_fp32_tolerance(actual: np.ndarray, ref: np.ndarray) -> bool:
    """docs/tolerances.md: max|a-b| <= 1e-4 * max|ref| + 1e-5."""
    return float(np.abs(actual - ref).max()) <= 1e-4 * float(np.abs(ref).max()) + 1e-5


@SETTINGS
@given(pool_case())
def test_reference_matches_brute_force(case):
    inputs = make_inputs(case)
    bev = bev_pool(*inputs, case["bev_shape"])
    depth, feat, ranks_depth, ranks_feat, ranks_bev = (t.numpy() for t in inputs[:5])
    batch, y_size, x_size = case["bev_shape"]
    expected = np.zeros((batch * y_size * x_size, case["channels"]), np.float64)
    rows = feat.reshape(-1, case["channels"])
    for rd, rf, rb in zip(ranks_depth, ranks_feat, ranks_bev, strict=True):
        expected[rb] += depth.reshape(-1)[rd] * rows[rf]
    expected = expected.reshape(batch, y_size, x_size, -1).transpose(0, 3, 1, 2)
    assert tuple(bev.shape) == expected.shape
    np.testing.assert_allclose(bev.numpy(), expected, rtol=1e-5, atol=1e-5)


def feeds_of(inputs) -> dict[str, np.ndarray]:
    names = ["depth", "feat", "ranks_depth", "ranks_feat", "ranks_bev", "interval_starts", "interval_lengths"]
    return {name: t.numpy() for name, t in zip(names, inputs, strict=True)}


def run_function(inputs, bev_shape: list[int]) -> np.ndarray:
    feeds = feeds_of(inputs)
    model = onnx_ops.single_node_model("BEVPool", feeds, {"bev_shape": bev_shape})
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool_case())
def test_function_matches_reference(case):
    inputs = make_inputs(case)
    out = run_function(inputs, case["bev_shape"])
    ref = bev_pool(*inputs, case["bev_shape"]).numpy()
    assert out.shape == ref.shape
    assert within_fp32_tolerance(out, ref)


@pytest.mark.parametrize("points", [0, 1])
def test_function_empty_and_single_point(points):
    case = {
        "seed": 5,
        "cams": 2,
        "depth_bins": 3,
        "hw": (2, 3),
        "channels": 4,
        "bev_shape": [1, 4, 5],
        "points": points,
    }
    inputs = make_inputs(case)
    out = run_function(inputs, case["bev_shape"])
    ref = bev_pool(*inputs, case["bev_shape"]).numpy()
    assert out.shape == (1, 4, 4, 5)
    assert within_fp32_tolerance(out, ref)
    assert (np.count_nonzero(out) == 0) == (points == 0)


def test_function_float16():
    case = {
        "seed": 6,
        "cams": 2,
        "depth_bins": 3,
        "hw": (3, 3),
        "channels": 4,
        "bev_shape": [1, 5, 5],
        "points": 150,
    }
    inputs = make_inputs(case, torch.float16)
    out = run_function(inputs, case["bev_shape"])
    ref = bev_pool(*inputs, case["bev_shape"]).float().numpy()
    assert out.dtype == np.float16
    assert float(np.abs(out.astype(np.float32) - ref).max()) <= 1e-2 * float(np.abs(ref).max()) + 1e-3


class Pool(torch.nn.Module):
    """Ranks are constants of the module (precomputed from the rig), as in the model."""

    def __init__(self, inputs) -> None:
        super().__init__()
        for name, t in zip(
            ["ranks_depth", "ranks_feat", "ranks_bev", "starts", "lengths"], inputs[2:], strict=True
        ):
            self.register_buffer(name, t)

    def forward(self, depth, feat):
        return torch.ops.sparsefuse.bev_pool(
            depth.softmax(1),
            feat,
            self.ranks_depth,
            self.ranks_feat,
            self.ranks_bev,
            self.starts,
            self.lengths,
            [1, 6, 7],
        )


def test_dynamo_export_gives_one_node():
    case = {
        "seed": 8,
        "cams": 2,
        "depth_bins": 4,
        "hw": (3, 4),
        "channels": 5,
        "bev_shape": [1, 6, 7],
        "points": 90,
    }
    inputs = make_inputs(case)
    module = Pool(inputs).eval()
    program = torch.onnx.export(
        module,
        inputs[:2],
        dynamo=True,
        input_names=["depth", "feat"],
        custom_translation_table=onnx_ops.custom_translation_table(),
        verbose=False,
    )
    model = program.model_proto
    nodes = [node for node in model.graph.node if node.op_type == "BEVPool"]
    assert len(nodes) == 1 and nodes[0].domain == "sparsefuse" and len(nodes[0].input) == 7
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [1, 5, 6, 7]
    session = ort.InferenceSession(
        onnx_ops.attach_functions(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    fresh = make_inputs(dict(case, seed=9))
    out = session.run(None, {"depth": fresh[0].numpy(), "feat": fresh[1].numpy()})[0]
    assert within_fp32_tolerance(out, module(*fresh[:2]).numpy())


# ---------------------------------------------------------------- autograd


def test_gradients_match_plain_torch_autograd():
    torch.manual_seed(1)
    depth = torch.rand(1, 2, 2, 2, requires_grad=True)
    feat = torch.randn(1, 2, 2, 3, requires_grad=True)
    ranks_depth = torch.tensor([0, 5, 3, 7], dtype=torch.int32)
    ranks_feat = torch.tensor([0, 1, 3, 3], dtype=torch.int32)
    ranks_bev = torch.tensor([0, 0, 2, 3], dtype=torch.int32)
    starts, lengths = torch.tensor([0, 2, 3], dtype=torch.int32), torch.tensor([2, 1, 1], dtype=torch.int32)
    bev = bev_pool(depth, feat, ranks_depth, ranks_feat, ranks_bev, starts, lengths, [1, 2, 2])
    grad = torch.randn_like(bev)
    got = torch.autograd.grad(bev, (depth, feat), grad)
    plain = torch.zeros(4, 3).index_add(
        0,
        ranks_bev.long(),
        depth.reshape(-1)[ranks_depth.long()][:, None] * feat.reshape(-1, 3)[ranks_feat.long()],
    )
    want = torch.autograd.grad(plain.view(1, 2, 2, 3).permute(0, 3, 1, 2), (depth, feat), grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(2)
    depth = torch.rand(2, 3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    feat = torch.randn(2, 2, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    points = 12  # repeated depth / feature / BEV indices exercise the accumulation
    ranks_depth = torch.randint(0, depth.numel(), (points,), generator=gen, dtype=torch.int32)
    ranks_feat = torch.randint(0, 8, (points,), generator=gen, dtype=torch.int32)
    ranks_bev = torch.sort(torch.randint(0, 2 * 3 * 3, (points,), generator=gen)).values.int()
    _, lengths = torch.unique_consecutive(ranks_bev, return_counts=True)
    starts = torch.cumsum(lengths, 0) - lengths

    def pool(d, f):
        return bev_pool(d, f, ranks_depth, ranks_feat, ranks_bev, starts.int(), lengths.int(), [2, 3, 3])

    assert torch.autograd.gradcheck(pool, (depth, feat))
