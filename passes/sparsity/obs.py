"""Second-order layer-wise pruning (OBS / SparseGPT): choose the mask by saliency and update the survivors.

Objective per layer: minimize ‖X·(W' − W)ᵀ‖² over W' with the pattern's zeros, H = (2/N)·XᵀX (hessian.py).
Each output row is independent given H. For one weight q of a row w (OBS):

    saliency  s_q = w_q² / [H⁻¹]_qq        (the error increase of removing q and refitting)
    update    δw  = −w_q / [H⁻¹]_qq · H⁻¹[:, q]

The layer operator is SparseGPT's: columns are processed left to right in blocks of ``block``; the upper
Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU) gives, at column q, the inverse Hessian of the columns not yet
processed, so U_qq² = [H_F⁻¹]_qq and U[q, q:] / U_qq = H_F⁻¹[q, F] / [H_F⁻¹]_qq. Removing q therefore
applies the exact OBS update to the columns after q; the columns before q are frozen (for q the first
column this is the full OBS update above). Updates to later blocks are applied lazily, once per block
(one GEMM). All in float64.

Channel decisions (``channel``) are made where the removed channels are read: on the consumer. The
producer's filters are zeroed (with their per-channel tensors, so the consumer reads 0 there); which
ones is the greedy group-OBS order of the consumer's input channels (``input_order``, with the
consumer's Hessian, i.e. after any BatchNorm / activation on the way), and ``remove_inputs`` refits
the consumer's other inputs (exact multi-weight OBS, the same columns in every row).

Weights are handled in a canonical [Cout, D] layout with the reduction ("in") axis last, so that 2:4
groups (4 consecutive input channels at a fixed kernel position, as ``nm_mask`` does) are 4
consecutive columns.

Dampening rule (``dampen``): H_d = H + λ·I with λ = percdamp · mean(diag H) over the live inputs
(H_qq > 0), λ = percdamp when no input is live. A dead input (H_qq = 0 on the calibration data; H is PSD,
so its whole row and column are 0) becomes a decoupled coordinate with H_d,qq = λ: the objective is the
ridge Δw·H_d·Δwᵀ = (2/N)‖XΔwᵀ‖² + λ‖Δw‖², a dead weight costs λ·w_q² to remove and receives no
update. If the Cholesky factorization still fails (rounding on a nearly singular H), λ is multiplied by
10, at most 6 times.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sparsefuse.errors import SparsefuseError

DEFAULT_PERCDAMP = 0.01
DEFAULT_BLOCK = 128
DEFAULT_SELECT = 16


def dampen(h: torch.Tensor, percdamp: float = DEFAULT_PERCDAMP) -> tuple[torch.Tensor, float]:
    """(H + λI, λ) with λ = percdamp · mean of the positive diagonal entries (1 if there are none)."""
    h = h.to(torch.float64)
    diag = torch.diagonal(h)
    live = diag > 0
    scale = float(diag[live].mean()) if bool(live.any()) else 1.0
    lam = float(percdamp) * scale
    return h + lam * torch.eye(h.shape[0], dtype=torch.float64), lam


def inverse_cholesky(h: torch.Tensor, percdamp: float = DEFAULT_PERCDAMP) -> tuple[torch.Tensor, float]:
    """(U, λ): U upper triangular with UᵀU = (H + λI)⁻¹, λ from :func:`dampen` (×10 per failed try)."""
    damp = percdamp
    for _ in range(7):
        hd, lam = dampen(h, damp)
        low, info = torch.linalg.cholesky_ex(hd)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(low)
            up, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info) == 0:
                return up, lam
        damp *= 10.0
    raise SparsefuseError(
        "OBS: the layer Hessian is not positive definite even after dampening",
        "raise obs_percdamp (e.g. 0.1) or use operator=magnitude",
    )


def obs_remove(w: torch.Tensor, hinv: torch.Tensor, q: int) -> tuple[torch.Tensor, float]:
    """Full OBS step on one row: (w + δw with w'_q = 0, saliency w_q²/[H⁻¹]_qq). w [D], hinv [D, D]."""
    d = hinv[q, q]
    new = w - w[q] / d * hinv[:, q]
    new[q] = 0.0
    return new, float(w[q] ** 2 / d)


def reconstruction_error(w_old: torch.Tensor, w_new: torch.Tensor, h: torch.Tensor) -> float:
    """Σ_rows (w' − w) H (w' − w)ᵀ for [R, D] rows and H [D, D] (= 2/N · ‖XΔWᵀ‖²)."""
    delta = (w_new - w_old).to(torch.float64)
    return float(((delta @ h.to(torch.float64)) * delta).sum())


def _block_counts(total: int, columns: int, start: int, stop: int) -> int:
    """Removals assigned to columns [start, stop): proportional, cumulative rounding, Σ = ``total``."""
    return round(total * stop / columns) - round(total * start / columns)


def _smallest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the ``count`` smallest entries (ties by flat index: stable sort)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    if count > 0:
        mask[torch.sort(scores.flatten(), stable=True).indices[:count]] = True
    return mask.view(scores.shape)


def _nm_group(w: torch.Tensor, a: torch.Tensor, remove: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint OBS over one group of m columns, all still unfrozen: per row, remove the ``remove`` weights
    P whose exact multi-weight OBS error w_Pᵀ([H_F⁻¹]_PP)⁻¹w_P is smallest, where [H_F⁻¹]_GG = AᵀA
    (A = the group's diagonal block of U). Returns (E [R, m], removed [R, m]) such that the update of
    the unfrozen columns F is −E·U[G, F] (it refits the kept weights of the group too).
    w [R, m], a [m, m] upper triangular."""
    rows, m = w.shape
    hinv = a.T @ a
    combos = list(itertools.combinations(range(m), remove))
    errors, coefs = [], []
    for p in combos:  # C(4, 2) = 6 masks, each a 2x2 solve shared by all rows
        inv = torch.linalg.inv(hinv[list(p)][:, list(p)])
        c = w[:, list(p)] @ inv  # [R, |P|]
        coefs.append(c)
        errors.append((c * w[:, list(p)]).sum(dim=1))
    best = torch.stack(errors, dim=1).argmin(dim=1)  # first minimum: ties by combination order
    e = torch.zeros_like(w)
    removed = torch.zeros(rows, m, dtype=torch.bool)
    for k, p in enumerate(combos):
        sel = best == k
        if bool(sel.any()):
            e[sel] = coefs[k][sel] @ a[:, list(p)].T
            removed[sel.nonzero()[:, :1], torch.tensor(p)] = True
    return e, removed


def _block_groups(
    w1: torch.Tensor, u1: torch.Tensor, m1: torch.Tensor, err: torch.Tensor, remove: int, m: int
) -> None:
    """One block, group by group (joint n:m OBS, :func:`_nm_group`); updates w1, m1, err in place."""
    for i in range(0, w1.shape[1], m):
        e, m1[:, i : i + m] = _nm_group(w1[:, i : i + m], u1[i : i + m, i : i + m], remove)
        w1[:, i:] -= e @ u1[i : i + m, i:]
        w1[:, i : i + m][m1[:, i : i + m]] = 0.0  # exact zeros, not rounding residue
        err[:, i : i + m] = e


def _block_columns(
    w1: torch.Tensor,
    u1: torch.Tensor,
    m1: torch.Tensor,
    err: torch.Tensor,
    counts: Callable[[int, int], int] | None,
    select: int,
) -> None:
    """One block, column by column (sequential OBS); with ``counts`` the mask of every ``select``
    columns is chosen adaptively (``counts(a, b)`` removals in block columns [a, b)), else m1 is given.
    Updates w1, m1, err in place."""
    d = torch.diagonal(u1)
    for i in range(w1.shape[1]):
        if counts is not None and i % select == 0:
            j = min(i + select, w1.shape[1])
            m1[:, i:j] = _smallest(w1[:, i:j] ** 2 / d[i:j] ** 2, counts(i, j))
        col = w1[:, i]
        e = torch.where(m1[:, i], col, torch.zeros_like(col)) / d[i]
        # Exact OBS update of the unprocessed columns of this block (the pruned weight goes to 0).
        w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
        w1[:, i] = torch.where(m1[:, i], torch.zeros_like(col), w1[:, i])
        err[:, i] = e


def sparsegpt(
    w: torch.Tensor,
    up: torch.Tensor,
    pattern: str,
    level: float = 0.0,
    block: int = DEFAULT_BLOCK,
    mask: torch.Tensor | None = None,
    nm: tuple[int, int] = (2, 4),
    select: int = DEFAULT_SELECT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune rows w [R, D] (canonical layout) given U (from :func:`inverse_cholesky`) -> (w', removed mask).

    ``pattern``: "unstructured" removes round(level·R·D) weights (the per-layer level), in proportion to
    the columns of every ``select`` columns, chosen by w²/U_qq² over those columns of all rows from the
    weights as updated so far (SparseGPT's adaptive mask; 16 columns measured better than SparseGPT's 128
    on correlated inputs, tests/passes/sparsity/test_obs.py); "2:4" removes m − n of every m consecutive
    columns by joint OBS over the group (:func:`_nm_group`: the best of the C(m, m−n) masks, the group's
    kept weights refit too; exact over all masks when the row is one group); "mask" removes exactly
    ``mask`` (True = removed)."""
    w = w.to(torch.float64).clone()
    rows, cols = w.shape
    n, m = nm  # keep n of every m
    if pattern == "2:4" and (cols % m or block % m):
        raise ValueError(f"2:4 needs D % {m} == 0 and block % {m} == 0, got D={cols}, block={block}")
    removed = torch.zeros(rows, cols, dtype=torch.bool)
    total = round(float(level) * rows * cols)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, u1 = w[:, i1:i2].clone(), up[i1:i2, i1:i2]
        err = torch.zeros_like(w1)
        if pattern == "mask":
            assert mask is not None
            m1 = mask[:, i1:i2].clone()
        else:
            m1 = torch.zeros_like(w1, dtype=torch.bool)
        if pattern == "2:4":
            _block_groups(w1, u1, m1, err, m - n, m)
        else:
            def counts(a: int, b: int, o: int = i1) -> int:
                return _block_counts(total, cols, o + a, o + b)

            _block_columns(w1, u1, m1, err, None if pattern == "mask" else counts, select)
        w[:, i1:i2] = w1
        removed[:, i1:i2] = m1
        w[:, i2:] -= err @ up[i1:i2, i2:]  # lazy batch update of the later blocks
    return w, removed


def to_canonical(weight: torch.Tensor, in_axis: int) -> torch.Tensor:
    """[Cout, ...] -> [Cout, D] with ``in_axis`` last (out axis 0 for every OBS kind)."""
    return weight.movedim(in_axis, -1).reshape(weight.shape[0], -1)


def from_canonical(rows: torch.Tensor, shape: tuple[int, ...], in_axis: int) -> torch.Tensor:
    """Inverse of :func:`to_canonical`."""
    moved = list(shape)
    moved.append(moved.pop(in_axis))
    return rows.reshape(moved).movedim(-1, in_axis)


def canonical_order(shape: tuple[int, ...], in_axis: int) -> torch.Tensor:
    """perm [D]: canonical column j is column perm[j] of ``weight.reshape(Cout, -1)`` (Hessian order)."""
    idx = torch.arange(int(torch.tensor(shape[1:]).prod())).reshape(shape[1:])
    return idx.movedim(in_axis - 1, -1).reshape(-1)


@dataclass
class ObsLayer:
    """One layer's Hessian in canonical order and its cached inverse Cholesky factor."""

    shape: tuple[int, ...]
    in_axis: int
    hessian: torch.Tensor  # [D, D] canonical order, undampened
    up: torch.Tensor  # [D, D] U with UᵀU = (H + λI)⁻¹
    lam: float
    _hinv: torch.Tensor | None = None

    @staticmethod
    def build(shape: tuple[int, ...], in_axis: int, hessian: torch.Tensor, percdamp: float) -> ObsLayer:
        perm = canonical_order(shape, in_axis)
        h = hessian.to(torch.float64)[perm][:, perm]
        up, lam = inverse_cholesky(h, percdamp)
        return ObsLayer(tuple(shape), in_axis, h, up, lam)

    def prune(
        self, weight: torch.Tensor, pattern: str, level: float, block: int = DEFAULT_BLOCK
    ) -> torch.Tensor:
        """Reconstructed weight (unstructured / 2:4) of the original shape and dtype with the pattern's
        zeros. Channel decisions are made on the consumer (:meth:`input_order`)."""
        rows = to_canonical(weight.detach().cpu(), self.in_axis).to(torch.float64)
        new, _ = sparsegpt(rows, self.up, pattern, level, block)
        return from_canonical(new, self.shape, self.in_axis).to(weight.dtype)

    def remove_inputs(self, weight: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
        """Zero every weight that reads a removed input channel (``removed`` [Cin] bool) and refit the
        rest: exact multi-weight OBS with the same columns P in every row,
        δW = −W_P · ([H_d⁻¹]_PP)⁻¹ · [H_d⁻¹]_{P,:} (the consumer side of a channel decision)."""
        rows = to_canonical(weight.detach().cpu(), self.in_axis).to(torch.float64)
        cols = removed.to(torch.bool).cpu().repeat(rows.shape[1] // removed.numel())  # channel = j % Cin
        if not bool(cols.any()):
            return weight.detach().clone()
        hinv = self.inverse()
        coef = torch.linalg.solve(hinv[cols][:, cols], rows[:, cols].T)  # [|P|, R]
        new = rows - coef.T @ hinv[cols]
        new[:, cols] = 0.0
        return from_canonical(new, self.shape, self.in_axis).to(weight.dtype)

    def inverse(self) -> torch.Tensor:
        """(H + λI)⁻¹ = UᵀU [D, D], computed on first use and cached."""
        if self._hinv is None:
            self._hinv = self.up.T @ self.up
        return self._hinv

    def input_order(self, weight: torch.Tensor, first: torch.Tensor) -> list[int]:
        """Greedy order in which to remove this layer's input channels (all but one): at each step the
        channel c whose removal with refit costs least, Σ_rows w_P·([H_d⁻¹]_PP)⁻¹·w_Pᵀ over its columns P,
        then the OBS update of the weights and the downdate of H⁻¹ (OBC's greedy, for groups).
        Channels in ``first`` [Cin] bool come first, in index order (a producer filter that is already
        all zero: removing it must leave the same zero rows that ``filter_mask`` finds)."""
        rows = to_canonical(weight.detach().cpu(), self.in_axis).to(torch.float64)
        cin = self.shape[self.in_axis]
        span = rows.shape[1] // cin
        hinv = self.inverse().clone()
        cols = torch.arange(rows.shape[1]).view(span, cin).T  # [Cin, span]: channel c's columns
        order: list[int] = []

        def remove(c: int) -> None:
            nonlocal rows, hinv
            p = cols[c]
            m = hinv[p][:, p]
            rows = rows - torch.linalg.solve(m, rows[:, p].T).T @ hinv[p]
            rows[:, p] = 0.0
            hinv = hinv - hinv[:, p] @ torch.linalg.solve(m, hinv[p])
            order.append(c)

        for c in torch.nonzero(first.cpu()).flatten().tolist()[: cin - 1]:
            remove(int(c))
        while len(order) < cin - 1:
            left = torch.tensor([c for c in range(cin) if c not in order])
            blocks = hinv[cols[left][:, :, None], cols[left][:, None, :]]  # [n, span, span]
            wp = rows[:, cols[left]].permute(1, 2, 0)  # [n, span, R]
            cost = (torch.linalg.solve(blocks, wp) * wp).sum(dim=(1, 2))
            remove(int(left[int(torch.argmin(cost))]))
        return order
