"""Per-layer Hessians H = (2/N)·XᵀX of the layer-wise objective ‖X·ΔWᵀ‖², from calibration inputs.

X holds one row per output position the layer computes, in the layer's reduction order (the order of
``weight.reshape(Cout, -1)``), so that the layer's output is X·W_flatᵀ:
- linear [O, I]: the input rows (every leading dimension is a position);
- conv2d [K, C, R, S] (groups = 1): the im2col rows of ``unfold`` (order (c, r, s));
- sparse conv [Cout, kz, ky, kx, Cin] (``sparsefuse::sparse_conv3d`` / ``sparse_inverse_conv3d``): for every
  output site, the gathered input feature of each kernel offset from the kernel map (zero where the
  offset has no input site), order (kz, ky, kx, Cin) like the weight.

H is averaged over the N rows of all calibration frames (the 1/N does not change OBS decisions, it keeps
the dampening scale independent of the number of frames). Accumulated in float64. Calls are seen by a
``TorchFunctionMode``, the way discovery traces them, so functional calls and custom ops are covered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from sparsefuse.passes.sparsity.discover import _SPARSE_ARGS, PrunableLayer

OBS_KINDS = ("conv2d", "linear", "sparseconv3d")


def obs_supported(layer: PrunableLayer) -> bool:
    """Layers the OBS operator reconstructs; others (grouped, 1-D/3-D dense, transposed) keep magnitude."""
    return layer.kind in OBS_KINDS and layer.groups == 1


@dataclass
class LayerHessian:
    """Σ 2·xxᵀ over ``rows`` input rows; ``matrix()`` is the average [D, D] (float64)."""

    total: torch.Tensor
    rows: int = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(x.shape[0], -1).to(torch.float64)
        self.total.addmm_(x.t(), x, alpha=2.0)
        self.rows += int(x.shape[0])

    def matrix(self) -> torch.Tensor:
        return self.total / max(self.rows, 1)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv2d_rows(
    x: torch.Tensor, weight_shape: Sequence[int], stride: Any, padding: Any, dilation: Any
) -> torch.Tensor:
    """im2col rows [B·L, C·R·S] of a conv2d input [B, C, H, W] (or [C, H, W])."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    cols = F.unfold(
        x, tuple(weight_shape[2:]), dilation=_pair(dilation), padding=_pair(padding), stride=_pair(stride)
    )
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def sparse_rows(features: torch.Tensor, kmap: Any, kernel_volume: int) -> torch.Tensor:
    """[M, K·Cin]: row o = the input feature reaching output site o through each kernel offset k."""
    c_in = features.shape[1]
    rows = features.new_zeros(kmap.out_coords.shape[0], kernel_volume, c_in, dtype=torch.float64)
    for k, (src, dst) in enumerate(zip(kmap.in_index, kmap.out_index, strict=True)):
        if src.numel():
            rows[dst.long(), k] += features[src.long()].to(torch.float64)
    return rows.reshape(rows.shape[0], -1)


def _sparse_kmap(op: str, bound: dict) -> Any:
    from sparsefuse.plugins.sparse_conv3d import build_kernel_map
    from sparsefuse.plugins.sparse_inverse_conv3d import build_inverse_kernel_map

    geometry = [list(bound[n]) for n in ("spatial_shape", "kernel_size", "stride", "padding", "dilation")]
    if op == "sparse_inverse_conv3d":
        return build_inverse_kernel_map(bound["coords"], bound["out_coords"], *geometry)
    return build_kernel_map(bound["coords"], *geometry, bool(bound["subm"]))


def _dense_arg(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def input_rows(op: str, args: tuple, kwargs: dict, weight: torch.Tensor) -> torch.Tensor | None:
    """The rows X of one call (see the module docstring), or None when the call is not supported."""
    if op == "linear":
        x = args[0] if args else kwargs["input"]
        return x.reshape(-1, x.shape[-1])
    if op == "conv2d":
        stride, padding, dilation, groups = (
            _dense_arg(args, kwargs, i, n, d)
            for i, n, d in ((3, "stride", 1), (4, "padding", 0), (5, "dilation", 1), (6, "groups", 1))
        )
        if isinstance(padding, str) or int(groups) != 1:
            return None  # 'same'/'valid' string padding or grouped conv: not reconstructed
        return conv2d_rows(args[0] if args else kwargs["input"], weight.shape, stride, padding, dilation)
    if op in _SPARSE_ARGS:
        bound = dict(zip(_SPARSE_ARGS[op], args, strict=False)) | kwargs
        kernel_volume = int(torch.tensor(list(bound["kernel_size"])).prod())
        return sparse_rows(bound["features"], _sparse_kmap(op, bound), kernel_volume)
    return None


class _HessianMode(TorchFunctionMode):
    def __init__(self, targets: dict[int, str], hessians: dict[str, LayerHessian]) -> None:
        super().__init__()
        self.targets, self.hessians = targets, hessians

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        op = str(getattr(func, "__name__", func))
        if op in ("linear", "conv2d", *_SPARSE_ARGS):
            weight = _weight_of(op, args, kwargs)
            name = self.targets.get(id(weight)) if isinstance(weight, torch.Tensor) else None
            if name is not None:
                with torch.no_grad():
                    rows = input_rows(op, args, kwargs, weight)
                if rows is not None:
                    self.hessians[name].add(rows)
        return out


def _weight_of(op: str, args: tuple, kwargs: dict) -> Any:
    if op in _SPARSE_ARGS:
        index = _SPARSE_ARGS[op].index("weight")
        return args[index] if len(args) > index else kwargs.get("weight")
    return args[1] if len(args) > 1 else kwargs.get("weight")


def _depth(layer: PrunableLayer) -> int:
    """D: the reduction length (weight elements per output channel)."""
    return layer.params // layer.shape[0]


def collect_hessians(
    model: torch.nn.Module,
    frames: Iterable[Any],
    forward: Callable[[torch.nn.Module, Any], Any],
    layers: Sequence[PrunableLayer],
) -> dict[str, torch.Tensor]:
    """Name -> averaged Hessian [D, D] (float64, D = params / Cout) of every OBS-supported layer that
    ran on the frames; one dense forward per frame, all layers at once (the inputs are seen once)."""
    params = dict(model.named_parameters())
    targets = {id(params[la.name]): la.name for la in layers if obs_supported(la) and la.name in params}
    hessians = {
        la.name: LayerHessian(torch.zeros(_depth(la), _depth(la), dtype=torch.float64))
        for la in layers
        if la.name in params and id(params[la.name]) in targets
    }
    with torch.no_grad(), _HessianMode(targets, hessians):
        for frame in frames:
            forward(model, frame)
    return {name: h.matrix() for name, h in hessians.items() if h.rows > 0}
