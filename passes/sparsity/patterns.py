"""Weight masks: unstructured magnitude, N:M (2:4) along the reduction axis, channel permutation.

Masks are boolean tensors of the weight's shape (True = kept). Every mask is a pure function of
the weight values, so torch and ONNX application recompute identical masks from identical
weights. Ties in magnitude are broken by flat index (stable sort) for the same reason.
"""

from __future__ import annotations

import numpy as np
import torch


def unstructured_mask(weight: torch.Tensor, level: float) -> torch.Tensor:
    """Keep the n − round(level·n) largest |w| (level = fraction removed, 0..1)."""
    n = weight.numel()
    n_prune = int(round(float(level) * n))
    mask = torch.ones(n, dtype=torch.bool)
    if n_prune > 0:
        order = torch.sort(weight.detach().abs().flatten().cpu(), stable=True).indices
        mask[order[:n_prune]] = False
    return mask.view(weight.shape).to(weight.device)


def _groups_last(weight: torch.Tensor, axis: int, m: int) -> torch.Tensor:
    """View of |w| with the reduction axis last, split into [..., C/m, m]."""
    moved = weight.detach().abs().movedim(axis, -1)
    return moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)


def nm_mask(weight: torch.Tensor, axis: int, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the n largest |w| in every group of m consecutive elements along ``axis``."""
    if weight.shape[axis] % m:
        raise ValueError(f"axis {axis} of size {weight.shape[axis]} is not a multiple of {m}")
    grouped = _groups_last(weight, axis, m)
    # Stable ranking: sort descending by magnitude, ties by position within the group.
    order = torch.sort(-grouped, dim=-1, stable=True).indices
    keep = torch.zeros_like(grouped, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    moved_shape = weight.movedim(axis, -1).shape
    return keep.reshape(moved_shape).movedim(-1, axis)


def nm_satisfied(weight: torch.Tensor, axis: int, n: int = 2, m: int = 4) -> bool:
    """True when every group of m along ``axis`` holds at most n nonzeros."""
    if weight.shape[axis] % m:
        return False
    nonzero = (_groups_last(weight, axis, m) != 0).sum(dim=-1)
    return bool((nonzero <= n).all())


def retained_magnitude(weight: torch.Tensor, axis: int, n: int = 2, m: int = 4) -> float:
    """Σ|w| kept by the n:m mask."""
    grouped = _groups_last(weight, axis, m)
    return float(torch.topk(grouped, n, dim=-1).values.sum())


def search_permutation(
    weight: torch.Tensor,
    axis: int,
    trials: int = 4000,
    seed: int = 0,
    n: int = 2,
    m: int = 4,
) -> np.ndarray:
    """Permutation ``perm`` of the reduction axis (new channel j = old channel perm[j]) that raises
    the magnitude an n:m mask retains. Greedy random channel swaps between two groups, accepted when
    they increase the retained Σ|w|; returns the identity if nothing improves."""
    cols = weight.detach().abs().movedim(axis, -1).reshape(-1, weight.shape[axis]).double().cpu().numpy()
    c = cols.shape[1]
    perm = np.arange(c)
    if c < 2 * m:
        return perm
    rng = np.random.default_rng(seed)

    def group_score(members: np.ndarray) -> float:
        return float(np.sort(cols[:, members], axis=1)[:, -n:].sum())

    groups = perm.reshape(-1, m).copy()
    scores = np.array([group_score(g) for g in groups])
    for _ in range(trials):
        g1, g2 = rng.choice(groups.shape[0], size=2, replace=False)
        i, j = rng.integers(m), rng.integers(m)
        a, b = groups[g1].copy(), groups[g2].copy()
        a[i], b[j] = groups[g2][j], groups[g1][i]
        s1, s2 = group_score(a), group_score(b)
        if s1 + s2 > scores[g1] + scores[g2] + 1e-12:
            groups[g1], groups[g2] = a, b
            scores[g1], scores[g2] = s1, s2
    return groups.reshape(-1)


def filter_mask(weight: torch.Tensor, axis: int, level: float) -> torch.Tensor:
    """Boolean [num_filters] keeping the filters (slices along ``axis``) with the largest L1 norm;
    removes round(level·K) of K, never all of them."""
    k = weight.shape[axis]
    n_remove = min(int(round(float(level) * k)), k - 1)
    norms = weight.detach().abs().movedim(axis, 0).reshape(k, -1).sum(dim=1).cpu()
    keep = torch.ones(k, dtype=torch.bool)
    if n_remove > 0:
        keep[torch.sort(norms, stable=True).indices[:n_remove]] = False
    return keep


def expand_axis_mask(keep: torch.Tensor, shape: tuple[int, ...], axis: int) -> torch.Tensor:
    """Broadcast a [shape[axis]] boolean to a full mask of ``shape``."""
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return keep.view(view).expand(shape).clone()
