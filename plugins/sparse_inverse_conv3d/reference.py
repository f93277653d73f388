"""PyTorch reference for ``sparsefuse::sparse_inverse_conv3d``: spconv 2.x ``SparseInverseConv3d``
with an ``indice_key`` (verified against spconv 2.3.8 on CPU: tests/plugins/test_sparse_inverse_conv3d.py).

The op undoes the site reduction of a paired strided ``sparse_conv3d`` (same kernel_size, stride,
padding, dilation) whose input grid is ``spatial_shape`` (the FINE grid) and input sites are
``out_coords``: the output sites are exactly ``out_coords``, in the same order (so the op returns
no coords). Inputs live at the coarse sites ``coords`` on the conv's output grid
(``output_spatial_shape(spatial_shape, ...)``).

- For fine site x (row of out_coords) and kernel offset k (row-major, kx fastest, no flip, the
  weight index of SparseConv3d), the coarse site o = (x + p - k*d) / s when exactly divisible and
  inside the coarse grid; out[x] += W[k] @ in[o] when o is one of ``coords``.
- Then the bias, then the activation ("none" | "relu").
- Dense equivalent: ``conv_transpose3d(dense(in), weight.permute(4, 0, 1, 2, 3), stride, padding,
  dilation=d)`` (output padded to the fine grid) read at ``out_coords``.
"""

from __future__ import annotations

import math

import torch

from sparsefuse.errors import SparsefuseError
from sparsefuse.plugins.common import linear_key
from sparsefuse.plugins.sparse_conv3d.reference import (
    ACTIVATIONS,
    LOOKUPS,
    TABLE_MAX_CELLS,
    KernelMap,
    _key_finder,
    apply_kernel_map,
    kernel_map_grads,
    kernel_offsets,
    output_spatial_shape,
)


def coarse_shape(
    spatial_shape: list[int], kernel_size: list[int], stride: list[int], padding: list[int],
    dilation: list[int],
) -> list[int]:
    """(Z, Y, X) of the coarse grid (the paired strided conv's output grid); SparsefuseError if empty
    or if a geometry argument is not 3 positive (padding: non-negative) integers."""
    for name, values, low in (("spatial_shape", spatial_shape, 1), ("kernel_size", kernel_size, 1),
                              ("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if len(values) != 3 or any(int(v) < low for v in values):
            raise SparsefuseError(
                f"sparse_inverse_conv3d: {name} must be 3 integers >= {low}, got {list(values)}",
                hint="pass the geometry of the paired strided SparseConv3d (its input spatial shape)",
            )
    shape = output_spatial_shape(spatial_shape, kernel_size, stride, padding, dilation, False)
    if min(shape) < 1:
        raise SparsefuseError(
            f"sparse_inverse_conv3d: the paired conv's output grid {shape} is empty",
            hint="spatial_shape is the FINE grid (the paired strided conv's input spatial shape)",
        )
    return shape


def _check_sites(coords: torch.Tensor, shape: list[int], what: str) -> None:
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise SparsefuseError(f"sparse_inverse_conv3d: {what} must be [rows, 4] (b, z, y, x), got "
                              f"{list(coords.shape)}", hint="int32 coordinates, one row per site")
    if coords.shape[0] == 0:
        return
    low = bool((coords >= 0).all())
    high = bool((coords[:, 1:] < torch.tensor(shape, device=coords.device)).all())
    if not (low and high):
        raise SparsefuseError(
            f"sparse_inverse_conv3d: {what} lie outside the grid {shape}",
            hint="coords are the paired strided conv's output sites, out_coords its input sites",
        )


def build_inverse_kernel_map(
    coords: torch.Tensor, out_coords: torch.Tensor, spatial_shape: list[int], kernel_size: list[int],
    stride: list[int], padding: list[int], dilation: list[int], lookup: str = "auto",
) -> KernelMap:
    """Kernel map from the fine sites: pairs (coarse row in coords, fine row in out_coords) per offset,
    fine rows ascending. lookup as in sparse_conv3d.build_kernel_map (same map either way)."""
    if lookup not in LOOKUPS:
        raise ValueError(f"lookup must be one of {LOOKUPS}, got {lookup!r}")
    shape = coarse_shape(spatial_shape, kernel_size, stride, padding, dilation)
    _check_sites(coords, shape, "coords")
    _check_sites(out_coords, [int(v) for v in spatial_shape], "out_coords")
    device = out_coords.device
    coarse64, fine64 = coords.to(torch.int64), out_coords.to(torch.int64)
    batches = int(torch.cat([coarse64[:, 0], fine64[:, 0], coarse64.new_zeros(1)]).max()) + 1
    num_cells = batches * math.prod(shape)
    if lookup == "auto":
        lookup = "table" if num_cells <= TABLE_MAX_CELLS else "sorted"
    find = _key_finder(linear_key(coarse64, shape), num_cells, lookup)
    bounds, pad = torch.tensor(shape, device=device), torch.tensor(padding, device=device)
    strd, dil = torch.tensor(stride, device=device), torch.tensor(dilation, device=device)
    in_index: list[torch.Tensor] = []
    out_index: list[torch.Tensor] = []
    for offset in kernel_offsets(kernel_size):
        num = fine64[:, 1:] + pad - torch.tensor(offset, device=device) * dil
        site = torch.div(num, strd, rounding_mode="floor")
        rows = torch.nonzero(((num >= 0) & (num % strd == 0) & (site < bounds)).all(dim=1)).flatten()
        src = find(linear_key(torch.cat([fine64[rows, :1], site[rows]], dim=1), shape))
        hit = src >= 0
        in_index.append(src[hit])
        out_index.append(rows[hit])
    return KernelMap(in_index, out_index, out_coords.to(torch.int32))


@torch.library.custom_op("sparsefuse::sparse_inverse_conv3d", mutates_args=())
def sparse_inverse_conv3d(
    features: torch.Tensor,
    coords: torch.Tensor,
    out_coords: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spatial_shape: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    activation: str,
) -> torch.Tensor:
    """features[N,Cin] at coords[N,4] i32 (coarse), out_coords[M,4] i32 (fine), weight[Cout,kz,ky,kx,Cin],
    bias[Cout]? -> features[M,Cout] at out_coords."""
    if activation not in ACTIVATIONS:
        raise SparsefuseError(f"sparse_inverse_conv3d: activation {activation!r} is not supported",
                              hint=f"use one of {ACTIVATIONS}")
    kmap = build_inverse_kernel_map(coords, out_coords, spatial_shape, kernel_size, stride, padding, dilation)
    return apply_kernel_map(features, weight, bias, kmap, activation)


@sparse_inverse_conv3d.register_fake
def _sparse_inverse_conv3d_fake(features, coords, out_coords, weight, bias, spatial_shape, kernel_size,
                                stride, padding, dilation, activation):
    return features.new_empty(out_coords.shape[0], weight.shape[0])  # M: static, out_coords' rows


def _setup(ctx, inputs, output) -> None:
    features, coords, out_coords, weight, bias = inputs[:5]
    ctx.save_for_backward(features, coords, out_coords, weight, output)
    ctx.has_bias = bias is not None
    ctx.map_args = tuple(list(v) for v in inputs[5:10])  # spatial_shape .. dilation
    ctx.relu = inputs[10] == "relu"


def _backward(ctx, grad_out):
    """Gradients of features, weight and bias over the same kernel map (rebuilt from the coords)."""
    features, coords, out_coords, weight, out = ctx.saved_tensors
    g = grad_out * (out > 0).to(grad_out.dtype) if ctx.relu else grad_out
    kmap = build_inverse_kernel_map(coords, out_coords, *ctx.map_args)
    grad_f, grad_w = kernel_map_grads(features, weight, g, kmap)
    grad_b = g.sum(0) if ctx.has_bias else None
    return grad_f, None, None, grad_w, grad_b, None, None, None, None, None, None


sparse_inverse_conv3d.register_autograd(_backward, setup_context=_setup)
