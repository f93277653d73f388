"""PyTorch reference for ``sparsefuse::sparse_conv3d``: spconv 2.x semantics (DESIGN.md §4).

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


def build_kernel_map(
    coords: torch.Tensor, spatial_shape: list[int], kernel_size: list[int], stride: list[int],
    padding: list[int], dilation: list[int], subm: bool,
) -> KernelMap:
    """Output sites and kernel map, pure index arithmetic on int64 coordinates."""
    coords64 = coords.to(torch.int64)
    in_keys = linear_key(coords64, spatial_shape)
    order = torch.argsort(in_keys)
    sorted_in = in_keys[order]
    out_shape = output_spatial_shape(spatial_shape, kernel_size, stride, padding, dilation, subm)
    bounds = torch.tensor(out_shape, device=coords.device)
    dil = torch.tensor(dilation, device=coords.device)
    in_index: list[torch.Tensor] = []
    out_index: list[torch.Tensor] = []
    if subm:
        out_coords = coords.to(torch.int32).clone()
        half = torch.tensor([k // 2 for k in kernel_size], device=coords.device)
        for offset in kernel_offsets(kernel_size):
            shift = (torch.tensor(offset, device=coords.device) - half) * dil
            nbr = coords64.clone()
            nbr[:, 1:] += shift
            ok = ((nbr[:, 1:] >= 0) & (nbr[:, 1:] < bounds)).all(dim=1)
            pos = lookup_sorted(sorted_in, linear_key(nbr, spatial_shape))
            hit = ok & (pos >= 0)
            in_index.append(order[pos[hit]])
            out_index.append(torch.nonzero(hit).flatten())
        return KernelMap(in_index, out_index, out_coords)

    pad = torch.tensor(padding, device=coords.device)
    strd = torch.tensor(stride, device=coords.device)
    candidates: list[tuple[torch.Tensor, torch.Tensor]] = []
    for offset in kernel_offsets(kernel_size):
        num = coords64[:, 1:] + pad - torch.tensor(offset, device=coords.device) * dil
        out_xyz = torch.div(num, strd, rounding_mode="floor")
        ok = ((num >= 0) & (num % strd == 0) & (out_xyz < bounds)).all(dim=1)
        src = torch.nonzero(ok).flatten()
        out = torch.cat([coords64[src, :1], out_xyz[src]], dim=1)
        candidates.append((src, linear_key(out, out_shape)))
    all_keys = torch.cat([keys for _, keys in candidates]) if candidates else coords64.new_zeros(0)
    out_keys = torch.unique(all_keys, sorted=True)
    for src, keys in candidates:
        in_index.append(src)
        out_index.append(lookup_sorted(out_keys, keys))
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
