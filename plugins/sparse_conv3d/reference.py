"""PyTorch reference for ``sparsefuse::sparse_conv3d``: spconv 2.x semantics (docs/design.md §4).

- Weight layout [Cout, kz, ky, kx, Cin]; kernel offsets enumerated row-major, no flip.
  The dense equivalent is ``torch.nn.functional.conv3d`` with ``weight.permute(0, 4, 1, 2, 3)``.
- Regular conv: output size = floor((in + 2p - d(k-1) - 1)/s) + 1; input x reaches output o
  through offset k when o = (x + p - k*d)/s exactly. Output sites are every such o, ordered
  by linear key over the output spatial shape.
- Submanifold conv (odd k): out[o] = sum_k W[k] in[o + (k - k//2)*d] at the input sites only;
  stride and padding are ignored; output coords equal input coords (same order).
- activation: "none" or "relu", applied after the bias.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sparsefuse.plugins.common import decode_key, linear_key, lookup_sorted

ACTIVATIONS = ("none", "relu")


def output_spatial_shape(
    spatial_shape: list[int], kernel_size: list[int], stride: list[int], padding: list[int],
    dilation: list[int], subm: bool,
) -> list[int]:
    """(Z, Y, X) of the output grid."""
    if subm:
        return [int(s) for s in spatial_shape]
    return [
        (int(n) + 2 * p - d * (k - 1) - 1) // s + 1
        for n, k, s, p, d in zip(spatial_shape, kernel_size, stride, padding, dilation, strict=True)
    ]


def kernel_offsets(kernel_size: list[int]) -> list[tuple[int, int, int]]:
    """Kernel offsets (kz, ky, kx), row-major with kx fastest: index = (kz*Ky + ky)*Kx + kx."""
    return list(itertools.product(*(range(int(k)) for k in kernel_size)))


@dataclass(frozen=True)
class KernelMap:
    """For each kernel offset k: pairs (in_index[k][j], out_index[k][j]) with out += W[k] @ in."""

    in_index: list[torch.Tensor]
    out_index: list[torch.Tensor]
    out_coords: torch.Tensor  # [M,4] int32


LOOKUPS = ("auto", "table", "sorted")
# "auto" looks sites up in a dense int32 index table of the grid (much faster on CPU than sorted-key
# searches) while the table stays <= 256 MiB; bigger grids (base preset: 41x1440x1440) search sorted keys.
TABLE_MAX_CELLS = 2**26


def _key_finder(keys: torch.Tensor, num_cells: int, lookup: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Maps query keys (int64, each in [0, num_cells)) to the row of the equal key in ``keys``
    (unique, any order), or -1 where absent; through a dense table or a sorted-key search."""
    if keys.numel() == 0:
        return lambda queries: torch.full_like(queries, -1)
    if lookup == "table":
        table = torch.full((num_cells,), -1, dtype=torch.int32, device=keys.device)
        table[keys] = torch.arange(keys.numel(), dtype=torch.int32, device=keys.device)
        return lambda queries: table[queries].to(torch.int64)
    order = torch.argsort(keys)
    sorted_keys = keys[order]

    def find(queries: torch.Tensor) -> torch.Tensor:
        pos = lookup_sorted(sorted_keys, queries)
        return torch.where(pos >= 0, order[pos.clamp(min=0)], pos)

    return find


def build_kernel_map(
    coords: torch.Tensor, spatial_shape: list[int], kernel_size: list[int], stride: list[int],
    padding: list[int], dilation: list[int], subm: bool, lookup: str = "auto",
) -> KernelMap:
    """Output sites and kernel map, pure index arithmetic on int64 coordinates.

    lookup: "table" (dense index table of the grid), "sorted" (sorted-key search) or "auto"
    (table up to TABLE_MAX_CELLS cells x batch); all give the same map, pairs in the same order.
    """
    if lookup not in LOOKUPS:
        raise ValueError(f"lookup must be one of {LOOKUPS}, got {lookup!r}")
    device = coords.device
    coords64 = coords.to(torch.int64)
    out_shape = output_spatial_shape(spatial_shape, kernel_size, stride, padding, dilation, subm)
    batches = int(coords64[:, 0].max()) + 1 if coords64.shape[0] else 1
    num_cells = batches * math.prod(out_shape)
    if lookup == "auto":
        lookup = "table" if num_cells <= TABLE_MAX_CELLS else "sorted"
    bounds = torch.tensor(out_shape, device=device)
    dil = torch.tensor(dilation, device=device)
    in_index: list[torch.Tensor] = []
    out_index: list[torch.Tensor] = []
    if subm:
        find = _key_finder(linear_key(coords64, spatial_shape), num_cells, lookup)
        half = torch.tensor([k // 2 for k in kernel_size], device=device)
        for offset in kernel_offsets(kernel_size):
            nbr = coords64.clone()
            nbr[:, 1:] += (torch.tensor(offset, device=device) - half) * dil
            rows = torch.nonzero(((nbr[:, 1:] >= 0) & (nbr[:, 1:] < bounds)).all(dim=1)).flatten()
            src = find(linear_key(nbr[rows], spatial_shape))
            hit = src >= 0
            in_index.append(src[hit])
            out_index.append(rows[hit])
        return KernelMap(in_index, out_index, coords.to(torch.int32).clone())

    pad = torch.tensor(padding, device=device)
    strd = torch.tensor(stride, device=device)
    candidates: list[tuple[torch.Tensor, torch.Tensor]] = []
    for offset in kernel_offsets(kernel_size):
        num = coords64[:, 1:] + pad - torch.tensor(offset, device=device) * dil
        out_xyz = torch.div(num, strd, rounding_mode="floor")
        ok = ((num >= 0) & (num % strd == 0) & (out_xyz < bounds)).all(dim=1)
        src = torch.nonzero(ok).flatten()
        out = torch.cat([coords64[src, :1], out_xyz[src]], dim=1)
        candidates.append((src, linear_key(out, out_shape)))
    all_keys = torch.cat([keys for _, keys in candidates]) if candidates else coords64.new_zeros(0)
    if lookup == "table":  # occupancy mask -> output sites ordered by linear key
        seen = torch.zeros(num_cells, dtype=torch.bool, device=device)
        seen[all_keys] = True
        out_keys = torch.nonzero(seen).flatten()
    else:
        out_keys = torch.unique(all_keys, sorted=True)
    find = _key_finder(out_keys, num_cells, lookup)
    for src, keys in candidates:
        in_index.append(src)
        out_index.append(find(keys))
    return KernelMap(in_index, out_index, decode_key(out_keys, out_shape))


def apply_kernel_map(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kmap: KernelMap, activation: str
) -> torch.Tensor:
    """Gather-GEMM-scatter over the kernel map. weight [Cout,kz,ky,kx,Cin]."""
    c_out, c_in = weight.shape[0], weight.shape[-1]
    w = weight.reshape(c_out, -1, c_in)
    out = features.new_zeros(kmap.out_coords.shape[0], c_out)
    for k, (src, dst) in enumerate(zip(kmap.in_index, kmap.out_index, strict=True)):
        if src.numel():
            out.index_add_(0, dst, features[src] @ w[:, k, :].t())
    if bias is not None:
        out = out + bias
    if activation == "relu":
        out = torch.relu(out)
    return out


@torch.library.custom_op("sparsefuse::sparse_conv3d", mutates_args=())
def sparse_conv3d(
    features: torch.Tensor,
    coords: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spatial_shape: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    subm: bool,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """features[N,Cin], coords[N,4] i32 (b,z,y,x), weight[Cout,kz,ky,kx,Cin], bias[Cout]?
    -> out_features[M,Cout], out_coords[M,4] i32."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    kmap = build_kernel_map(coords, spatial_shape, kernel_size, stride, padding, dilation, subm)
    return apply_kernel_map(features, weight, bias, kmap, activation), kmap.out_coords


@sparse_conv3d.register_fake
def _sparse_conv3d_fake(features, coords, weight, bias, spatial_shape, kernel_size, stride, padding,
                        dilation, subm, activation):
    if subm:
        rows = features.shape[0]
    else:
        rows = torch.library.get_ctx().new_dynamic_size()
    return features.new_empty(rows, weight.shape[0]), coords.new_empty(rows, 4)


def _sparse_conv3d_setup(ctx, inputs, output) -> None:
    features, coords, weight, bias, spatial_shape, kernel_size, stride, padding, dilation, subm, act = inputs
    ctx.save_for_backward(features, coords, weight, output[0])
    ctx.has_bias = bias is not None
    ctx.map_args = (
        list(spatial_shape), list(kernel_size), list(stride), list(padding), list(dilation), bool(subm)
    )
    ctx.relu = act == "relu"


def kernel_map_grads(
    features: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, kmap: KernelMap
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad features [N,Cin], grad weight [Cout,kz,ky,kx,Cin]) of apply_kernel_map before its bias and
    activation, given ``grad`` [M,Cout] of its output."""
    c_out, c_in = weight.shape[0], weight.shape[-1]
    w = weight.reshape(c_out, -1, c_in)
    grad_f = torch.zeros_like(features)
    grad_w = torch.zeros_like(w)
    for k, (src, dst) in enumerate(zip(kmap.in_index, kmap.out_index, strict=True)):
        if src.numel():
            gd = grad[dst]
            grad_f.index_add_(0, src, gd @ w[:, k, :])
            grad_w[:, k, :] = gd.t() @ features[src]
    return grad_f, grad_w.view_as(weight)


def _sparse_conv3d_backward(ctx, grad_out, _grad_coords):
    """Gradients of features, weight and bias over the same kernel map (rebuilt from the coords)."""
    features, coords, weight, out = ctx.saved_tensors
    g = grad_out * (out > 0).to(grad_out.dtype) if ctx.relu else grad_out
    grad_f, grad_w = kernel_map_grads(features, weight, g, build_kernel_map(coords, *ctx.map_args))
    grad_b = g.sum(0) if ctx.has_bias else None
    return grad_f, None, grad_w, grad_b, None, None, None, None, None, None, None


sparse_conv3d.register_autograd(_sparse_conv3d_backward, setup_context=_sparse_conv3d_setup)
