"""CUDA implementations of the ``sparsefuse::*`` torch ops through the C ABI kernels library.

    import sparsefuse.plugins.cuda as sfcuda
    sfcuda.load()          # finds libsparsefuse_kernels.so, registers the CUDA kernels

After ``load()``, CUDA tensors passed to ``torch.ops.sparsefuse.*`` (and so the reference
model on a GPU) run on our kernels; CPU tensors keep the torch reference. Importing this module
is harmless on machines without a GPU or without the library: only ``load()`` can fail, with a
SparsefuseError that says how to build the library. Torch allocates every buffer; launches go
on ``torch.cuda.current_stream()``.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from sparsefuse.errors import SparsefuseError
from sparsefuse.plugins import cuda_abi as abi
from sparsefuse.plugins.sparse_conv3d.reference import output_spatial_shape
from sparsefuse.plugins.voxelize.reference import check_modes, grid_shape

BUILD_HINT = (
    "build it with `cmake -S . -B build/cuda && cmake --build build/cuda -j` (docs/native-build.md) "
    f"or point ${abi.LIB_ENV} at libsparsefuse_kernels.so"
)


@dataclass(frozen=True)
class SpconvTuning:
    """SparseConv3d knobs. epsilon / threshold: TorchSparse adaptive grouping (ε, S rows);
    algo: "auto" | "gather_gemm_scatter" | "implicit_gemm" | "direct"; max_grid_cells: largest B*Z*Y*X input
    grid mapped with a collision-free grid table instead of the hash table."""

    epsilon: float = 0.4
    threshold: int = 8192
    algo: str = "auto"
    max_grid_cells: int = 1 << 25
    direct_below_pairs: int = 4096  # auto: fetch-on-demand when M*K is below this


ALGOS = ("auto", "gather_gemm_scatter", "implicit_gemm", "direct")
_state: dict[str, object] = {"lib": None, "registered": False, "tuning": SpconvTuning(), "poison": False}
_lock = threading.Lock()


def set_poison(enabled: bool) -> None:
    """Fill every output and workspace with NaN / INT32_MIN / 0xFF before launch (tests, debugging),
    so that an element a kernel forgets to write cannot pass for a correct one."""
    _state["poison"] = bool(enabled)


def _empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device=device)
    if _state["poison"]:
        t.fill_(float("nan") if dtype.is_floating_point else (255 if dtype == torch.uint8 else -(2**31)))
    return t


def tuning() -> SpconvTuning:
    return _state["tuning"]  # type: ignore[return-value]


def set_tuning(**changes: object) -> SpconvTuning:
    """Change SparseConv3d knobs (see SpconvTuning); returns the new setting."""
    new = replace(tuning(), **changes)
    if new.algo not in ALGOS:
        raise SparsefuseError(f"unknown sparse conv algo {new.algo!r}", f"use one of {', '.join(ALGOS)}")
    _state["tuning"] = new
    return new


def find_library(env: dict[str, str] | None = None) -> Path:
    """First existing candidate path; SparsefuseError listing the places searched otherwise."""
    explicit = (env if env is not None else os.environ).get(abi.LIB_ENV)
    if explicit and not Path(explicit).is_file():  # an explicit choice is never silently replaced
        raise SparsefuseError(f"${abi.LIB_ENV}={explicit} does not exist", BUILD_HINT)
    for path in abi.candidate_paths(env):
        if path.is_file():
            return path
    raise SparsefuseError("libsparsefuse_kernels.so not found (searched build/*/lib and the package dir)",
                          BUILD_HINT)


def load(path: str | Path | None = None) -> ctypes.CDLL:
    """Load the kernels library (once) and register the CUDA kernels of the four ops."""
    with _lock:
        if _state["lib"] is None:
            target = Path(path) if path is not None else find_library()
            try:
                lib = abi.declare(ctypes.CDLL(str(target)))
            except (OSError, AttributeError) as exc:
                raise SparsefuseError(f"cannot load {target}: {exc}", BUILD_HINT) from None
            if lib.sf_abi_version() != abi.ABI_VERSION:
                raise SparsefuseError(f"{target} has ABI {lib.sf_abi_version()}, expected {abi.ABI_VERSION}",
                                      "rebuild the kernels library from this checkout")
            _state["lib"] = lib
        if not _state["registered"]:
            _register()
            _state["registered"] = True
        return _state["lib"]  # type: ignore[return-value]


def _lib() -> ctypes.CDLL:
    return _state["lib"] if _state["lib"] is not None else load()  # type: ignore[return-value]


def check(status: int, what: str) -> None:
    """Raise on a non-zero launcher status (an internal bug or a CUDA fault, not a user mistake)."""
    if status != 0:
        raise RuntimeError(f"{what} failed: {_lib().sf_status_string(status).decode()} (status {status})")


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None or t.numel() == 0 else t.data_ptr()


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _dtype_code(t: torch.Tensor, op: str) -> int:
    if t.dtype == torch.float32:
        return abi.SF_FLOAT32
    if t.dtype == torch.float16:
        return abi.SF_FLOAT16
    raise SparsefuseError(f"{op}: CUDA kernels support float32 and float16, got {t.dtype}",
                          "cast the inputs to float32 or float16")


def _workspace(nbytes: int, device: torch.device) -> torch.Tensor:
    return _empty(max(int(nbytes), 1), dtype=torch.uint8, device=device)


def _size(fn, *args) -> int:
    out = ctypes.c_size_t(0)
    check(fn(*args, ctypes.byref(out)), fn.__name__)
    return out.value


# ---- ops --------------------------------------------------------------------------------------

def voxelize_with_counts_cuda(points, point_range, voxel_size, max_voxels, max_points_per_voxel=0,
                              reduce="mean", order="key"):
    check_modes(int(max_points_per_voxel), reduce, order)
    lib, dev = _lib(), points.device
    pts = points.to(torch.float32).contiguous()
    num_points, num_features = int(pts.shape[0]), int(pts.shape[1])
    z, y, x = grid_shape(point_range, voxel_size)
    capacity = min(int(max_voxels), num_points)
    slots = (int(max_points_per_voxel),) if reduce == "none" else ()
    feats = _empty(capacity, *slots, num_features, dtype=torch.float32, device=dev)
    coords = _empty(capacity, 4, dtype=torch.int32, device=dev)
    counts = _empty(capacity, dtype=torch.int32, device=dev)
    num = _empty(dtype=torch.int32, device=dev)
    with torch.cuda.device(dev):
        ws = _workspace(_size(lib.sf_voxelize_workspace_size, num_points, z, y, x), dev)
        status = lib.sf_voxelize(
            _ptr(pts), num_points, num_features, abi.float_array(point_range), abi.float_array(voxel_size),
            z, y, x, int(max_voxels), int(max_points_per_voxel), abi.VOXEL_REDUCE[reduce],
            abi.VOXEL_ORDER[order], _ptr(feats), _ptr(coords), num.data_ptr(), _ptr(counts), capacity,
            ws.data_ptr(), ws.numel(), _stream(dev))
        check(status, "sf_voxelize")
        count = int(num.item())
    return feats[:count].to(points.dtype), coords[:count], num, counts[:count]


def voxelize_cuda(points, point_range, voxel_size, max_voxels, max_points_per_voxel=0, reduce="mean",
                  order="key"):
    out = voxelize_with_counts_cuda(points, point_range, voxel_size, max_voxels, max_points_per_voxel, reduce,
                                    order)
    return out[:3]


def scatter_dense_cuda(features, coords, spatial_shape, batch_size):
    lib, dev = _lib(), features.device
    feats = features.contiguous()
    z, y, x = (int(s) for s in spatial_shape)
    rows, channels = int(feats.shape[0]), int(feats.shape[1])
    dense = _empty(batch_size, channels * z, y, x, dtype=feats.dtype, device=dev)
    with torch.cuda.device(dev):
        crd = coords.to(device=dev, dtype=torch.int32).contiguous()
        status = lib.sf_scatter_dense(_dtype_code(feats, "ScatterDense"), _ptr(feats), _ptr(crd), rows,
                                      channels, int(batch_size), z, y, x, dense.data_ptr(), _stream(dev))
        check(status, "sf_scatter_dense")
    return dense


def bev_pool_cuda(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths,
                  bev_shape):
    lib, dev = _lib(), feat.device
    feat_c = feat.contiguous()
    depth_c = depth.to(device=dev, dtype=feat.dtype).contiguous()  # the reference multiplies in feat's dtype
    batch, y, x = (int(s) for s in bev_shape)
    channels = int(feat_c.shape[-1])
    bev = _empty(batch, channels, y, x, dtype=feat_c.dtype, device=dev)
    idx = [t.to(device=dev, dtype=torch.int32).contiguous()
           for t in (ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths)]
    with torch.cuda.device(dev):
        status = lib.sf_bev_pool(_dtype_code(feat_c, "BEVPool"), _ptr(depth_c), _ptr(feat_c),
                                 *[_ptr(t) for t in idx], int(idx[3].numel()), channels, batch, y, x,
                                 bev.data_ptr(), _stream(dev))
        check(status, "sf_bev_pool")
    return bev


def _conv_operands(features, weight, bias, activation: str, op_type: str):
    """(dtype code, features, weight [Cout, K, Cin], bias or None), contiguous on the features' device and
    dtype; ValueError for an unknown activation."""
    if activation not in abi.ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(abi.ACTIVATIONS)}, got {activation!r}")
    feats = features.contiguous()
    code = _dtype_code(feats, op_type)
    c_out, c_in = int(weight.shape[0]), int(weight.shape[-1])
    w = weight.to(device=feats.device, dtype=feats.dtype).reshape(c_out, -1, c_in).contiguous()
    b = None if bias is None else bias.to(device=feats.device, dtype=feats.dtype).contiguous()
    return code, feats, w, b


def sparse_conv3d_cuda(features, coords, weight, bias, spatial_shape, kernel_size, stride, padding, dilation,
                       subm, activation):
    code, feats, w, b = _conv_operands(features, weight, bias, activation, "SparseConv3d")
    dev = feats.device
    crd = coords.to(device=dev, dtype=torch.int32).contiguous()
    with torch.cuda.device(dev):
        out_coords, nbr = conv_kernel_map(crd, spatial_shape, kernel_size, stride, padding, dilation, subm)
        out = _empty(out_coords.shape[0], w.shape[0], dtype=feats.dtype, device=dev)
        conv_apply(code, feats, w, b, nbr, bool(subm), abi.ACTIVATIONS[activation], out)
    return out, out_coords


def conv_kernel_map(coords, spatial_shape, kernel_size, stride, padding, dilation, subm):
    """(out_coords[M,4] int32, nbr[M,K] int32) on coords' device (one sync for M when strided)."""
    lib, dev, st = _lib(), coords.device, _stream(coords.device)
    n = int(coords.shape[0])
    batches = int(coords[:, 0].max().item()) + 1 if n else 1
    g = abi.geometry(spatial_shape, kernel_size, stride, padding, dilation, subm, batches)
    check(lib.sf_spconv_out_shape(ctypes.byref(g)), "sf_spconv_out_shape")
    expected = output_spatial_shape(spatial_shape, kernel_size, stride, padding, dilation, subm)
    assert list(g.out_shape) == expected, (list(g.out_shape), expected)
    volume = int(kernel_size[0]) * int(kernel_size[1]) * int(kernel_size[2])
    if subm:
        out_coords = coords.clone()
    else:
        capacity = n * volume
        buf = _empty(max(capacity, 1), 4, dtype=torch.int32, device=dev)
        num = _empty(dtype=torch.int32, device=dev)
        ws = _workspace(_size(lib.sf_spconv_sites_workspace_size, ctypes.byref(g), n), dev)
        status = lib.sf_spconv_out_sites(ctypes.byref(g), _ptr(coords), n, buf.data_ptr(), capacity,
                                         num.data_ptr(), ws.data_ptr(), ws.numel(), st)
        check(status, "sf_spconv_out_sites")
        out_coords = buf[: int(num.item())].clone()
    m = int(out_coords.shape[0])
    nbr = _empty(m, volume, dtype=torch.int32, device=dev)
    cells = tuning().max_grid_cells
    ws = _workspace(_size(lib.sf_spconv_map_workspace_size, ctypes.byref(g), n, cells), dev)
    status = lib.sf_spconv_kernel_map(ctypes.byref(g), _ptr(coords), n, _ptr(out_coords), m, None, _ptr(nbr),
                                      cells, ws.data_ptr(), ws.numel(), st)
    check(status, "sf_spconv_kernel_map")
    return out_coords, nbr


def conv_plan(nbr: torch.Tensor, subm: bool) -> tuple[abi.ConvPlan, torch.Tensor]:
    """Map sizes, offset groups and the partial row of every pair (one stream sync)."""
    lib, dev = _lib(), nbr.device
    m, volume = int(nbr.shape[0]), int(nbr.shape[1])
    center = volume // 2 if subm else -1
    plan, sidx = abi.ConvPlan(), _empty(m, volume, dtype=torch.int32, device=dev)
    ws = _workspace(_size(lib.sf_spconv_plan_workspace_size, m, volume), dev)
    t = tuning()
    check(lib.sf_spconv_plan(_ptr(nbr), m, volume, center, float(t.epsilon), int(t.threshold), _ptr(sidx),
                             ctypes.byref(plan), ws.data_ptr(), ws.numel(), _stream(dev)), "sf_spconv_plan")
    return plan, sidx


def conv_apply(code: int, feats, w, b, nbr, subm: bool, act: int, out: torch.Tensor) -> None:
    """Fill out[M, Cout] by gather-GEMM-scatter, implicit GEMM or fetch-on-demand (tuning().algo)."""
    lib, dev = _lib(), feats.device
    m, volume = int(nbr.shape[0]), int(nbr.shape[1])
    c_out, c_in = int(w.shape[0]), int(w.shape[-1])
    if m == 0:
        return
    t = tuning()
    direct = t.algo == "direct" or (t.algo == "auto" and m * volume < t.direct_below_pairs)
    if direct or feats.shape[0] == 0:
        status = lib.sf_spconv_direct(code, _ptr(feats), c_in, _ptr(w), _ptr(b), c_out, _ptr(nbr), m, volume,
                                      act, out.data_ptr(), _stream(dev))
        check(status, "sf_spconv_direct")
        return
    if t.algo == "implicit_gemm":
        status = lib.sf_spconv_implicit(code, _ptr(feats), c_in, _ptr(w), _ptr(b), c_out, _ptr(nbr), m,
                                        volume, act, out.data_ptr(), _stream(dev))
        check(status, "sf_spconv_implicit")
        return
    plan, sidx = conv_plan(nbr, subm)
    gathered = _empty(plan.total_gathered, c_in, dtype=feats.dtype, device=dev)
    partial_rows = plan.total_gathered + (m if plan.center >= 0 else 0)
    partial = _empty(partial_rows, c_out, dtype=feats.dtype, device=dev)
    status = lib.sf_spconv_apply(code, ctypes.byref(plan), _ptr(feats), int(feats.shape[0]), c_in, _ptr(w),
                                 _ptr(b), c_out, _ptr(nbr), _ptr(sidx), act, _ptr(gathered), _ptr(partial),
                                 out.data_ptr(), _stream(dev))
    check(status, "sf_spconv_apply")


def sparse_inverse_conv3d_cuda(features, coords, out_coords, weight, bias, spatial_shape, kernel_size, stride,
                               padding, dilation, activation):
    code, feats, w, b = _conv_operands(features, weight, bias, activation, "SparseInverseConv3d")
    dev = feats.device
    coarse = coords.to(device=dev, dtype=torch.int32).contiguous()
    fine = out_coords.to(device=dev, dtype=torch.int32).contiguous()
    with torch.cuda.device(dev):
        nbr = inverse_kernel_map(coarse, fine, spatial_shape, kernel_size, stride, padding, dilation)
        out = _empty(fine.shape[0], w.shape[0], dtype=feats.dtype, device=dev)
        conv_apply(code, feats, w, b, nbr, False, abi.ACTIVATIONS[activation], out)
    return out


def inverse_kernel_map(coords, out_coords, spatial_shape, kernel_size, stride, padding, dilation):
    """nbr[M,K] int32 of the inverse conv: the row of coords (coarse) that reaches each fine site."""
    lib, dev = _lib(), coords.device
    n, m = int(coords.shape[0]), int(out_coords.shape[0])
    batches = int(coords[:, 0].max().item()) + 1 if n else 1
    g = abi.geometry(spatial_shape, kernel_size, stride, padding, dilation, False, batches)
    volume = int(kernel_size[0]) * int(kernel_size[1]) * int(kernel_size[2])
    nbr = _empty(m, volume, dtype=torch.int32, device=dev)
    cells = tuning().max_grid_cells
    ws = _workspace(_size(lib.sf_spinv_map_workspace_size, ctypes.byref(g), n, cells), dev)
    status = lib.sf_spinv_kernel_map(ctypes.byref(g), _ptr(coords), n, _ptr(out_coords), m, _ptr(nbr), cells,
                                     ws.data_ptr(), ws.numel(), _stream(dev))
    check(status, "sf_spinv_kernel_map")
    return nbr


OPS = {
    "sparsefuse::voxelize": voxelize_cuda,
    "sparsefuse::voxelize_with_counts": voxelize_with_counts_cuda,
    "sparsefuse::scatter_dense": scatter_dense_cuda,
    "sparsefuse::bev_pool": bev_pool_cuda,
    "sparsefuse::sparse_conv3d": sparse_conv3d_cuda,
    "sparsefuse::sparse_inverse_conv3d": sparse_inverse_conv3d_cuda,
}


def _register() -> None:
    import sparsefuse.plugins  # noqa: F401  (defines the ops whose CUDA kernels we add)

    for name, fn in OPS.items():
        torch.library.register_kernel(name, "cuda", fn)
