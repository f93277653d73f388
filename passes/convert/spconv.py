"""spconv 2.x -> sparsefuse ops, in the copy of the model that :func:`convert` hands us (the
converted modules themselves live in spconv_modules.py).

What is converted (everything else from spconv is refused by ``base.refuse_leftovers``):

- ``SubMConv3d`` / ``SparseConv3d`` -> :class:`SparseConv3d` (``sparsefuse::sparse_conv3d``);
  ``SparseInverseConv3d`` -> :class:`SparseInverseConv3d` (``sparsefuse::sparse_inverse_conv3d``).
  They take and return spconv ``SparseConvTensor`` s (our subclass :class:`SparseTensor`), so the
  user's forward code keeps working.
- ``SparseSequential`` -> :class:`SparseSequential` with spconv's dispatch (spconv modules get the
  tensor, anything else its features); conv -> BatchNorm1d -> ReLU runs are folded into the conv
  (new ``weight`` / ``bias`` at the conv's own path) with the ReLU fused as ``activation="relu"``.
- ``SparseBatchNorm`` / ``SparseSyncBatchNorm`` / ``SparseReLU`` / ``SparseIdentity`` -> plain
  torch subclasses of ours that accept a tensor or a SparseConvTensor (same parameter names).
- ``ToDense`` and ``SparseConvTensor.dense()`` on our tensors -> ``sparsefuse::scatter_dense``.
- ``spconv.pytorch.functional.sparse_add`` on our tensors with identical index tensors -> a feature add
  (the converter points spconv's function at ours, which falls back to spconv's on plain tensors).

spconv quirks kept for identical numerics: a 1x1 conv (kernel 1; a regular one also stride 1)
multiplies by ``weight.view(Cin, Cout)`` and keeps sites and order (its weight is re-laid out at
conversion); ``add_input`` gives act(act(conv) + add). Refused with SparsefuseError: fused
activations other than ReLU, groups != 1, even submanifold kernels, non-KRSC weights.

``indice_key`` bookkeeping lives in the tensor's ``indice_dict`` under keys ``("sparsefuse", key)``
(spconv's own keys are strings, so they never collide); a record holds plain tensors and ints, so
torch.export traces through it.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.convert.base import ConversionRow, ConvertContext, qualified_type
from sparsefuse.passes.convert.spconv_modules import (
    _ORIGINAL_SPARSE_ADD,
    BatchNorm1d,
    Identity,
    ReLU,
    SparseConv3d,
    SparseInverseConv3d,
    SparseSequential,
    ToDense,
    Triple,
    sparse_add,
)

try:  # spconv is optional: without it there is nothing of its to convert.
    import spconv.pytorch as _sp
    from spconv.constants import ALL_WEIGHT_IS_KRSC as _ALL_WEIGHT_IS_KRSC
    from spconv.pytorch import functional as _spf
except ImportError:  # pragma: no cover - exercised only without spconv
    _sp = None


def _install_sparse_add(model: nn.Module) -> list[ConversionRow]:
    """Point spconv's ``functional.sparse_add`` (and names bound to it in the model's code) to
    :func:`sparse_add`, which falls back to spconv's for plain tensors; one row per call site."""
    if not _ORIGINAL_SPARSE_ADD:
        _ORIGINAL_SPARSE_ADD.append(_spf.sparse_add)
    original = _ORIGINAL_SPARSE_ADD[0]
    _spf.sparse_add = sparse_add
    rows: list[ConversionRow] = []
    for path, module in model.named_modules():
        forward = getattr(type(module), "forward", None)
        if not inspect.isfunction(forward):
            continue
        names = forward.__globals__
        for name, value in list(names.items()):
            if value is original:  # `from spconv.pytorch.functional import sparse_add`
                names[name] = sparse_add
        if "sparse_add" in forward.__code__.co_names:
            rows.append(ConversionRow(f"{path}:sparse_add", "spconv.pytorch.functional.sparse_add",
                                      "feature add", "indices must be the same tensor"))
    return rows


# --------------------------------------------------------------------------------------------- conversion


_ACTIVATIONS = {"None_": "none", "ReLU": "relu"}


def _triple(values: Any) -> Triple:
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _conv_types() -> dict[type, str]:
    return {_sp.SubMConv3d: "subm", _sp.SparseConv3d: "regular", _sp.SparseInverseConv3d: "inverse"}


def _activation(module: Any, path: str) -> str:
    name = str(module.act_type).rsplit(".", 1)[-1]
    if name not in _ACTIVATIONS:
        raise SparsefuseError(f"{path}: fused activation {name} of {qualified_type(module)} is not supported",
                              "use act_type None_ or ReLU, or an nn module after the conv")
    return _ACTIVATIONS[name]


def _weight(module: Any, path: str) -> torch.Tensor:
    """The weight as [Cout,kz,ky,kx,Cin]; spconv 2.x stores KRSC for every algo (ALL_WEIGHT_IS_KRSC)."""
    expected = [module.out_channels, *module.kernel_size, module.in_channels]
    if not _ALL_WEIGHT_IS_KRSC or list(module.weight.shape) != expected:
        raise SparsefuseError(
            f"{path}: weight of shape {list(module.weight.shape)} is not spconv 2.x's [Cout,kz,ky,kx,Cin] "
            f"{expected}", "use spconv >= 2.2 (KRSC weights)")
    return module.weight.detach()


def _pointwise_weight(weight: torch.Tensor) -> torch.Tensor:
    """spconv's 1x1 path multiplies by ``weight.view(Cin, Cout)`` (a reinterpretation of the KRSC
    buffer, not a transpose); the [Cout,1,1,1,Cin] weight that gives the same product."""
    c_out, c_in = weight.shape[0], weight.shape[-1]
    return weight.reshape(c_in, c_out).t().reshape(c_out, 1, 1, 1, c_in).contiguous()


def _make_conv(module: Any, path: str) -> SparseConv3d | SparseInverseConv3d:
    kind = _conv_types()[type(module)]
    if module.groups != 1:
        raise SparsefuseError(f"{path}: grouped sparse convs are not supported", "use groups=1")
    weight, bias = _weight(module, path), None if module.bias is None else module.bias.detach()
    activation = _activation(module, path)
    kernel = _triple(module.kernel_size)
    pointwise = math.prod(kernel) == 1 and (module.subm or math.prod(module.stride) == 1)
    if module.subm and any(k % 2 == 0 for k in kernel):
        raise SparsefuseError(f"{path}: submanifold conv with an even kernel {list(kernel)}",
                              "submanifold convs need odd kernel sizes (spconv refuses even ones too)")
    if kind == "inverse" and not pointwise:
        if module.indice_key is None:
            raise SparsefuseError(f"{path}: SparseInverseConv3d without indice_key", "give it its conv's key")
        importlib.import_module("sparsefuse.plugins.sparse_inverse_conv3d")  # registers its torch op
        return SparseInverseConv3d(module.in_channels, module.out_channels, weight, bias, kernel, activation,
                                   module.indice_key, path)
    if pointwise:
        weight = _pointwise_weight(weight)
    return SparseConv3d(module.in_channels, module.out_channels, weight, bias, kernel, _triple(module.stride),
                        _triple(module.padding), _triple(module.dilation), kind == "subm" or pointwise,
                        activation, module.indice_key, pointwise, path)


def _target(conv: SparseConv3d | SparseInverseConv3d) -> str:
    if isinstance(conv, SparseInverseConv3d):
        kind = "inverse"
        name = "SparseInverseConv3d"
    else:
        kind = "1x1" if conv.pointwise else ("subm" if conv.subm else f"stride={list(conv.stride)}")
        name = "SparseConv3d"
    return f"{name}({kind}{', relu' if conv.activation == 'relu' else ''})"


def _foldable_bn(module: nn.Module) -> bool:
    """Eval-mode BatchNorm1d with running stats (spconv's SparseBatchNorm included)."""
    return isinstance(module, nn.BatchNorm1d | nn.SyncBatchNorm) and module.running_mean is not None


def _is_relu(module: nn.Module) -> bool:
    return isinstance(module, nn.ReLU)


def _fold_bn(conv: SparseConv3d | SparseInverseConv3d, bn: nn.BatchNorm1d) -> None:
    """conv -> bn as one conv: W' = W * s, b' = (b - mean) * s + beta, s = gamma / sqrt(var + eps)."""
    with torch.no_grad():
        var, mean = bn.running_var.double(), bn.running_mean.double()
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
        scale = gamma / torch.sqrt(var + bn.eps)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
        weight = conv.weight.double() * scale.view(-1, 1, 1, 1, 1)
        dtype = conv.weight.dtype
        conv.weight = nn.Parameter(weight.to(dtype))
        conv.bias = nn.Parameter(((bias - mean) * scale + beta).to(dtype))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Walker:
    """Rewrites a module tree in place, collecting rows."""

    def __init__(self) -> None:
        self.rows: list[ConversionRow] = []

    def children(self, parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent._modules.items()):
            if child is not None:
                parent._modules[name] = self.module(child, _join(prefix, name))

    def module(self, module: nn.Module, path: str) -> nn.Module:
        """The replacement of ``module`` (itself, its children rewritten, when nothing applies)."""
        kind = type(module)
        if kind is _sp.SparseSequential:
            return self.sequential(module, path)
        if kind in _conv_types():
            conv = _make_conv(module, path)
            note = self._conv_note(conv)
            self.rows.append(ConversionRow(path, qualified_type(module), _target(conv), note))
            return conv
        if kind is _sp.ToDense:
            self.rows.append(ConversionRow(path, qualified_type(module), "ScatterDense", "[B,C,Z,Y,X] view"))
            return ToDense()
        plain = self.plain(module, path)
        if plain is not None:
            return plain
        self.children(module, path)
        return module

    def plain(self, module: nn.Module, path: str) -> nn.Module | None:
        """spconv's BatchNorm / ReLU / Identity wrappers -> ours (same parameters and buffers)."""
        new: nn.Module
        if type(module) in (_sp.SparseBatchNorm, _sp.modules.SparseSyncBatchNorm):
            new = BatchNorm1d(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
            new.load_state_dict(module.state_dict())
        elif type(module) is _sp.SparseReLU:
            new = ReLU(module.inplace)
        elif type(module) is _sp.SparseIdentity:
            new = Identity()
        else:
            return None
        new.train(module.training)
        self.rows.append(ConversionRow(path, qualified_type(module), qualified_type(new).rsplit(".", 1)[-1],
                                       "acts on features"))
        return new

    def sequential(self, seq: nn.Module, path: str) -> SparseSequential:
        """SparseSequential -> ours; conv [-> BatchNorm1d] [-> ReLU] runs fold into the conv."""
        items = [(name, m) for name, m in seq._modules.items() if m is not None]
        self.rows.append(ConversionRow(path, qualified_type(seq), "SparseSequential (sparsefuse)",
                                       "spconv dispatch kept"))
        out: OrderedDict[str, nn.Module] = OrderedDict()
        i = 0
        while i < len(items):
            name, child = items[i]
            child_path = _join(path, name)
            if type(child) not in _conv_types():
                out[name] = self.module(child, child_path)
                i += 1
                continue
            conv = _make_conv(child, child_path)
            notes, folded = [], []
            i += 1
            if conv.activation == "none" and i < len(items) and _foldable_bn(items[i][1]) \
                    and not items[i][1].training:
                _fold_bn(conv, items[i][1])  # type: ignore[arg-type]
                notes.append(f"{type(items[i][1]).__name__} folded")
                folded.append((items[i], f"folded into {child_path}"))
                i += 1
            if conv.activation == "none" and i < len(items) and _is_relu(items[i][1]):
                conv.activation = "relu"
                notes.append("ReLU fused")
                folded.append((items[i], f"fused into {child_path}"))
                i += 1
            self.rows.append(ConversionRow(child_path, qualified_type(child), _target(conv),
                                           ", ".join(n for n in [*notes, self._conv_note(conv)] if n)))
            for (fname, fmod), target in folded:
                self.rows.append(ConversionRow(_join(path, fname), qualified_type(fmod), target))
            out[name] = conv
        new = SparseSequential(out)
        new.train(seq.training)
        return new

    @staticmethod
    def _conv_note(conv: nn.Module) -> str:
        if isinstance(conv, SparseConv3d) and conv.pointwise:
            return "1x1: weight re-laid out as spconv's [Cin,Cout] view"
        key = getattr(conv, "indice_key", None)
        return f"indice_key={key}" if key else ""


@dataclass(frozen=True)
class _Converter:
    library: str = "spconv"
    supported: tuple[str, ...] = (
        "SubMConv3d", "SparseConv3d", "SparseInverseConv3d", "SparseSequential", "SparseBatchNorm",
        "SparseSyncBatchNorm", "SparseReLU", "SparseIdentity", "ToDense", "SparseConvTensor.dense",
        "functional.sparse_add",
    )

    def convert(self, model: torch.nn.Module, ctx: ConvertContext) -> list[ConversionRow]:
        """Rewrites ``model`` in place (it is the pass's copy); the root itself stays as it is."""
        if _sp is None:
            return []
        walker = _Walker()
        walker.children(model, "")
        if any(isinstance(m, SparseConv3d | SparseInverseConv3d) for m in model.modules()):
            walker.rows += _install_sparse_add(model)
        return walker.rows


CONVERTER = _Converter()
