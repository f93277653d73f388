"""BEVFusion / BEVDet-style ``bev_pool`` free functions -> ``sparsefuse::bev_pool`` (ONNX BEVPool).

Detected in the methods of every module (through their globals, see rebind.py): functions named
``bev_pool`` taking 6 positional arguments (BEVFusion) or ``bev_pool_v2`` taking 8 (BEVDet), or the
functions listed in ``options["bev_pool"]["functions"]`` ("module:function"; 6 or 8 arguments).
The converted copy calls our replacement; the original keeps calling the user's function.

BEVFusion ``bev_pool(feats[N,C], coords[N,4] int (x, y, z, b), B, D, H, W) -> [B, C, D, H, W]``:
``out[b, :, z, x, y]`` is the sum of ``feats`` over the points with coords (x, y, z, b): H indexes
x and W indexes y (BEVFusion's convention: it is called with D, H, W = nz, nx, ny). Points outside
the grid are the caller's responsibility in BEVFusion (it filters them first; its kernel would
write out of bounds); here they add nothing (static path) or 0 x their feature to cell 0 (runtime).
Mapped onto BEVPool with the N points as one "camera" row: feat [1,1,N,C], depth = ones,
cell rank = ((b*D + z)*H + x)*W + y, bev_shape (B, D*H, W), then reshape to [B, C, D, H, W].

- runtime path: ranks / intervals computed in the graph from coords (stable argsort, run
  boundaries with nonzero), for geometry that changes per frame (camera params as inputs);
- static path: when the coords at a call are bit-identical on every sample frame (>= 2 frames in
  ``ctx.frames``; the copy, which still computes exactly what the original does, is run on them
  with ``ctx.forward`` or ``model(**frame)``), ranks / intervals are precomputed once with
  plugins/bev_pool/precompute.py and kept as buffers of a :class:`StaticBevPool` submodule of
  the calling module, so the exported graph carries them as constants.
``options["bev_pool"]["mode"]``: "auto" (static when identical, default), "static" (refuse
otherwise), "runtime".

BEVDet ``bev_pool_v2(depth[B,N,D,H,W], feat[B,N,H,W,C], ranks_depth, ranks_feat, ranks_bev,
bev_feat_shape (B, Z, Y, X, C), interval_starts, interval_lengths) -> [B, C, Z, Y, X]`` is BEVPool
itself (bev_shape (B, Z*Y, X)).
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import sparsefuse.plugins  # noqa: F401  (registers torch.ops.sparsefuse.*)
from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.convert import rebind as rb
from sparsefuse.passes.convert.base import ConversionRow, ConvertContext
from sparsefuse.plugins.bev_pool.precompute import precompute_ranks

KINDS = {"bev_pool": 6, "bev_pool_v2": 8}  # function name -> positional arity
MODES = ("auto", "static", "runtime")
MIN_STATIC_FRAMES = 2


# ------------------------------------------------------------------------------------ replacements


def bevfusion_cells(
    coords: torch.Tensor, batch: int, depth: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """coords [N,4] (x, y, z, b) -> (cell [N] int64 = ((b*D + z)*H + x)*W + y, inside [N] bool)."""
    c = coords.to(torch.int64)
    x, y, z, b = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
    inside = (
        (x >= 0) & (x < height) & (y >= 0) & (y < width) & (z >= 0) & (z < depth) & (b >= 0) & (b < batch)
    )
    return ((b * depth + z) * height + x) * width + y, inside


def bev_pool_runtime(
    feats: torch.Tensor,
    coords: torch.Tensor,
    B: int,
    D: int,
    H: int,
    W: int,  # noqa: N803
) -> torch.Tensor:
    """BEVFusion ``bev_pool`` with BEVPool ranks / intervals computed in the graph -> [B, C, D, H, W]."""
    batch, depth, height, width = int(B), int(D), int(H), int(W)
    cell, inside = bevfusion_cells(coords, batch, depth, height, width)
    key = torch.where(inside, cell, torch.zeros_like(cell))
    # Stable order by cell (input order within a cell) from a plain sort of unique composite keys
    # (the ONNX exporter has no stable sort).
    n = key.shape[0]
    order = torch.argsort(key * n + torch.arange(n, device=key.device))
    ranks_bev = key[order]
    # Outside points read depth weight 0 (index 1), the others weight 1 (index 0).
    ranks_depth = (~inside[order]).to(torch.int32)
    weights = torch.tensor([1.0, 0.0], dtype=feats.dtype, device=feats.device).reshape(1, 1, 1, 2)
    first = torch.ones(1, dtype=torch.bool, device=feats.device)
    boundary = torch.cat([first, ranks_bev[1:] != ranks_bev[:-1]])
    starts = torch.nonzero(boundary).reshape(-1)
    ends = torch.cat([starts[1:], torch.full((1,), n, dtype=starts.dtype, device=starts.device)])
    channels = feats.shape[1]
    pooled = torch.ops.sparsefuse.bev_pool(
        weights,
        feats.reshape(1, 1, n, channels),
        ranks_depth,
        order.to(torch.int32),
        ranks_bev.to(torch.int32),
        starts.to(torch.int32),
        (ends - starts).to(torch.int32),
        [batch, depth * height, width],
    )
    return pooled.reshape(batch, channels, depth, height, width)


class StaticBevPool(nn.Module):
    """BEVFusion ``bev_pool`` for one call site whose coords are fixed: precomputed ranks and
    intervals in (non-persistent) buffers; ``forward`` has the user function's signature."""

    def __init__(self, coords: torch.Tensor, shape: tuple[int, int, int, int], site: str) -> None:
        super().__init__()
        self.shape = tuple(int(v) for v in shape)  # (B, D, H, W)
        self.num_points = int(coords.shape[0])
        self.site = site
        cell, inside = bevfusion_cells(coords.cpu(), *self.shape)
        cells = torch.where(inside, cell, torch.full_like(cell, -1)).numpy().reshape(1, 1, 1, -1)
        ranks = precompute_ranks(cells)
        self.num_intervals = ranks.num_intervals
        for name in ("ranks_feat", "ranks_bev", "interval_starts", "interval_lengths"):
            self.register_buffer(name, torch.from_numpy(getattr(ranks, name).copy()), persistent=False)
        self.register_buffer(
            "ranks_depth", torch.zeros(ranks.num_points, dtype=torch.int32), persistent=False
        )
        self.register_buffer("weight", torch.ones(1, 1, 1, 1), persistent=False)

    def forward(
        self,
        feats: torch.Tensor,
        coords: torch.Tensor,
        B: int,
        D: int,
        H: int,
        W: int,  # noqa: N803
    ) -> torch.Tensor:
        shape = (int(B), int(D), int(H), int(W))
        count = feats.shape[0]
        if shape != self.shape or (isinstance(count, int) and count != self.num_points):
            raise SparsefuseError(
                f"{self.site}: bev_pool was converted for {self.num_points} points on (B, D, H, W) = "
                f"{self.shape} (static geometry), now called with {count} points on {shape}",
                'convert with options {"bev_pool": {"mode": "runtime"}} for geometry that changes',
            )
        # Traced (the user filtered the points with a mask): pin the data-dependent count.
        torch._check(
            count == self.num_points, lambda: f"{self.site}: static bev_pool needs {self.num_points} points"
        )
        batch, depth, height, width = shape
        channels = feats.shape[1]
        pooled = torch.ops.sparsefuse.bev_pool(
            self.weight.to(feats.dtype),
            feats.reshape(1, 1, self.num_points, channels),
            self.ranks_depth,
            self.ranks_feat,
            self.ranks_bev,
            self.interval_starts,
            self.interval_lengths,
            [batch, depth * height, width],
        )
        return pooled.reshape(batch, channels, depth, height, width)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, points={self.num_points}, intervals={self.num_intervals}"


def bev_pool_v2(
    depth: torch.Tensor,
    feat: torch.Tensor,
    ranks_depth: torch.Tensor,
    ranks_feat: torch.Tensor,
    ranks_bev: torch.Tensor,
    bev_feat_shape: Any,
    interval_starts: torch.Tensor,
    interval_lengths: torch.Tensor,
) -> torch.Tensor:
    """BEVDet ``bev_pool_v2`` -> [B, C, Z, Y, X] (bev_feat_shape = (B, Z, Y, X, C))."""
    batch, z_size, y_size, x_size, channels = (int(v) for v in bev_feat_shape)
    d, h, w = depth.shape[-3:]
    pooled = torch.ops.sparsefuse.bev_pool(
        depth.reshape(-1, d, h, w),
        feat.reshape(-1, h, w, feat.shape[-1]),
        ranks_depth.to(torch.int32),
        ranks_feat.to(torch.int32),
        ranks_bev.to(torch.int32),
        interval_starts.to(torch.int32),
        interval_lengths.to(torch.int32),
        [batch, z_size * y_size, x_size],
    )
    return pooled.reshape(batch, channels, z_size, y_size, x_size)


# -------------------------------------------------------------------------------------- detection


def _arity(fn: Callable) -> int | None:
    code = getattr(fn, "__code__", None)
    return None if code is None else int(code.co_argcount)


def _explicit(options: Mapping[str, Any]) -> dict[int, str]:
    """id(function) -> kind for options["functions"] ("module:function")."""
    out: dict[int, str] = {}
    for spec in options.get("functions", ()):
        module_name, sep, attr = str(spec).partition(":")
        if not sep or not attr:
            raise SparsefuseError(
                f"bev_pool function {spec!r} is not 'module:function'",
                'e.g. options {"bev_pool": {"functions": ["my_ops:bev_pool"]}}',
            )
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise SparsefuseError(
                f"bev_pool function {spec!r} cannot be imported: {exc}",
                "give an importable module path and the function's name",
            ) from exc
        kind = next((k for k, n in KINDS.items() if _arity(fn) == n), None)
        if kind is None:
            raise SparsefuseError(
                f"bev_pool function {spec!r} takes {_arity(fn)} positional arguments",
                "BEVFusion bev_pool(feats, coords, B, D, H, W) takes 6, BEVDet bev_pool_v2(...) takes 8",
            )
        out[id(fn)] = kind
    return out


def _kind_of(value: Any, explicit: Mapping[int, str]) -> str | None:
    """ "bev_pool" / "bev_pool_v2" for a target function, else None."""
    if not isinstance(value, types.FunctionType):
        return None
    if id(value) in explicit:
        return explicit[id(value)]
    if value.__module__.startswith("sparsefuse."):
        return None
    return value.__name__ if KINDS.get(value.__name__) == _arity(value) else None


# -------------------------------------------------------------------------------------- recording


@dataclass
class _Calls:
    """Per frame, the BEVFusion-style calls one module instance made: (coords, (B, D, H, W))."""

    frames: list[list[tuple[torch.Tensor, tuple]]] = field(default_factory=list)


def _recorder(calls: _Calls, original: Callable) -> Callable:
    def record(feats, coords, *rest, **kwargs):
        shape = tuple(int(v) for v in rest) + tuple(int(v) for v in kwargs.values())
        calls.frames[-1].append((coords.detach().clone(), shape))
        return original(feats, coords, *rest, **kwargs)

    return record


def _as_tensor(value: Any) -> Any:
    return torch.from_numpy(np.asarray(value)) if isinstance(value, np.ndarray) else value


def _record(
    model: nn.Module,
    ctx: ConvertContext,
    targets: dict[str, tuple[nn.Module, list[rb.Site]]],
    explicit: Mapping[int, str],
) -> tuple[dict[str, _Calls], str]:
    """Run the copy on ``ctx.frames`` with recorders at the BEVFusion sites; ({path: calls}, error)."""
    calls = {path: _Calls() for path in targets}
    for path, (module, found) in targets.items():
        rebindings = [
            rb.Rebinding(s.name, s.function, _recorder(calls[path], s.function))
            for s in found
            if _kind_of(s.function, explicit) == "bev_pool"
        ]
        rb.rebind(module, rebindings)
    error = ""
    try:
        with torch.no_grad():
            for frame in ctx.frames:
                for c in calls.values():
                    c.frames.append([])
                inputs = {k: _as_tensor(v) for k, v in frame.items()}
                if ctx.forward is not None:
                    ctx.forward(model, inputs)
                else:
                    model(**inputs)
    except Exception as exc:  # the user's model failed: no static geometry, say why
        error = f"running the model on the sample frames failed ({type(exc).__name__}: {exc})"
    finally:
        for module, _ in targets.values():
            rb.unbind(module)
    return calls, error


def _static_reason(calls: _Calls | None, error: str) -> tuple[bool, str]:
    """(static?, why) from one call site's recorded calls."""
    if error:
        return False, error
    if calls is None or len(calls.frames) < MIN_STATIC_FRAMES:
        return False, f"fewer than {MIN_STATIC_FRAMES} sample frames to compare coords"
    counts = {len(f) for f in calls.frames}
    if counts != {1}:
        return False, f"called {sorted(counts)} times per forward (static ranks need exactly one call)"
    first_coords, first_shape = calls.frames[0][0]
    for frame in calls.frames[1:]:
        coords, shape = frame[0]
        if (
            shape != first_shape
            or coords.dtype != first_coords.dtype
            or not torch.equal(coords, first_coords)
        ):
            return False, "coords differ between sample frames"
    return True, f"coords bit-identical on {len(calls.frames)} sample frames"


# -------------------------------------------------------------------------------------- converter


def _options(ctx: ConvertContext) -> dict[str, Any]:
    options = dict(ctx.options.get("bev_pool", {}) or {})
    mode = options.get("mode", "auto")
    if mode not in MODES:
        raise SparsefuseError(
            f"bev_pool mode {mode!r} is not one of {MODES}",
            'options {"bev_pool": {"mode": "auto" | "static" | "runtime"}}',
        )
    options["mode"] = mode
    return options


def _source(fn: Callable) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


@dataclass(frozen=True)
class _Converter:
    library: str = "bev_pool"
    supported: tuple[str, ...] = ("bev_pool (BEVFusion)", "bev_pool_v2 (BEVDet)")

    def convert(self, model: nn.Module, ctx: ConvertContext) -> list[ConversionRow]:
        """Rebind every detected call site of the copy to our replacements; one row per site."""
        options = _options(ctx)
        explicit = _explicit(options)
        targets: dict[str, tuple[nn.Module, list[rb.Site]]] = {}
        for path, module in model.named_modules():
            found = rb.sites(module, lambda v: _kind_of(v, explicit) is not None)
            if found:
                targets[path] = (module, found)
        if not targets:
            return []
        fusion = {
            p: t
            for p, t in targets.items()
            if any(_kind_of(s.function, explicit) == "bev_pool" for s in t[1])
        }
        calls: dict[str, _Calls] = {}
        error = ""
        if fusion and options["mode"] != "runtime":
            if len(ctx.frames) >= MIN_STATIC_FRAMES:
                calls, error = _record(model, ctx, fusion, explicit)
        rows: list[ConversionRow] = []
        cache = rb.GlobalsCache()
        for path, (module, found) in targets.items():
            rebindings: list[rb.Rebinding] = []
            for site in {(s.name, id(s.function)): s for s in found}.values():
                kind = _kind_of(site.function, explicit)
                where = f"{path or '(root)'}:{site.name}"
                if kind == "bev_pool_v2":
                    rebindings.append(rb.Rebinding(site.name, site.function, bev_pool_v2))
                    rows.append(
                        ConversionRow(
                            where,
                            _source(site.function),
                            "BEVPool (BEVDet ranks as given)",
                            "bev_shape (B, Z*Y, X)",
                        )
                    )
                    continue
                static, why = _static_reason(calls.get(path), error)
                if options["mode"] == "static" and not static:
                    raise SparsefuseError(
                        f"bev_pool at {where} cannot use static ranks: {why}",
                        'give >= 2 sample frames with the same geometry, or mode "runtime"',
                    )
                if static and options["mode"] != "runtime":
                    coords, shape = calls[path].frames[0][0]
                    name = _free_name(module, "sparsefuse_bev_pool")
                    module.add_module(name, StaticBevPool(coords, shape, where))
                    rebindings.append(
                        rb.Rebinding(site.name, site.function, _submodule(name), per_instance=True)
                    )
                    pool = getattr(module, name)
                    target = (
                        f"BEVPool (static ranks: {pool.num_points} points, {pool.num_intervals} intervals)"
                    )
                else:
                    rebindings.append(rb.Rebinding(site.name, site.function, bev_pool_runtime))
                    target = "BEVPool (runtime ranks)"
                    why = "mode runtime" if options["mode"] == "runtime" else why
                rows.append(ConversionRow(where, _source(site.function), target, why))
            if not rb.rebind(module, rebindings, cache):
                raise SparsefuseError(
                    f"module {path or '(root)'}: could not rebind its bev_pool call",
                    "call bev_pool from a plain method of the module's class",
                )
        return rows


def _submodule(name: str) -> Callable[[nn.Module], nn.Module]:
    def resolve(instance: nn.Module) -> nn.Module:
        return getattr(instance, name)

    return resolve


def _free_name(module: nn.Module, base: str) -> str:
    name, i = base, 0
    while hasattr(module, name):
        i += 1
        name = f"{base}_{i}"
    return name


CONVERTER = _Converter()
