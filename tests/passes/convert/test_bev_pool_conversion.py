"""bev_pool converter and rebinding: converted copies against the ORIGINAL user functions (plain
torch, the oracle), runtime and static ranks, BEVDet bev_pool_v2, options, deepcopy, export
through ONNX Runtime, and the BEVFusion-style reference model (camera branch alone, and the whole
model once the spconv converter is there). Tolerance max|a-b| <= 1e-4 * max|ref| + 1e-5."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.convert import bev_pool as conv_bev_pool
from sparsefuse.passes.convert import convert
from sparsefuse.passes.convert.bev_pool import StaticBevPool
from sparsefuse.plugins import onnx_ops

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "models"


def bev_pool(feats, coords, B, D, H, W):  # noqa: N803  (the user's BEVFusion-style function)
    c = coords.long()
    out = feats.new_zeros(B, D, H, W, feats.shape[1])
    out.index_put_((c[:, 3], c[:, 2], c[:, 0], c[:, 1]), feats, accumulate=True)
    return out.permute(0, 4, 1, 2, 3).contiguous()


def my_pool(feats, coords, B, D, H, W):  # noqa: N803  (named otherwise: found only when listed)
    c = coords.long()
    flat = ((c[:, 3] * D + c[:, 2]) * H + c[:, 0]) * W + c[:, 1]
    out = feats.new_zeros(B * D * H * W, feats.shape[1]).index_add_(0, flat, feats)
    return out.view(B, D, H, W, -1).permute(0, 4, 1, 2, 3)


def bev_pool_v2(
    depth, feat, ranks_depth, ranks_feat, ranks_bev, bev_feat_shape, interval_starts, interval_lengths
):
    """The user's BEVDet-style function: out [B, Z, Y, X, C] by flat ranks -> [B, C, Z, Y, X]."""
    channels = feat.shape[-1]
    values = depth.reshape(-1)[ranks_depth.long()][:, None] * feat.reshape(-1, channels)[ranks_feat.long()]
    out = feat.new_zeros(int(np.prod(bev_feat_shape[:4])), channels).index_add_(0, ranks_bev.long(), values)
    return out.reshape(*bev_feat_shape).permute(0, 4, 1, 2, 3).contiguous()


def _lift(feats, coords, shape):
    """A module-level helper between the method and bev_pool (re-globalized with the method)."""
    return bev_pool(feats, coords, *shape)


class Splat(nn.Module):
    """Calls bev_pool through a helper of its own module."""

    def __init__(self, shape=(2, 3, 10, 12), channels: int = 5) -> None:
        super().__init__()
        self.shape = shape
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, feats, coords):
        return _lift(feats * self.scale, coords, self.shape)


class Named(nn.Module):
    def forward(self, feats, coords):
        return my_pool(feats, coords, 1, 2, 6, 7)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Splat()
        self.head = nn.Linear(5, 3)

    def forward(self, feats, coords):
        return self.head(self.inner(feats, coords).permute(0, 2, 3, 4, 1))


def points(seed: int, n: int, shape=(2, 3, 10, 12), channels: int = 5, crowd: int = 40):
    """feats [n,C], coords [n,4] (x, y, z, b) inside the grid, crowded into ``crowd`` cells."""
    gen = torch.Generator().manual_seed(seed)
    b, d, h, w = shape
    cells = torch.stack(
        [
            torch.randint(0, h, (crowd,), generator=gen),
            torch.randint(0, w, (crowd,), generator=gen),
            torch.randint(0, d, (crowd,), generator=gen),
            torch.randint(0, b, (crowd,), generator=gen),
        ],
        1,
    )
    coords = cells[torch.randint(0, crowd, (n,), generator=gen)].to(torch.int32)
    return torch.randn(n, channels, generator=gen), coords


def assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    err = float((out - ref).abs().max()) if ref.numel() else 0.0
    bound = 1e-4 * float(ref.abs().max()) + 1e-5
    assert err <= bound, f"max|a-b| {err} > {bound}"


def uses_our_op(module: nn.Module, *args) -> bool:
    graph = torch.export.export(module, args).graph
    return any("sparsefuse.bev_pool" in str(node.target) for node in graph.nodes)


def test_convention_cell_x_y_z_b():
    """out[b, :, z, x, y]: H indexes coords[:, 0] (x), W indexes coords[:, 1] (y)."""
    feats = torch.tensor([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]])
    coords = torch.tensor([[3, 1, 0, 1], [3, 1, 0, 1], [0, 4, 2, 0]], dtype=torch.int32)
    for fn in (bev_pool, conv_bev_pool.bev_pool_runtime):
        out = fn(feats, coords, 2, 3, 5, 6)
        assert out.shape == (2, 2, 3, 5, 6)
        assert out[1, :, 0, 3, 1].tolist() == [11.0, 22.0] and out[0, :, 2, 0, 4].tolist() == [100.0, 200.0]
        assert float(out.abs().sum()) == 333.0
    static = StaticBevPool(coords, (2, 3, 5, 6), "t")
    assert torch.equal(static(feats, coords, 2, 3, 5, 6), bev_pool(feats, coords, 2, 3, 5, 6))


def test_runtime_conversion_matches_and_leaves_the_original_alone():
    model = Outer().eval()
    converted, report = convert(model)
    [row] = report.converted
    assert (row.path, row.target) == ("inner:bev_pool", "BEVPool (runtime ranks)")
    assert row.source.endswith("test_bev_pool_conversion.bev_pool") and "fewer than 2" in row.note
    assert "forward" in vars(converted.inner) and "forward" not in vars(model.inner)
    assert Splat.forward.__globals__["bev_pool"] is bev_pool and _lift.__globals__["bev_pool"] is bev_pool
    for seed, n in [(0, 500), (1, 37), (2, 2000)]:
        feats, coords = points(seed, n)
        assert_close(converted(feats, coords), model(feats, coords))
    assert uses_our_op(converted.inner, *points(3, 50)) and not uses_our_op(model.inner, *points(3, 50))


def test_runtime_outside_points_add_nothing():
    feats, coords = points(4, 300)
    inside = bev_pool(feats, coords, 2, 3, 10, 12)
    outside = torch.tensor([[10, 0, 0, 0], [0, -1, 0, 0], [0, 0, 3, 0], [0, 0, 0, 2]], dtype=torch.int32)
    out = conv_bev_pool.bev_pool_runtime(
        torch.cat([feats, torch.ones(4, 5)]), torch.cat([coords, outside]), 2, 3, 10, 12
    )
    assert_close(out, inside)


def frames_for(coords_per_frame):
    return [{"feats": feats, "coords": coords} for feats, coords in coords_per_frame]


def test_static_ranks_when_coords_repeat():
    model = Splat().eval()
    _, coords = points(5, 400)
    frames = [
        {"feats": torch.randn(400, 5, generator=torch.Generator().manual_seed(s)), "coords": coords}
        for s in range(3)
    ]
    converted, report = convert(model, frames)
    [row] = report.converted
    assert row.target.startswith("BEVPool (static ranks: 400 points") and "bit-identical on 3" in row.note
    pool = converted.sparsefuse_bev_pool
    assert isinstance(pool, StaticBevPool) and int(pool.interval_lengths.sum()) == 400
    assert set(converted.state_dict()) == set(model.state_dict())  # buffers are not persistent
    for frame in frames:
        assert_close(converted(**frame), model(**frame))
    with pytest.raises(SparsefuseError, match="static geometry"):
        converted(*points(6, 399))
    graph = torch.export.export(converted, (frames[0]["feats"], coords)).graph
    assert any("sparsefuse.bev_pool" in str(n.target) for n in graph.nodes)


def test_modes():
    model = Splat().eval()
    moving = frames_for([points(s, 300) for s in range(3)])
    _, report = convert(model, moving, {"bev_pool": {"mode": "auto"}})
    assert report.converted[0].note == "coords differ between sample frames"
    with pytest.raises(SparsefuseError, match="cannot use static ranks: coords differ"):
        convert(model, moving, {"bev_pool": {"mode": "static"}})
    fixed = frames_for([points(7, 300)] * 3)
    _, report = convert(model, fixed, {"bev_pool": {"mode": "runtime"}})
    assert (
        report.converted[0].target == "BEVPool (runtime ranks)" and report.converted[0].note == "mode runtime"
    )
    with pytest.raises(SparsefuseError, match="mode"):
        convert(model, fixed, {"bev_pool": {"mode": "fast"}})


def test_failing_sample_forward_falls_back_to_runtime():
    model = Splat().eval()
    _, report = convert(model, [{"feats": torch.zeros(3, 5)}, {"feats": torch.zeros(3, 5)}])
    assert report.converted[0].target == "BEVPool (runtime ranks)" and "failed" in report.converted[0].note


def test_explicit_functions_option():
    model = Named().eval()
    _, report = convert(model)
    assert report.converted == ()  # my_pool is not named bev_pool
    sys.modules.setdefault(__name__, sys.modules[Named.__module__])
    converted, report = convert(model, options={"bev_pool": {"functions": [f"{Named.__module__}:my_pool"]}})
    assert [r.path for r in report.converted] == ["(root):my_pool"]
    feats, coords = points(8, 200, shape=(1, 2, 6, 7))
    assert_close(converted(feats, coords), model(feats, coords))
    for spec, match in [
        ("nocolon", "module:function"),
        ("no_such_module_x:f", "cannot be imported"),
        (f"{Named.__module__}:points", "positional arguments"),
    ]:
        with pytest.raises(SparsefuseError, match=match):
            convert(model, options={"bev_pool": {"functions": [spec]}})


def test_deepcopy_rebinds_to_the_copy():
    model = Outer().eval()
    runtime, _ = convert(model)
    _, coords = points(9, 300)
    frames = [{"feats": torch.randn(300, 5), "coords": coords} for _ in range(2)]
    static, _ = convert(model, frames)
    for converted in (runtime, static):
        twin = copy.deepcopy(converted)
        assert twin.inner.forward.__self__ is twin.inner
        feats = torch.randn(300, 5)
        assert_close(twin(feats, coords), model(feats, coords))
    twin = copy.deepcopy(static)
    assert twin.inner.sparsefuse_bev_pool is not static.inner.sparsefuse_bev_pool
    static.inner.sparsefuse_bev_pool.ranks_bev.zero_()  # the copy must not read the original's buffers
    feats = torch.randn(300, 5)
    assert_close(twin(feats, coords), model(feats, coords))


class BEVDetStyle(nn.Module):
    def __init__(self, bev_feat_shape=(1, 2, 5, 6, 4)) -> None:
        super().__init__()
        self.bev_feat_shape = bev_feat_shape

    def forward(self, depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths):
        return bev_pool_v2(
            depth,
            feat,
            ranks_depth,
            ranks_feat,
            ranks_bev,
            self.bev_feat_shape,
            interval_starts,
            interval_lengths,
        )


def bevdet_inputs(seed: int):
    rng = np.random.default_rng(seed)
    depth = torch.from_numpy(rng.random((1, 2, 3, 4, 5), np.float32))  # B, N, D, H, W
    feat = torch.from_numpy(rng.standard_normal((1, 2, 4, 5, 4)).astype(np.float32))  # B, N, H, W, C
    n = 90
    ranks_bev = np.sort(rng.integers(0, 2 * 5 * 6, n))
    starts = np.flatnonzero(np.r_[True, ranks_bev[1:] != ranks_bev[:-1]])
    lengths = np.diff(np.r_[starts, n])
    as_i32 = [
        torch.from_numpy(a.astype(np.int32))
        for a in (
            rng.integers(0, depth.numel(), n),
            rng.integers(0, 2 * 4 * 5, n),
            ranks_bev,
            starts,
            lengths,
        )
    ]
    return (depth, feat, *as_i32)


def test_bev_pool_v2():
    model = BEVDetStyle().eval()
    converted, report = convert(model)
    [row] = report.converted
    assert row.path == "(root):bev_pool_v2" and row.target == "BEVPool (BEVDet ranks as given)"
    for seed in range(3):
        args = bevdet_inputs(seed)
        out = converted(*args)
        assert out.shape == (1, 4, 2, 5, 6)
        assert_close(out, model(*args))
    assert uses_our_op(converted, *bevdet_inputs(0))


def export_and_run(model: nn.Module, args: tuple, names: list[str], dynamic: dict, feeds: dict) -> list:
    program = torch.onnx.export(
        model,
        args,
        dynamo=True,
        input_names=names,
        dynamic_shapes=dynamic,
        custom_translation_table=onnx_ops.custom_translation_table(),
        verbose=False,
    )
    graph = program.model_proto.graph
    assert [n.op_type for n in graph.node].count("BEVPool") == 1
    session = ort.InferenceSession(
        onnx_ops.attach_functions(program.model_proto).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def test_runtime_path_exports_and_runs_in_onnxruntime():
    model = Splat().eval()
    converted, _ = convert(model)
    n = torch.export.Dim("points", min=2, max=100_000)
    feats, coords = points(10, 700)
    got = export_and_run(
        converted,
        points(11, 300),
        ["feats", "coords"],
        {"feats": {0: n}, "coords": {0: n}},
        {"feats": feats.numpy(), "coords": coords.numpy()},
    )
    assert_close(torch.from_numpy(got[0]), model(feats, coords).detach())


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"sparsefuse_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tensors(frame: dict) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in frame.items()}


@pytest.mark.parametrize("static", [False, True])
def test_bevfusion_camera_branch(static):
    pytest.importorskip("spconv")
    example = load_example("bevfusion_lss")
    model = example.build(0, static_geometry=static)
    frames = [
        tensors({k: v for k, v in f.items() if k != "points"})
        for f in example.make_frames(3, 0, static_geometry=static)
    ]
    camera = model.camera
    converted, report = convert(camera, frames)
    [row] = report.converted
    assert row.path == "(root):bev_pool"
    assert row.target.startswith("BEVPool (static" if static else "BEVPool (runtime")
    for frame in frames + [
        tensors({k: v for k, v in f.items() if k != "points"})
        for f in example.make_frames(2, 5, static_geometry=static)
    ]:
        assert_close(converted(**frame), camera(**frame).detach())
    assert uses_our_op(converted, *frames[0].values())


def test_bevfusion_camera_static_exports_ranks_as_constants():
    pytest.importorskip("spconv")
    example = load_example("bevfusion_lss")
    camera = example.build(0, static_geometry=True).camera
    frames = [tensors({"images": f["images"]}) for f in example.make_frames(2, 0, static_geometry=True)]
    converted, _ = convert(camera, frames)
    other = example.make_frames(1, 9, static_geometry=True)[0]["images"]
    got = export_and_run(converted, (frames[0]["images"],), ["images"], None, {"images": other})
    assert_close(torch.from_numpy(got[0]), camera(torch.from_numpy(other)).detach())


def spconv_converter_ready() -> bool:
    try:
        from sparsefuse.passes.convert import spconv as sp_conv
    except ImportError:
        return False
    return bool(getattr(sp_conv.CONVERTER, "supported", ()))


@pytest.mark.parametrize("static", [False, True])
def test_bevfusion_full_model(static):
    pytest.importorskip("spconv")
    if not spconv_converter_ready():
        pytest.skip("passes/convert/spconv.py has not landed")
    example = load_example("bevfusion_lss")
    model = example.build(0, static_geometry=static)
    frames = [tensors(f) for f in example.make_frames(3, 1, static_geometry=static)]
    converted, report = convert(model, frames)
    paths = {r.path for r in report.converted}
    assert "camera:bev_pool" in paths and "lidar.voxel_generator" in paths
    for frame in frames + [tensors(f) for f in example.make_frames(1, 7, static_geometry=static)]:
        want, got = model(**frame), converted(**frame)
        assert set(got) == {"heatmap", "reg"}
        for key in want:
            assert_close(got[key], want[key].detach())


def test_bevfusion_camera_runtime_exports_with_geometry_inputs():
    """Runtime ranks in the graph: camera parameters are graph inputs, the ORT run on another frame
    (other extrinsics, so other cells) matches the original."""
    pytest.importorskip("spconv")
    example = load_example("bevfusion_lss")
    camera = example.build(0, static_geometry=False).camera
    frames = [tensors({k: v for k, v in f.items() if k != "points"}) for f in example.make_frames(3, 0)]
    converted, report = convert(camera, frames)
    assert report.converted[0].target == "BEVPool (runtime ranks)"
    names = ["images", "intrinsics", "cam_to_ego"]
    other = {k: v.numpy() for k, v in frames[2].items()}
    got = export_and_run(converted, tuple(frames[0][k] for k in names), names, None, other)
    assert_close(torch.from_numpy(got[0]), camera(**frames[2]).detach())


@pytest.mark.parametrize("static", [False, True])
def test_bevfusion_full_model_exports_and_runs_in_onnxruntime(static):
    pytest.importorskip("spconv")
    if not spconv_converter_ready():
        pytest.skip("passes/convert/spconv.py has not landed")
    example = load_example("bevfusion_lss")
    model = example.build(0, static_geometry=static)
    frames = [tensors(f) for f in example.make_frames(3, 2, static_geometry=static)]
    converted, _ = convert(model, frames)
    names = list(frames[0])
    dynamic = {
        k: ({0: torch.export.Dim("num_points", min=2, max=1_000_000)} if k == "points" else None)
        for k in names
    }
    program = torch.onnx.export(
        converted,
        tuple(frames[0][k] for k in names),
        dynamo=True,
        input_names=names,
        dynamic_shapes=dynamic,
        custom_translation_table=onnx_ops.custom_translation_table(),
        verbose=False,
    )
    model_proto = program.model_proto
    ops = [n.op_type for n in model_proto.graph.node if n.domain == "sparsefuse"]
    assert ops.count("BEVPool") == 1 and ops.count("Voxelize") == 1 and ops.count("ScatterDense") == 1
    constant_ranks = any("ranks_bev" in t.name for t in model_proto.graph.initializer)
    assert constant_ranks == static
    session = ort.InferenceSession(
        onnx_ops.attach_functions(model_proto).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    got = session.run(None, {k: v.numpy() for k, v in frames[1].items()})
    with torch.no_grad():
        want = model(**frames[1])
    for out, ref in zip(got, want.values(), strict=True):
        assert_close(torch.from_numpy(out), ref)
