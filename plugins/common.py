"""What every custom op shares: the ONNX domain, and small index helpers.

plugins/ imports nothing else of ours (docs/design.md §2), so this module stays dependency-free
apart from torch.
"""

from __future__ import annotations

import torch

DOMAIN = "sparsefuse"
OPSET_VERSION = 1


def linear_key(coords: torch.Tensor, spatial_shape: tuple[int, int, int] | list[int]) -> torch.Tensor:
    """Linear key of (b, z, y, x) coordinates: ((b*Z + z)*Y + y)*X + x, as int64.

    coords: [N,4] integer tensor; spatial_shape: (Z, Y, X). Returns [N] int64.
    """
    z_size, y_size, x_size = (int(s) for s in spatial_shape)
    c = coords.to(torch.int64)
    return ((c[:, 0] * z_size + c[:, 1]) * y_size + c[:, 2]) * x_size + c[:, 3]


def decode_key(key: torch.Tensor, spatial_shape: tuple[int, int, int] | list[int]) -> torch.Tensor:
    """Inverse of :func:`linear_key`: [N] int64 -> [N,4] int32 (b, z, y, x)."""
    z_size, y_size, x_size = (int(s) for s in spatial_shape)
    x = key % x_size
    rest = key // x_size
    y = rest % y_size
    rest = rest // y_size
    z = rest % z_size
    b = rest // z_size
    return torch.stack([b, z, y, x], dim=1).to(torch.int32)


def lookup_sorted(sorted_keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Index of each query in ``sorted_keys`` (ascending, unique), or -1 where absent."""
    if sorted_keys.numel() == 0:
        return torch.full_like(queries, -1)
    pos = torch.searchsorted(sorted_keys, queries).clamp_(max=sorted_keys.numel() - 1)
    return torch.where(sorted_keys[pos] == queries, pos, torch.full_like(pos, -1))
