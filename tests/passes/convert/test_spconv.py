"""spconv 2.x converter: converted copies against the ORIGINAL spconv modules (the oracle).

Sparse outputs are compared per coordinate; fp32 tolerance max|a-b| <= 1e-4 * max|ref| + 1e-5.
spconv's CPU kernels refuse a bias in eval mode, so where a conv has a bias the oracle runs its
sparse convs in train mode (which only moves the bias add after the kernel; BN stays in eval).
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

spconv = pytest.importorskip("spconv")

import spconv.pytorch as sp  # noqa: E402
from spconv.pytorch import functional as Fsp  # noqa: E402

from sparsefuse.errors import SparsefuseError  # noqa: E402
from sparsefuse.passes.convert import convert  # noqa: E402
from sparsefuse.passes.convert.spconv import CONVERTER  # noqa: E402
from sparsefuse.passes.convert.spconv_modules import Downsample, SparseTensor  # noqa: E402
from sparsefuse.plugins.common import linear_key  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "models"
MODELS = ("second_encoder", "voxel_resnet", "sparse_unet")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"sparsefuse_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(frame: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(v) for v in frame.values())


def _assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item() if ref.numel() else 0.0
    bound = 1e-4 * (ref.abs().max().item() if ref.numel() else 0.0) + 1e-5
    assert err <= bound, f"max|a-b| {err} > {bound}"


def _assert_same_sites(out, ref) -> None:
    """Two SparseConvTensors: same grid, same site set, features equal per coordinate."""
    assert list(out.spatial_shape) == list(ref.spatial_shape)
    keys = []
    for t in (out, ref):
        key = linear_key(t.indices.long(), t.spatial_shape)
        order = torch.argsort(key)
        keys.append((key[order], t.features[order]))
    assert torch.equal(keys[0][0], keys[1][0]), "site sets differ"
    _assert_close(keys[0][1], keys[1][1])


def _oracle(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with its sparse convs in train mode (spconv CPU: bias only in train)."""
    model.eval()
    for m in model.modules():
        if isinstance(m, sp.conv.SparseConvolution):
            m.train()
    return model


def _voxels(n: int = 300, shape=(9, 16, 16), channels: int = 3, seed: int = 0):
    """n unique voxels of batch 0 (unsorted) and their features."""
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randperm(int(np.prod(shape)), generator=gen)[:n]
    z, rest = cells // (shape[1] * shape[2]), cells % (shape[1] * shape[2])
    coords = torch.stack([torch.zeros_like(z), z, rest // shape[2], rest % shape[2]], 1).int()
    return torch.randn(n, channels, generator=gen), coords


def _bn(channels: int, seed: int = 1) -> nn.BatchNorm1d:
    gen = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm1d(channels, eps=1e-3)
    with torch.no_grad():
        bn.weight.copy_(0.5 + torch.rand(channels, generator=gen))
        bn.bias.copy_(torch.randn(channels, generator=gen))
        bn.running_mean.copy_(torch.randn(channels, generator=gen))
        bn.running_var.copy_(0.3 + torch.rand(channels, generator=gen) * 2)
    return bn.eval()


class _Wrap(nn.Module):
    """forward(features, coords) -> self.net(SparseConvTensor) on a fixed grid."""

    def __init__(self, net: nn.Module, shape=(9, 16, 16)) -> None:
        super().__init__()
        self.net, self.shape = net, list(shape)

    def forward(self, features: torch.Tensor, coords: torch.Tensor):
        return self.net(sp.SparseConvTensor(features, coords, self.shape, 1))


# ---------------------------------------------------------------------------------- reference models


@pytest.fixture(scope="module", params=MODELS)
def reference(request):
    module = _load(request.param)
    model = module.build(0)
    converted, report = convert(model)
    return request.param, model, converted, report, module.make_frames(2, seed=3)


def test_reference_model_matches_spconv(reference) -> None:
    name, model, converted, _, frames = reference
    assert frames[0]["voxel_coords"].shape[0] != frames[1]["voxel_coords"].shape[0]
    with torch.no_grad():
        for frame in frames:
            ref, out = model(*_args(frame)), converted(*_args(frame))
            # the UNet returns per-voxel features in input order: row i is voxel i in both
            _assert_close(out, ref)
            assert ref.abs().max() > 0.1


def test_reference_model_exports_with_dynamic_voxels(reference) -> None:
    name, model, converted, _, frames = reference
    voxels = torch.export.Dim("voxels", min=2, max=200_000)
    ep = torch.export.export(converted, _args(frames[0]),
                             dynamic_shapes={"voxel_features": {0: voxels}, "voxel_coords": {0: voxels}})
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "sparsefuse.sparse_conv3d.default" in targets
    expected = "sparsefuse.sparse_inverse_conv3d.default" if name == "sparse_unet" else \
        "sparsefuse.scatter_dense.default"
    assert expected in targets
    assert not any("spconv" in t for t in targets)
    with torch.no_grad():  # another voxel count through the same program
        _assert_close(ep.module()(*_args(frames[1])), model(*_args(frames[1])))


def test_reference_model_report_and_parameter_names(reference) -> None:
    name, model, converted, report, _ = reference
    original = set(model.state_dict())
    names = set(converted.state_dict())
    # folded convs keep the user's parameter names (the conv's own path); nothing new appears
    assert names - original == {p for p in names - original if p.endswith(".bias")}
    rows = {r.path: r for r in report.converted}
    if name == "second_encoder":
        row = rows["encoder_layers.3.0.0"]
        assert row.target == "SparseConv3d(stride=[2, 2, 2], relu)"
        assert "BatchNorm1d folded" in row.note and "ReLU fused" in row.note
        assert rows["encoder_layers.3.0.1"].target == "folded into encoder_layers.3.0.0"
        assert {"encoder_layers.3.0.0.weight", "encoder_layers.3.0.0.bias"} <= names
        assert not any(k.startswith("encoder_layers.3.0.1") for k in names)
        assert dict(report.kept) == {}
    if name == "voxel_resnet":  # BN/ReLU called by the block's own forward stay plain torch
        assert rows["conv2.1.conv1"].target == "SparseConv3d(subm)"
        assert report.kept["BatchNorm1d"] == 16
    if name == "sparse_unet":
        assert rows["inv_conv3.0"].target == "SparseInverseConv3d(inverse, relu)"
        assert rows["head"].target == "SparseConv3d(1x1)"
    assert "| path | was | now | note |" in report.table()


def test_reference_model_runs_in_onnxruntime_after_export(reference) -> None:
    """The converted copy through the export pass (ONNX, parameter names kept) and onnxruntime
    (the ops' function bodies), against spconv on a frame of another voxel count."""
    ort = pytest.importorskip("onnxruntime")
    from sparsefuse.passes.export import export_model, read_param_map
    from sparsefuse.plugins import onnx_ops
    from sparsefuse.spec import InputSpec, ModelSpec, OutputSpec

    name, model, converted, _, frames = reference
    spec = ModelSpec(inputs=(InputSpec("voxel_features", "float32", 2, ((0, "num_voxels"),)),
                             InputSpec("voxel_coords", "int32", 2, ((0, "num_voxels"),))),
                     outputs=(OutputSpec("out"),))
    proto = export_model(converted, {k: torch.from_numpy(v) for k, v in frames[0].items()}, spec=spec)
    param_map = read_param_map(proto)
    assert set(param_map) == {k for k, _ in converted.named_parameters()}
    # the user's names; a folded conv that had no bias gains one at its own path
    assert all(k.endswith(".bias") for k in set(param_map) - set(model.state_dict()))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_ops.attach_functions(proto).SerializeToString(), options)
    (out,) = session.run(None, dict(frames[1]))
    with torch.no_grad():
        _assert_close(torch.from_numpy(out), model(*_args(frames[1])))


def test_callers_model_is_untouched() -> None:
    module = _load("second_encoder")
    model = module.build(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [(n, type(m)) for n, m in model.named_modules()]
    args = _args(module.make_frames(1, seed=5)[0])
    with torch.no_grad():
        ref = model(*args)
        model.conv_out.train()
        converted, _ = convert(model)
        assert model.conv_out.training and not converted.conv_out.training  # modes stay the caller's
        model.conv_out.eval()
        after = model(*args)
    assert [(n, type(m)) for n, m in model.named_modules()] == types
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert torch.equal(ref, after)


# ---------------------------------------------------------------------------------- single modules


@pytest.mark.parametrize("subm,bias,relu", [(True, True, True), (True, False, False), (False, True, False),
                                            (False, False, True)])
def test_bn_folding_single_conv(subm: bool, bias: bool, relu: bool) -> None:
    conv = sp.SubMConv3d(3, 6, 3, padding=1, bias=bias) if subm else \
        sp.SparseConv3d(3, 6, 3, stride=2, padding=1, bias=bias)
    with torch.no_grad():
        if bias:
            conv.bias.normal_()
    layers = [conv, _bn(6)] + ([nn.ReLU(inplace=True)] if relu else [])
    model = _oracle(_Wrap(sp.SparseSequential(*layers)))
    converted, report = convert(model)
    args = _voxels()
    with torch.no_grad():
        _assert_same_sites(converted(*args), model(*args))
    assert set(converted.state_dict()) == {"net.0.weight", "net.0.bias"}
    bn = model.net[1]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(converted.net[0].weight, conv.weight * scale.view(-1, 1, 1, 1, 1))
    row = next(r for r in report.converted if r.path == "net.0")
    assert "BatchNorm1d folded" in row.note and (("ReLU fused" in row.note) == relu)
    assert row.target.endswith(", relu)") == relu


def test_bn_without_conv_and_other_feature_modules_act_on_features() -> None:
    seq = sp.SparseSequential(_bn(3, seed=2), nn.ReLU(), sp.SubMConv3d(3, 4, 3, padding=1, bias=False),
                              nn.Dropout(0.5), nn.LeakyReLU(0.1), sp.SparseBatchNorm(4), sp.SparseReLU(),
                              sp.SparseIdentity())
    seq[5].load_state_dict(_bn(4, seed=3).state_dict())
    model = _Wrap(seq).eval()
    converted, report = convert(model)
    args = _voxels()
    with torch.no_grad():
        _assert_same_sites(converted(*args), model(*args))
    assert report.kept["LeakyReLU"] == 1 and report.kept["Dropout"] == 1
    # BN after Dropout/LeakyReLU is not the conv's neighbour: kept (as ours), same parameter names
    assert set(converted.state_dict()) >= {"net.0.weight", "net.5.weight", "net.5.running_var"}


@pytest.mark.parametrize("conv", [
    lambda: sp.SubMConv3d(3, 4, (3, 1, 5), bias=False),
    lambda: sp.SubMConv3d(3, 4, 3, dilation=2, bias=False),
    lambda: sp.SparseConv3d(3, 4, 3, stride=(1, 2, 2), padding=(0, 1, 2), dilation=(1, 2, 1), bias=False),
    lambda: sp.SparseConv3d(3, 4, 2, stride=2, bias=False),
    lambda: sp.SparseConv3d(3, 4, 1, stride=2, bias=False),
])
def test_conv_geometries_match_spconv(conv) -> None:
    model = _Wrap(conv()).eval()
    converted, _ = convert(model)
    args = _voxels()
    with torch.no_grad():
        _assert_same_sites(converted(*args), model(*args))


def test_even_submanifold_kernel_is_refused() -> None:
    with pytest.raises(SparsefuseError, match="net: submanifold conv with an even kernel"):
        convert(_Wrap(sp.SubMConv3d(3, 4, 2, bias=False)))


@pytest.mark.parametrize("conv_type", [sp.SubMConv3d, sp.SparseConv3d])
def test_pointwise_conv_matches_spconvs_weight_view(conv_type) -> None:
    model = _oracle(_Wrap(conv_type(3, 5, 1, bias=True)))
    converted, report = convert(model)
    args = _voxels()
    with torch.no_grad():
        out, ref = converted(*args), model(*args)
    assert torch.equal(out.indices, ref.indices)  # 1x1: sites and order kept
    _assert_close(out.features, ref.features)
    assert report.converted[0].target == "SparseConv3d(1x1)"


def test_indice_key_sites_equal_spconvs() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = sp.SparseConv3d(3, 8, 3, stride=2, padding=1, bias=False, indice_key="down")
            self.mid = sp.SubMConv3d(8, 8, 3, padding=1, bias=False, indice_key="mid")
            self.mid2 = sp.SubMConv3d(8, 8, 3, padding=1, bias=False, indice_key="mid")
            self.up = sp.SparseInverseConv3d(8, 4, 3, indice_key="down", bias=False)

        def forward(self, features, coords):
            x = sp.SparseConvTensor(features, coords, [9, 16, 16], 1)
            low = self.mid2(self.mid(self.down(x)))
            return low, self.up(low)

    model = Net().eval()
    converted, _ = convert(model)
    args = _voxels()
    with torch.no_grad():
        (low, up), (ref_low, ref_up) = converted(*args), model(*args)
    _assert_same_sites(low, ref_low)
    assert torch.equal(up.indices, ref_up.indices) and torch.equal(up.indices, args[1])
    _assert_close(up.features, ref_up.features)
    record = low.indice_dict[("sparsefuse", "down")]
    assert isinstance(record, Downsample) and record.spatial_shape == (9, 16, 16)


def test_inverse_conv_without_its_key_is_a_user_error() -> None:
    model = _Wrap(sp.SparseSequential(sp.SubMConv3d(3, 4, 3, bias=False), sp.SparseInverseConv3d(
        4, 4, 3, indice_key="missing", bias=False))).eval()
    converted, _ = convert(model)
    with pytest.raises(SparsefuseError, match="net.1: no strided SparseConv3d with indice_key 'missing'"):
        converted(*_voxels())


def test_conv_add_input_matches_spconv() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = sp.SubMConv3d(3, 3, 3, padding=1, bias=False)
            self.b = sp.SubMConv3d(3, 3, 3, padding=1, bias=False)

        def forward(self, features, coords):
            x = sp.SparseConvTensor(features, coords, [9, 16, 16], 1)
            return self.b(self.a(x), x)

    model = Net().eval()
    converted, _ = convert(model)
    args = _voxels()
    with torch.no_grad():
        _assert_same_sites(converted(*args), model(*args))


def test_sync_batchnorm_folds_like_batchnorm() -> None:
    bn = sp.modules.SparseSyncBatchNorm(4, eps=1e-3)
    bn.load_state_dict(_bn(4).state_dict())
    model = _Wrap(sp.SparseSequential(sp.SubMConv3d(3, 4, 3, padding=1, bias=False), bn)).eval()
    converted, report = convert(model)
    oracle = _Wrap(sp.SparseSequential(copy.deepcopy(model.net[0]), _bn(4))).eval()
    args = _voxels()
    with torch.no_grad():
        _assert_same_sites(converted(*args), oracle(*args))
    assert "SparseSyncBatchNorm folded" in report.converted[1].note


def test_dense_override_and_todense() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = sp.SparseConv3d(3, 4, 3, stride=2, padding=1, bias=False)
            self.to_dense = sp.ToDense()

        def forward(self, features, coords):
            y = self.conv(sp.SparseConvTensor(features, coords, [9, 16, 16], 1))
            y = y.replace_feature(torch.relu(y.features))
            return y.dense(), y.dense(channels_first=False), self.to_dense(y)

    model = Net().eval()
    converted, report = convert(model)
    args = _voxels()
    x = sp.SparseConvTensor(*args, [9, 16, 16], 1)
    y = converted.conv(x)
    assert isinstance(y, SparseTensor) and isinstance(y.replace_feature(y.features), SparseTensor)
    assert isinstance(y + y, SparseTensor)
    with torch.no_grad():
        for out, ref in zip(converted(*args), model(*args), strict=True):
            assert out.is_contiguous()
            _assert_close(out, ref)
    ep = torch.export.export(converted, args, dynamic_shapes=({0: torch.export.Dim("n", min=2)},) * 2)
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("sparsefuse.scatter_dense.default") == 3
    assert "ScatterDense" in {r.target for r in report.converted}


def test_sparse_add_with_identical_indices() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = sp.SubMConv3d(3, 3, 3, padding=1, bias=False, indice_key="r")
            self.conv2 = sp.SubMConv3d(3, 3, 3, padding=1, bias=False, indice_key="r")

        def forward(self, features, coords):
            x = sp.SparseConvTensor(features, coords, [9, 16, 16], 1)
            y = self.conv1(x)
            return Fsp.sparse_add(self.conv2(y), y)

    model = Net().eval()
    args = _voxels()
    with torch.no_grad():
        ref = model(*args)
        converted, report = convert(model)
        _assert_same_sites(converted(*args), ref)
        _assert_same_sites(model(*args), ref)  # the caller's model still runs spconv's own sparse_add
    assert any(r.path == ":sparse_add" for r in report.converted)


def test_sparse_add_with_different_indices_is_refused() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = sp.SparseConv3d(3, 3, 3, stride=2, padding=1, bias=False)
            self.b = sp.SparseConv3d(3, 3, 2, stride=2, bias=False)

        def forward(self, features, coords):
            x = sp.SparseConvTensor(features, coords, [9, 16, 16], 1)
            return Fsp.sparse_add(self.a(x), self.b(x))

    converted, _ = convert(Net().eval())
    with pytest.raises(SparsefuseError, match="sparse_add of sparse tensors whose indices differ"):
        converted(*_voxels())


@pytest.mark.parametrize("module,type_name", [
    (sp.SparseMaxPool3d(3, 2, 1), "spconv.pytorch.pool.SparseMaxPool3d"),
    (sp.SparseConvTranspose3d(4, 4, 3, 2, bias=False), "spconv.pytorch.conv.SparseConvTranspose3d"),
])
def test_unsupported_module_is_refused_by_path(module: nn.Module, type_name: str) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Module()
            self.encoder.layers = sp.SparseSequential(sp.SubMConv3d(3, 4, 3, bias=False), module)

    with pytest.raises(SparsefuseError) as info:
        convert(Net())
    assert f"module encoder.layers.1 of type {type_name} cannot be converted" in info.value.message
    assert "spconv.SubMConv3d" in info.value.hint and "spconv.SparseInverseConv3d" in info.value.hint


def test_fused_activation_other_than_relu_is_refused() -> None:
    from cumm import tensorview as tv

    conv = sp.SubMConv3d(3, 4, 3, bias=False)
    conv.act_type = tv.gemm.Activation.Sigmoid  # the subclasses do not take act_type; the base class does
    model = _Wrap(sp.SparseSequential(conv))
    with pytest.raises(SparsefuseError, match="net.0: fused activation Sigmoid"):
        convert(model)


def test_converter_lists_what_it_supports() -> None:
    assert CONVERTER.library == "spconv"
    assert {"SubMConv3d", "SparseConv3d", "SparseInverseConv3d", "SparseSequential", "ToDense"} <= set(
        CONVERTER.supported)
    assert copy.deepcopy(CONVERTER) == CONVERTER
