"""Voxelization converter: spconv PointToVoxel attributes and mmcv-style hard Voxelization modules,
converted copies against the ORIGINAL (spconv's CPU PointToVoxel is the oracle): exact voxels,
zyx coords and counts, the report rows, refusals, export to one Voxelize node run by ONNX Runtime."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

spconv_utils = pytest.importorskip("spconv.pytorch.utils")

from sparsefuse.errors import SparsefuseError  # noqa: E402
from sparsefuse.passes.convert import convert  # noqa: E402
from sparsefuse.passes.convert.voxelization import CONVERTER, HardVoxelization, PointToVoxel  # noqa: E402
from sparsefuse.plugins import onnx_ops  # noqa: E402

POINT_RANGE = [-4.0, -3.2, -1.0, 4.0, 3.2, 2.0]
VOXEL_SIZE = [0.2, 0.2, 0.5]


def cloud(seed: int, n: int, features: int = 4) -> torch.Tensor:
    """Points clustered into blobs (voxels with many points), some outside the range."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(POINT_RANGE[:3]), torch.tensor(POINT_RANGE[3:])
    centres = lo + (hi - lo) * (torch.rand(max(n // 8, 1), 3, generator=gen) * 1.2 - 0.1)
    pick = torch.randint(0, centres.shape[0], (n,), generator=gen)
    xyz = centres[pick] + 0.08 * torch.randn(n, 3, generator=gen)
    return torch.cat([xyz, torch.rand(n, features - 3, generator=gen)], dim=1)


class Encoder(nn.Module):
    """Holds the generator as a plain attribute (not a submodule), as CenterPoint-style code does."""

    def __init__(self, max_voxels: int, max_points: int) -> None:
        super().__init__()
        self.voxel_generator = spconv_utils.PointToVoxel(VOXEL_SIZE, POINT_RANGE, 4, max_voxels, max_points)
        self.linear = nn.Linear(4, 8)

    def forward(self, points: torch.Tensor):
        voxels, coords, num_points = self.voxel_generator(points)
        mean = voxels.sum(dim=1) / num_points.clamp(min=1).to(voxels.dtype)[:, None]
        return self.linear(mean), coords, num_points, voxels


class Detector(nn.Module):
    def __init__(self, max_voxels: int = 5000, max_points: int = 5) -> None:
        super().__init__()
        self.encoder = Encoder(max_voxels, max_points)

    def forward(self, points: torch.Tensor):
        return self.encoder(points)


@pytest.mark.parametrize(("max_voxels", "max_points"), [(5000, 5), (60, 3), (5000, 64)])
def test_point_to_voxel_attribute_converts_exactly(max_voxels, max_points):
    model = Detector(max_voxels, max_points).eval()
    converted, report = convert(model)
    assert isinstance(converted.encoder.voxel_generator, PointToVoxel)
    assert "voxel_generator" not in vars(converted.encoder)  # now a registered submodule
    assert isinstance(model.encoder.voxel_generator, spconv_utils.PointToVoxel)  # the original is untouched
    rows = [r for r in report.converted if r.path == "encoder.voxel_generator"]
    assert len(rows) == 1 and rows[0].source == "spconv.pytorch.utils.PointToVoxel"
    assert f"max_points_per_voxel={max_points}" in rows[0].target and 'order="arrival"' in rows[0].target
    for seed, n in [(0, 900), (1, 2500), (2, 1)]:
        points = cloud(seed, n)
        want = model(points)
        got = converted(points)
        if max_points == 3 and n > 100:
            assert int(want[2].max()) == 3 and want[1].shape[0] == 60  # both caps are hit
        for a, b in zip(got[1:], want[1:], strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)
        assert torch.equal(got[0], want[0])


def test_shared_generator_and_deepcopy():
    model = Detector().eval()
    model.second = model.encoder.voxel_generator  # same object held twice
    converted, report = convert(model)
    assert converted.second is converted.encoder.voxel_generator
    assert sorted(r.path for r in report.converted if "PointToVoxel" in r.source) == [
        "encoder.voxel_generator", "second"]
    again = copy.deepcopy(converted)
    points = cloud(3, 700)
    for a, b in zip(again(points), model(points), strict=True):
        assert torch.equal(a, b)


def test_empty_mean_and_wrong_features_are_refused():
    converted, _ = convert(Detector().eval())
    gen = converted.encoder.voxel_generator
    with pytest.raises(SparsefuseError, match="empty_mean"):
        gen(cloud(0, 50), empty_mean=True)
    with pytest.raises(SparsefuseError, match="features"):
        gen(cloud(0, 50, features=5))
    with pytest.raises(SparsefuseError, match="float32"):
        gen(cloud(0, 50).double())


class Voxelization(nn.Module):
    """Test double of mmcv's hard ``Voxelization`` (same attributes and call; its engine here is
    spconv's PointToVoxel, whose semantics are mmcv's hard voxelization)."""

    def __init__(self, voxel_size, point_cloud_range, max_num_points, max_voxels=20000) -> None:
        super().__init__()
        self.voxel_size = voxel_size
        self.point_cloud_range = point_cloud_range
        self.max_num_points = max_num_points
        self.max_voxels = max_voxels if isinstance(max_voxels, tuple) else (max_voxels, max_voxels)

    def forward(self, input):  # noqa: A002
        if self.max_num_points == -1:
            raise NotImplementedError("dynamic voxelization")
        max_voxels = self.max_voxels[0] if self.training else self.max_voxels[1]
        gen = spconv_utils.PointToVoxel(self.voxel_size, self.point_cloud_range, input.shape[1], max_voxels,
                                        self.max_num_points)
        return gen(input)


class MMDet3dStyle(nn.Module):
    def __init__(self, max_num_points: int, max_voxels) -> None:
        super().__init__()
        self.pts_voxel_layer = Voxelization(VOXEL_SIZE, POINT_RANGE, max_num_points, max_voxels)

    def forward(self, points):
        voxels, coors, num_points = self.pts_voxel_layer(points)
        return voxels, nn.functional.pad(coors, (1, 0), value=0), num_points


def test_mmcv_style_voxelization_uses_the_eval_max_voxels():
    model = MMDet3dStyle(4, (16000, 40)).eval()
    converted, report = convert(model)
    layer = converted.pts_voxel_layer
    assert isinstance(layer, HardVoxelization) and layer.max_voxels == 40 and layer.max_points == 4
    [row] = [r for r in report.converted if r.path == "pts_voxel_layer"]
    assert row.source.endswith("Voxelization") and "max_voxels=40" in row.target
    for seed, n in [(4, 3000), (5, 300)]:
        points = cloud(seed, n)
        got, want = converted(points), model(points)
        assert want[0].shape[0] == 40 or n < 1000
        for a, b in zip(got, want, strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)


def test_dynamic_voxelization_is_refused_by_path():
    with pytest.raises(SparsefuseError, match=r"pts_voxel_layer .*dynamic voxelization") as err:
        convert(MMDet3dStyle(-1, 20000).eval())
    assert "max_num_points" in err.value.hint


def test_bad_geometry_is_refused():
    model = MMDet3dStyle(4, 100).eval()
    model.pts_voxel_layer.voxel_size = [0.3, 0.2, 0.5]  # 8 / 0.3 = 26.67: rounds the same in both
    convert(model)  # fine
    model.pts_voxel_layer.max_voxels = (100, 0)
    with pytest.raises(SparsefuseError, match="max_voxels=0"):
        convert(model)
    model.pts_voxel_layer.max_voxels = (100, 100)
    with pytest.raises(SparsefuseError, match="voxel_size has 2 values"):
        model.pts_voxel_layer.voxel_size = [0.3, 0.2]
        CONVERTER.convert(copy.deepcopy(model), None)


def test_converted_point_to_voxel_exports_to_one_voxelize_node():
    model = Detector(300, 5).eval()
    converted, _ = convert(model)
    points = cloud(6, 1200)
    program = torch.onnx.export(
        converted, (points,), dynamo=True, input_names=["points"],
        dynamic_shapes=({0: torch.export.Dim("num_points", min=2, max=1_000_000)},),
        custom_translation_table=onnx_ops.custom_translation_table(), verbose=False)
    graph = program.model_proto.graph
    [node] = [n for n in graph.node if n.op_type == "Voxelize"]
    attrs = {a.name: a for a in node.attribute}
    assert attrs["reduce"].s == b"none" and attrs["order"].s == b"arrival"
    assert attrs["max_points_per_voxel"].i == 5
    session = ort.InferenceSession(onnx_ops.attach_functions(program.model_proto).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    other = cloud(7, 1733)
    got = session.run(None, {"points": other.numpy()})
    want = model(other)
    np.testing.assert_array_equal(got[1], want[1].numpy())
    np.testing.assert_array_equal(got[2], want[2].numpy())
    np.testing.assert_array_equal(got[3], want[3].numpy())
    ref = want[0].detach().numpy()
    assert np.abs(got[0] - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-5


EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "models"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"sparsefuse_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def spconv_converter_ready() -> bool:
    from sparsefuse.passes.convert import spconv as sp_conv

    return bool(getattr(sp_conv.CONVERTER, "supported", ()))


def assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    err, bound = float((out - ref).abs().max()), 1e-4 * float(ref.abs().max()) + 1e-5
    assert err <= bound, f"max|a-b| {err} > {bound}"


def test_centerpoint_voxelization_alone():
    example = load_example("centerpoint")
    model = example.build(0)
    frames = [{k: torch.from_numpy(v) for k, v in f.items()} for f in example.make_frames(3, 2)]
    converted = copy.deepcopy(model)
    rows = CONVERTER.convert(converted, None)
    assert [r.path for r in rows] == ["voxel_generator"]
    for frame in frames:
        (want_f, want_c), (got_f, got_c) = model.voxelize(**frame), converted.voxelize(**frame)
        assert torch.equal(got_c, want_c) and torch.equal(got_f, want_f)
    assert int(model.voxel_generator(frames[0]["points"])[2].max()) == example.MAX_POINTS  # slots overflow


def test_centerpoint_full_model():
    if not spconv_converter_ready():
        pytest.skip("passes/convert/spconv.py has not landed")
    example = load_example("centerpoint")
    model = example.build(0)
    frames = [{k: torch.from_numpy(v) for k, v in f.items()} for f in example.make_frames(3, 1)]
    converted, report = convert(model, frames)
    assert "voxel_generator" in {r.path for r in report.converted}
    assert not any(type(m).__module__.startswith("spconv") for m in converted.modules())
    sizes = []
    for frame in frames:
        with torch.no_grad():
            want, got = model(**frame), converted(**frame)
        assert set(got) == {"heatmap", "reg"}
        for key in want:
            assert_close(got[key], want[key])
        sizes.append(frame["points"].shape[0])
    assert len(set(sizes)) == len(sizes)  # point counts vary across frames


def test_centerpoint_exports_and_runs_in_onnxruntime():
    """The whole converted detector through ONNX (Voxelize, SparseConv3d, ScatterDense) on ORT,
    against the ORIGINAL model on a frame with another point count."""
    if not spconv_converter_ready():
        pytest.skip("passes/convert/spconv.py has not landed")
    example = load_example("centerpoint")
    model = example.build(0)
    frames = [{k: torch.from_numpy(v) for k, v in f.items()} for f in example.make_frames(2, 3)]
    converted, _ = convert(model, frames)
    program = torch.onnx.export(
        converted, (frames[0]["points"],), dynamo=True, input_names=["points"],
        dynamic_shapes=({0: torch.export.Dim("num_points", min=2, max=1_000_000)},),
        custom_translation_table=onnx_ops.custom_translation_table(), verbose=False)
    ops = [n.op_type for n in program.model_proto.graph.node if n.domain == "sparsefuse"]
    assert ops[0] == "Voxelize" and ops[-1] == "ScatterDense" and ops.count("SparseConv3d") == 7
    session = ort.InferenceSession(onnx_ops.attach_functions(program.model_proto).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {"points": frames[1]["points"].numpy()})
    with torch.no_grad():
        want = model(**frames[1])
    assert frames[1]["points"].shape != frames[0]["points"].shape
    for out, ref in zip(got, want.values(), strict=True):
        assert_close(torch.from_numpy(out), ref)
