"""ctypes view of the kernels library's C ABI (plugins/sf_abi.h and plugins/<op>/kernels.h).

Pure declarations and library lookup: nothing here touches CUDA, so it imports on any machine.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from pathlib import Path

LIB_ENV = "SPARSEFUSE_KERNELS_LIB"
LIB_NAME = "libsparsefuse_kernels.so"
ABI_VERSION = 1
MAX_KERNEL_VOLUME = 343
SF_FLOAT32, SF_FLOAT16 = 0, 1
ACTIVATIONS = {"none": 0, "relu": 1}
VOXEL_REDUCE = {"mean": 0, "none": 1}  # SF_VOXEL_REDUCE_* (voxelize/kernels.h)
VOXEL_ORDER = {"key": 0, "arrival": 1}  # SF_VOXEL_ORDER_*

_REPO_ROOT = Path(__file__).resolve().parents[1]
_BUILD_DIRS = ("build/cuda", "build/release", "build/gpu", "build")


def candidate_paths(env: Mapping[str, str] | None = None, root: Path = _REPO_ROOT) -> list[Path]:
    """Where the library is looked for, in order: $SPARSEFUSE_KERNELS_LIB, build dirs, package dir."""
    env = os.environ if env is None else env
    paths: list[Path] = []
    if env.get(LIB_ENV):
        paths.append(Path(env[LIB_ENV]))
    for build in _BUILD_DIRS:
        paths += [root / build / "lib" / LIB_NAME, root / build / LIB_NAME]
    paths.append(Path(__file__).resolve().parent / LIB_NAME)
    return paths


class ConvGeometry(ctypes.Structure):
    """SfConvGeometry (sparse_conv3d/kernels.h)."""

    _fields_ = [
        ("spatial_shape", ctypes.c_int32 * 3),
        ("out_shape", ctypes.c_int32 * 3),
        ("kernel_size", ctypes.c_int32 * 3),
        ("stride", ctypes.c_int32 * 3),
        ("padding", ctypes.c_int32 * 3),
        ("dilation", ctypes.c_int32 * 3),
        ("subm", ctypes.c_int32),
        ("num_batches", ctypes.c_int32),
    ]


class ConvPlan(ctypes.Structure):
    """SfConvPlan (sparse_conv3d/kernels.h): per-offset map sizes, rows and offset groups."""

    _fields_ = [
        ("kernel_volume", ctypes.c_int32),
        ("center", ctypes.c_int32),
        ("num_groups", ctypes.c_int32),
        ("num_out", ctypes.c_int32),
        ("total_gathered", ctypes.c_int64),
        ("count", ctypes.c_int64 * MAX_KERNEL_VOLUME),
        ("base", ctypes.c_int64 * MAX_KERNEL_VOLUME),
        ("group_first", ctypes.c_int32 * MAX_KERNEL_VOLUME),
        ("group_size", ctypes.c_int32 * MAX_KERNEL_VOLUME),
        ("group_batched", ctypes.c_int32 * MAX_KERNEL_VOLUME),
    ]

    def groups(self) -> list[tuple[int, int, bool]]:
        """(first offset, number of offsets, batched) per group."""
        return [(self.group_first[g], self.group_size[g], bool(self.group_batched[g]))
                for g in range(self.num_groups)]


_P = ctypes.c_void_p
_I32P = ctypes.c_void_p  # device int32 pointers travel as raw addresses
_I64 = ctypes.c_int64
_I32 = ctypes.c_int32
_SZ = ctypes.c_size_t
_SZP = ctypes.POINTER(ctypes.c_size_t)
_F32A = ctypes.POINTER(ctypes.c_float)
_GEOM = ctypes.POINTER(ConvGeometry)
_PLAN = ctypes.POINTER(ConvPlan)

PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    "sf_status_string": (ctypes.c_char_p, [ctypes.c_int]),
    "sf_abi_version": (ctypes.c_int, []),
    "sf_bev_pool": (ctypes.c_int, [ctypes.c_int, _P, _P, _I32P, _I32P, _I32P, _I32P, _I32P, _I64, _I64, _I64,
                                   _I64, _I64, _P, _P]),
    "sf_scatter_dense": (ctypes.c_int, [ctypes.c_int, _P, _I32P, _I64, _I64, _I64, _I64, _I64, _I64, _P, _P]),
    "sf_voxelize_workspace_size": (ctypes.c_int, [_I64, _I64, _I64, _I64, _SZP]),
    "sf_voxelize": (ctypes.c_int, [_P, _I64, _I64, _F32A, _F32A, _I64, _I64, _I64, _I64, _I64, ctypes.c_int,
                                   ctypes.c_int, _P, _I32P, _I32P, _I32P, _I64, _P, _SZ, _P]),
    "sf_spconv_out_shape": (ctypes.c_int, [_GEOM]),
    "sf_spconv_group_offsets": (ctypes.c_int, [ctypes.POINTER(_I64), _I32, _I32, ctypes.c_double, _I64, _I32,
                                               _PLAN]),
    "sf_spconv_sites_workspace_size": (ctypes.c_int, [_GEOM, _I64, _SZP]),
    "sf_spconv_out_sites": (ctypes.c_int, [_GEOM, _I32P, _I64, _I32P, _I64, _I32P, _P, _SZ, _P]),
    "sf_spconv_table_kind": (ctypes.c_int, [_GEOM, _I64]),
    "sf_spconv_map_workspace_size": (ctypes.c_int, [_GEOM, _I64, _I64, _SZP]),
    "sf_spconv_kernel_map": (ctypes.c_int, [_GEOM, _I32P, _I64, _I32P, _I64, _I32P, _I32P, _I64, _P, _SZ,
                                            _P]),
    "sf_spconv_plan_workspace_size": (ctypes.c_int, [_I64, _I32, _SZP]),
    "sf_spconv_plan": (ctypes.c_int, [_I32P, _I64, _I32, _I32, ctypes.c_double, _I64, _I32P, _PLAN, _P, _SZ,
                                      _P]),
    "sf_spconv_apply": (ctypes.c_int, [ctypes.c_int, _PLAN, _P, _I64, _I64, _P, _P, _I64, _I32P, _I32P, _I32,
                                       _P, _P, _P, _P]),
    "sf_spconv_implicit": (ctypes.c_int, [ctypes.c_int, _P, _I64, _P, _P, _I64, _I32P, _I64, _I32, _I32, _P,
                                          _P]),
    "sf_spconv_direct": (ctypes.c_int, [ctypes.c_int, _P, _I64, _P, _P, _I64, _I32P, _I64, _I32, _I32, _P,
                                        _P]),
    "sf_spinv_map_workspace_size": (ctypes.c_int, [_GEOM, _I64, _I64, _SZP]),
    "sf_spinv_kernel_map": (ctypes.c_int, [_GEOM, _I32P, _I64, _I32P, _I64, _I32P, _I64, _P, _SZ, _P]),
}


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Attach argument and result types to every exported launcher (missing symbol: AttributeError)."""
    for name, (restype, argtypes) in PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def float_array(values: list[float] | tuple[float, ...]) -> ctypes.Array:
    """float32 host array, rounded from Python floats exactly as torch.tensor(..., dtype=float32) does."""
    return (ctypes.c_float * len(values))(*[float(v) for v in values])


def geometry(spatial_shape, kernel_size, stride, padding, dilation, subm: bool,
             num_batches: int) -> ConvGeometry:
    """SfConvGeometry from the op's attributes (out_shape left for sf_spconv_out_shape)."""
    g = ConvGeometry()
    for name, values in (("spatial_shape", spatial_shape), ("kernel_size", kernel_size), ("stride", stride),
                         ("padding", padding), ("dilation", dilation)):
        getattr(g, name)[:] = [int(v) for v in values]
    g.subm = int(bool(subm))
    g.num_batches = int(num_batches)
    return g
