"""CPU CI for the native build: the kernels compile for sm_87 and sm_90 with nvcc (compile only),
the shared library exports the C ABI, and the pure-host launchers behave (no GPU needed).

The build takes minutes on 2 cores (one nvcc per arch per kernel file), hence `slow`. TensorRT is
kept out of this build (CMAKE_DISABLE_FIND_PACKAGE_TensorRT): the plugin library and its glue are
built and exercised against the real TensorRT headers in tests/plugins/test_trt_headers.py.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsefuse.plugins import cuda_abi as abi
from sparsefuse.plugins.sparse_conv3d.reference import output_spatial_shape

ROOT = Path(__file__).resolve().parents[2]
TOOLS = all(shutil.which(t) for t in ("nvcc", "cmake"))
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not TOOLS, reason="needs nvcc and cmake on PATH")]


def run_text(cmd: list[str]) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd[0]} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("cuda-build")
    configure = ["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_CUDA_ARCHITECTURES=87;90",
                 "-DCMAKE_DISABLE_FIND_PACKAGE_TensorRT=ON"]
    start = time.monotonic()
    run_text(configure)
    run_text(["cmake", "--build", str(build), "-j2"])
    print(f"cmake configure + build: {time.monotonic() - start:.0f} s")
    return build


@pytest.fixture(scope="module")
def built_lib(build_dir) -> Path:
    lib = build_dir / "lib" / abi.LIB_NAME
    assert lib.is_file()
    return lib


@pytest.fixture(scope="module")
def lib(built_lib) -> ctypes.CDLL:
    return abi.declare(ctypes.CDLL(str(built_lib)))


def test_library_exports_the_c_abi(built_lib):
    out = run_text(["nm", "-D", "--defined-only", str(built_lib)])
    exported = {line.split()[-1] for line in out.splitlines() if " T " in line}
    assert set(abi.PROTOTYPES) <= exported
    assert not any(name.startswith("_Z") and "sf" in name for name in exported), "C++ symbols leaked"


def test_library_holds_code_for_both_archs(built_lib):
    text = run_text(["strings", "-a", str(built_lib)])
    archs = {token for token in text.split() if token.startswith("sm_") and token[3:].isdigit()}
    assert {"sm_87", "sm_90"} <= archs
    assert not archs - {"sm_87", "sm_90"}, f"unexpected archs {archs}"
    sections = run_text(["readelf", "-S", str(built_lib)])
    assert ".nv_fatbin" in sections


def test_abi_version_and_status_strings(lib):
    assert lib.sf_abi_version() == abi.ABI_VERSION
    assert b"workspace" in lib.sf_status_string(-2)
    assert b"invalid" in lib.sf_status_string(-1)


@settings(max_examples=60, deadline=None)
@given(
    spatial=st.lists(st.integers(1, 40), min_size=3, max_size=3),
    kernel=st.lists(st.integers(1, 4), min_size=3, max_size=3),
    stride=st.lists(st.integers(1, 3), min_size=3, max_size=3),
    padding=st.lists(st.integers(0, 2), min_size=3, max_size=3),
    dilation=st.lists(st.integers(1, 2), min_size=3, max_size=3),
    subm=st.booleans(),
)
def test_out_shape_matches_reference(lib, spatial, kernel, stride, padding, dilation, subm):
    if subm:
        kernel = [k | 1 for k in kernel]
    g = abi.geometry(spatial, kernel, stride, padding, dilation, subm, 1)
    expected = output_spatial_shape(spatial, kernel, stride, padding, dilation, subm)
    status = lib.sf_spconv_out_shape(ctypes.byref(g))
    if min(expected) <= 0:
        assert status != 0
    else:
        assert status == 0 and list(g.out_shape) == expected


def plan_groups(lib, counts: list[int], center: int, epsilon: float, threshold: int) -> abi.ConvPlan:
    plan = abi.ConvPlan()
    arr = (ctypes.c_int64 * len(counts))(*counts)
    status = lib.sf_spconv_group_offsets(arr, len(counts), center, epsilon, threshold, 1000,
                                         ctypes.byref(plan))
    assert status == 0
    return plan


@settings(max_examples=100, deadline=None)
@given(counts=st.lists(st.integers(0, 5000), min_size=1, max_size=27), epsilon=st.floats(0, 1),
       threshold=st.integers(0, 10000), use_center=st.booleans())
def test_adaptive_grouping_invariants(lib, counts, epsilon, threshold, use_center):
    k = len(counts)
    center = k // 2 if use_center and k % 2 else -1
    plan = plan_groups(lib, counts, center, epsilon, threshold)
    groups = plan.groups()
    # Groups tile the offsets in order, contiguous, non-empty.
    assert [o for first, size, _ in groups for o in range(first, first + size)] == list(range(k))
    for first, size, batched in groups:
        members = list(range(first, first + size))
        if center in members:
            assert members == [center] and not batched
            continue
        sizes = [counts[o] for o in members]
        if size > 1 and max(sizes) > 0:
            assert 1 - sum(sizes) / (size * max(sizes)) <= epsilon + 1e-12
        assert batched == (size > 1 and max(sizes) < threshold)
    # Rows are compact in offset order; the centre's partial rows follow the gathered ones.
    rows = 0
    for o in range(k):
        if o == center:
            assert plan.base[o] == plan.total_gathered and plan.count[o] == 1000
            continue
        assert plan.base[o] == rows and plan.count[o] == counts[o]
        rows += counts[o]
    assert plan.total_gathered == rows


def test_grouping_special_cases(lib):
    counts = [10, 10, 12, 300, 290, 5, 5, 5, 0]
    assert len(plan_groups(lib, counts, -1, 1.0, 1 << 40).groups()) == 1  # dense: one group
    separate = plan_groups(lib, counts, -1, 0.5, 0).groups()
    assert not any(batched for _, _, batched in separate)  # S = 0: every offset its own GEMM
    strict = plan_groups(lib, counts, -1, 0.0, 1 << 40).groups()
    assert [(f, s) for f, s, _ in strict] == [(0, 2), (2, 1), (3, 1), (4, 1), (5, 3), (8, 1)]
