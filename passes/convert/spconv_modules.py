"""The modules and tensor a converted spconv 2.x model runs on (passes/convert/spconv.py builds them).

- :class:`SparseTensor`: spconv's ``SparseConvTensor`` whose ``dense()`` is ``sparsefuse::scatter_dense``
  (reshaped to spconv's [B, C, Z, Y, X]) and whose ``replace_feature`` / ``shadow_copy`` keep the type;
- :class:`SparseConv3d` / :class:`SparseInverseConv3d`: ``sparsefuse::sparse_conv3d`` /
  ``sparse_inverse_conv3d`` on such tensors, with the ``indice_key`` records an inverse conv needs;
- :class:`SparseSequential` (spconv's dispatch), :class:`BatchNorm1d`, :class:`ReLU`, :class:`Identity`,
  :class:`ToDense`, and :func:`sparse_add` (a feature add on identical indices).

They take and return spconv tensors, so the user's forward code keeps working, and torch.export
traces them (records hold plain tensors and ints).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import sparsefuse.plugins  # noqa: F401  (registers torch.ops.sparsefuse.*)
from sparsefuse.errors import SparsefuseError
from sparsefuse.plugins.sparse_conv3d import output_spatial_shape

try:  # spconv is optional: without it there is nothing of its to convert.
    from spconv.pytorch.core import SparseConvTensor as _BaseTensor
    from spconv.pytorch.modules import SparseModule as _BaseModule
    from spconv.pytorch.modules import SparseSequential as _BaseSequential
    from spconv.pytorch.modules import is_spconv_module as _is_spconv_module
except ImportError:  # pragma: no cover - exercised only without spconv
    _BaseTensor = object  # type: ignore[assignment,misc]
    _BaseModule = nn.Module  # type: ignore[assignment,misc]
    _BaseSequential = nn.Module  # type: ignore[assignment,misc]

try:
    from torch.fx.experimental.symbolic_shapes import guard_or_true
except ImportError:  # pragma: no cover - torch < 2.8: a symbolic condition counts as true

    def guard_or_true(cond: Any) -> bool:
        return cond if isinstance(cond, bool) else True


Triple = tuple[int, int, int]
_KEY_NAMESPACE = "sparsefuse"


# --------------------------------------------------------------------------------------------- tensors


@dataclass(frozen=True)
class Downsample:
    """What a strided conv with an ``indice_key`` leaves for the inverse conv of the same key:
    its input sites ``coords`` [N,4] i32 on the fine grid ``spatial_shape`` and its geometry."""

    coords: torch.Tensor
    spatial_shape: Triple
    out_spatial_shape: Triple
    kernel_size: Triple
    stride: Triple
    padding: Triple
    dilation: Triple


@dataclass(frozen=True)
class SubmKey:
    """Marks an ``indice_key`` taken by a submanifold conv (spconv refuses to reuse it for a strided one)."""

    spatial_shape: Triple


def _record_key(indice_key: str) -> tuple[str, str]:
    return (_KEY_NAMESPACE, indice_key)


class SparseTensor(_BaseTensor):  # type: ignore[misc,valid-type]
    """spconv's SparseConvTensor as returned by our converted modules: ``dense()`` is
    ``sparsefuse::scatter_dense``, and ``replace_feature`` / ``shadow_copy`` keep this class."""

    def replace_feature(self, feature: torch.Tensor) -> SparseTensor:
        return derive(self, feature)

    def shadow_copy(self) -> SparseTensor:
        return derive(self, self.features)

    def dense(self, channels_first: bool = True) -> torch.Tensor:
        return to_dense(self, channels_first)


def derive(
    src: Any, features: torch.Tensor, indices: torch.Tensor | None = None,
    spatial_shape: list[int] | tuple[int, ...] | None = None, indice_dict: dict | None = None,
) -> SparseTensor:
    """A :class:`SparseTensor` like ``src`` (any SparseConvTensor) with the given parts replaced;
    batch_size, grid, voxel_num and the benchmark / timer state carry over as in spconv."""
    out = SparseTensor(
        features, src.indices if indices is None else indices,
        src.spatial_shape if spatial_shape is None else list(spatial_shape), src.batch_size, src.grid,
        src.voxel_num, src.indice_dict if indice_dict is None else indice_dict)
    out.benchmark = src.benchmark
    out.benchmark_record = src.benchmark_record
    out.thrust_allocator = src.thrust_allocator
    out._timer = src._timer
    out.force_algo = src.force_algo
    out.int8_scale = src.int8_scale
    return out


def to_dense(x: Any, channels_first: bool = True) -> torch.Tensor:
    """spconv's ``dense()``: [B, C, Z, Y, X] (channels_first) or [B, Z, Y, X, C], through
    ``sparsefuse::scatter_dense`` (which folds height into channels: [B, C*Z, Y, X])."""
    if len(x.spatial_shape) != 3:
        return _BaseTensor.dense(x, channels_first)
    z, y, w = (int(v) for v in x.spatial_shape)
    batch = int(x.batch_size)
    channels = x.features.shape[1]
    dense = torch.ops.sparsefuse.scatter_dense(x.features, x.indices, [z, y, w], batch)
    dense = dense.view(batch, channels, z, y, w)
    # spconv returns a contiguous tensor either way (users .view() it)
    return dense if channels_first else dense.permute(0, 2, 3, 4, 1).contiguous()


# --------------------------------------------------------------------------------------------- modules


def _relu_then_add(features: torch.Tensor, add_input: Any, activation: str) -> torch.Tensor:
    """spconv's native ``add_input``: act(act(conv) + add) (the op already applied the first act)."""
    out = features + add_input.features
    return torch.relu(out) if activation == "relu" else out


def _own_parameters(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """``weight`` / ``bias`` as the module's own parameters (copies: the user's model is untouched);
    a missing bias is registered as None, as torch's convs do."""
    module.weight = nn.Parameter(weight.detach().clone())
    if bias is None:
        module.register_parameter("bias", None)
    else:
        module.bias = nn.Parameter(bias.detach().clone())


class SparseConv3d(_BaseModule):  # type: ignore[misc,valid-type]
    """``SubMConv3d`` / ``SparseConv3d`` as ``sparsefuse::sparse_conv3d``.

    weight [Cout,kz,ky,kx,Cin], bias [Cout]?. ``pointwise``: spconv's 1x1 shortcut (kernel 1, and
    for a regular conv stride 1): sites and order kept, indice_key neither read nor written.
    """

    def __init__(
        self, in_channels: int, out_channels: int, weight: torch.Tensor, bias: torch.Tensor | None,
        kernel_size: Triple, stride: Triple, padding: Triple, dilation: Triple, subm: bool, activation: str,
        indice_key: str | None, pointwise: bool, path: str,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.subm, self.activation, self.indice_key, self.pointwise = subm, activation, indice_key, pointwise
        self.path = path
        _own_parameters(self, weight, bias)

    def forward(self, input: Any, add_input: Any = None) -> SparseTensor:
        """SparseConvTensor [N,Cin] -> SparseTensor [M,Cout] (M = N and same sites for subm)."""
        in_shape = [int(v) for v in input.spatial_shape]
        if self.pointwise:  # spconv's 1x1 path: no index work, add_input ignored (as spconv does)
            features, _ = self._op(input, in_shape, True)
            out_shape = output_spatial_shape(in_shape, *self._geometry(), self.subm)
            return derive(input, features, spatial_shape=out_shape)
        indice_dict = dict(input.indice_dict)  # spconv copies it per conv; branches must not share edits
        if self.subm:
            self._check_subm_key(indice_dict, in_shape)
            features, _ = self._op(input, in_shape, True)
            # keep the input's index tensor (equal by contract) so sparse_add sees identical indices
            out = derive(input, features, input.indices, in_shape, indice_dict)
        else:
            features, coords = self._op(input, in_shape, False)
            if torch.compiler.is_exporting():
                # The site count is unbacked under export, and torch ops with an empty-input branch
                # (BatchNorm1d on the features) cannot trace on it. Declare >= 1 site: a strided conv
                # over a non-empty input loses every site only when all fall off the grid edge.
                torch._check(features.shape[0] >= 1)
            out_shape = output_spatial_shape(in_shape, *self._geometry(), False)
            if self.indice_key is not None:
                self._record_downsample(indice_dict, input.indices, in_shape, out_shape)
            out = derive(input, features, coords, out_shape, indice_dict)
        if add_input is not None:
            out = out.replace_feature(_relu_then_add(out.features, add_input, self.activation))
        return out

    def _geometry(self) -> tuple[list[int], list[int], list[int], list[int]]:
        return list(self.kernel_size), list(self.stride), list(self.padding), list(self.dilation)

    def _op(self, input: Any, in_shape: list[int], subm: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ops.sparsefuse.sparse_conv3d(
            input.features, input.indices, self.weight, self.bias, in_shape, *self._geometry(), subm,
            self.activation)

    def _check_subm_key(self, indice_dict: dict, in_shape: list[int]) -> None:
        if self.indice_key is None:
            return
        key = _record_key(self.indice_key)
        found = indice_dict.get(key)
        if isinstance(found, Downsample):
            raise SparsefuseError(
                f"{self.path}: submanifold conv reuses indice_key {self.indice_key!r} of a strided conv",
                "spconv only shares indice_key between submanifold convs; give it its own key")
        if found is None:
            indice_dict[key] = SubmKey(tuple(in_shape))  # type: ignore[arg-type]

    def _record_downsample(self, indice_dict: dict, coords: torch.Tensor, in_shape: list[int],
                           out_shape: list[int]) -> None:
        key = _record_key(self.indice_key)  # type: ignore[arg-type]
        if key in indice_dict:
            raise SparsefuseError(
                f"{self.path}: indice_key {self.indice_key!r} already exists in this sparse tensor",
                "a strided conv needs an indice_key of its own (spconv refuses this too)")
        indice_dict[key] = Downsample(coords, tuple(in_shape), tuple(out_shape), self.kernel_size,  # type: ignore[arg-type]
                                      self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        kind = "subm" if self.subm else f"stride={self.stride}, padding={self.padding}"
        return (f"{self.in_channels}, {self.out_channels}, kernel={self.kernel_size}, {kind}, "
                f"dilation={self.dilation}, act={self.activation}, indice_key={self.indice_key}")


class SparseInverseConv3d(_BaseModule):  # type: ignore[misc,valid-type]
    """``SparseInverseConv3d`` as ``sparsefuse::sparse_inverse_conv3d``: output sites are the input
    sites of the strided conv recorded under the same ``indice_key`` (same order, fine grid)."""

    def __init__(self, in_channels: int, out_channels: int, weight: torch.Tensor, bias: torch.Tensor | None,
                 kernel_size: Triple, activation: str, indice_key: str, path: str) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.activation = kernel_size, activation
        self.indice_key, self.path = indice_key, path
        _own_parameters(self, weight, bias)

    def forward(self, input: Any, add_input: Any = None) -> SparseTensor:
        """SparseConvTensor [N,Cin] on the coarse grid -> SparseTensor [M,Cout] on the fine grid."""
        rec = self._downsample(input)
        features = torch.ops.sparsefuse.sparse_inverse_conv3d(
            input.features, input.indices, rec.coords, self.weight, self.bias, list(rec.spatial_shape),
            list(rec.kernel_size), list(rec.stride), list(rec.padding), list(rec.dilation), self.activation)
        out = derive(input, features, rec.coords, rec.spatial_shape, dict(input.indice_dict))
        if add_input is not None:
            out = out.replace_feature(_relu_then_add(out.features, add_input, self.activation))
        return out

    def _downsample(self, input: Any) -> Downsample:
        """The record of the paired strided conv; SparsefuseError where spconv would fail."""
        rec = input.indice_dict.get(_record_key(self.indice_key))
        if not isinstance(rec, Downsample):
            raise SparsefuseError(
                f"{self.path}: no strided SparseConv3d with indice_key {self.indice_key!r} ran before "
                "this inverse conv",
                "pair each SparseInverseConv3d with a strided conv of the same indice_key")
        if rec.kernel_size != self.kernel_size:
            raise SparsefuseError(
                f"{self.path}: kernel {self.kernel_size} differs from its paired conv's {rec.kernel_size}",
                "an inverse conv must have the kernel size of the conv with the same indice_key")
        if tuple(int(v) for v in input.spatial_shape) != rec.out_spatial_shape:
            raise SparsefuseError(
                f"{self.path}: input grid {list(input.spatial_shape)} is not the paired conv's output grid "
                f"{list(rec.out_spatial_shape)}",
                "feed the inverse conv the tensor of its paired conv's level")
        return rec

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel={self.kernel_size}, act={self.activation}, "
                f"indice_key={self.indice_key}")


class SparseSequential(_BaseSequential):  # type: ignore[misc,valid-type]
    """spconv's SparseSequential dispatch: spconv modules (ours included) get the tensor, any other
    module the tensor's features (skipped on an empty tensor, as spconv does)."""

    def forward(self, input: Any) -> Any:
        for module in self._modules.values():
            if _is_spconv_module(module) or not isinstance(input, _BaseTensor):
                input = module(input)
            # guard_or_true: under torch.export the site count may be unbacked; assume non-empty there
            elif guard_or_true(input.indices.shape[0] != 0):
                input = input.replace_feature(module(input.features))
        return input


def _on_features(module: nn.Module, parent_forward: Callable[[Any, torch.Tensor], torch.Tensor],
                 x: Any) -> Any:
    """``parent_forward`` on a plain tensor, or on a SparseConvTensor's features (replace_feature)."""
    if isinstance(x, _BaseTensor):
        return x.replace_feature(parent_forward(module, x.features))
    return parent_forward(module, x)


class BatchNorm1d(nn.BatchNorm1d):
    """spconv's SparseBatchNorm: a BatchNorm1d over a tensor or a SparseConvTensor's features."""

    def forward(self, input: Any) -> Any:
        return _on_features(self, nn.BatchNorm1d.forward, input)


class ReLU(nn.ReLU):
    """spconv's SparseReLU: a ReLU over a tensor or a SparseConvTensor's features."""

    def forward(self, input: Any) -> Any:
        return _on_features(self, nn.ReLU.forward, input)


class Identity(nn.Identity):
    """spconv's SparseIdentity."""

    def forward(self, input: Any) -> Any:
        return _on_features(self, nn.Identity.forward, input)


class ToDense(_BaseModule):  # type: ignore[misc,valid-type]
    """spconv's ToDense: [B, C, Z, Y, X] through ``sparsefuse::scatter_dense``."""

    def forward(self, x: Any) -> torch.Tensor:
        return to_dense(x, True)


# --------------------------------------------------------------------------------------------- sparse_add


_ORIGINAL_SPARSE_ADD: list[Callable[..., Any]] = []  # spconv's own function, captured on first install


def sparse_add(*tens: Any) -> Any:
    """``spconv.pytorch.functional.sparse_add`` as installed by the converter: on our tensors with
    identical index tensors, a feature add (same sites; spconv's coalesce would also sort them);
    on plain spconv tensors (an unconverted model), spconv's own function."""
    if not any(isinstance(t, SparseTensor) for t in tens):
        return _ORIGINAL_SPARSE_ADD[0](*tens)
    first = tens[0]
    if any(t.indices is not first.indices for t in tens[1:]):
        raise SparsefuseError(
            "sparse_add of sparse tensors whose indices differ cannot be converted (the sum's sites are "
            "data dependent)",
            "add tensors that come from the same sites, e.g. a residual over submanifold convs")
    for t in tens[1:]:
        same_width = t.features.shape[1] == first.features.shape[1]
        if list(t.spatial_shape) != list(first.spatial_shape) or not same_width:
            raise SparsefuseError("sparse_add of sparse tensors with different grids or channel counts",
                                  "add tensors of one level and width")
    total = first.features
    for t in tens[1:]:
        total = total + t.features
    return first.replace_feature(total)
