"""The Python CUDA binding on a CPU-only machine: harmless import, clear errors, and the ctypes
declarations in sync with the C headers (the ABI cannot be exercised here without a GPU)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sparsefuse.errors import SparsefuseError
from sparsefuse.plugins import cuda as sfcuda
from sparsefuse.plugins import cuda_abi as abi

ROOT = Path(__file__).resolve().parents[2]
HEADERS = [ROOT / "plugins" / "sf_abi.h"] + sorted((ROOT / "plugins").glob("*/kernels.h"))


def header_functions() -> dict[str, int]:
    """SF_API function name -> number of parameters, from every kernels header."""
    found = {}
    for header in HEADERS:
        text = re.sub(r"/\*.*?\*/", "", header.read_text(), flags=re.S)
        for name, params in re.findall(r"SF_API\s+[\w\s\*]+?\b(sf_\w+)\s*\(([^)]*)\)", text):
            params = params.strip()
            found[name] = 0 if params in ("", "void") else params.count(",") + 1
    return found


def test_ctypes_prototypes_match_the_headers():
    functions = header_functions()
    assert set(functions) == set(abi.PROTOTYPES)
    for name, (_, argtypes) in abi.PROTOTYPES.items():
        assert len(argtypes) == functions[name], name


def struct_fields(name: str) -> list[str]:
    text = (ROOT / "plugins" / "sparse_conv3d" / "kernels.h").read_text()
    body = re.search(rf"typedef struct {name} \{{(.*?)\}} {name};", text, flags=re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    return re.findall(r"\b(\w+)(?:\[[^\]]*\])?\s*;", body)


def test_ctypes_structs_match_the_headers():
    assert struct_fields("SfConvGeometry") == [f for f, _ in abi.ConvGeometry._fields_]
    assert struct_fields("SfConvPlan") == [f for f, _ in abi.ConvPlan._fields_]
    header = (ROOT / "plugins" / "sparse_conv3d" / "kernels.h").read_text()
    assert f"#define SF_MAX_KERNEL_VOLUME {abi.MAX_KERNEL_VOLUME}" in header


def test_candidate_paths_order(tmp_path):
    paths = abi.candidate_paths({abi.LIB_ENV: "/x/lib.so"}, root=tmp_path)
    assert paths[0] == Path("/x/lib.so")
    assert paths[1] == tmp_path / "build" / "cuda" / "lib" / abi.LIB_NAME
    assert paths[-1].parent == ROOT / "plugins"
    assert abi.candidate_paths({}, root=tmp_path)[0] == tmp_path / "build" / "cuda" / "lib" / abi.LIB_NAME


def test_missing_explicit_library_is_a_user_error(tmp_path):
    with pytest.raises(SparsefuseError) as err:
        sfcuda.find_library({abi.LIB_ENV: str(tmp_path / "missing.so")})
    assert abi.LIB_ENV in err.value.message and "cmake" in err.value.hint


def test_import_is_harmless_and_load_explains_how_to_build(tmp_path):
    code = (
        "import sparsefuse.plugins.cuda as c\n"
        "assert c._state['lib'] is None and not c._state['registered']\n"
        "try:\n    c.load()\nexcept c.SparsefuseError as e:\n    print('ERR', e.one_line())\n"
    )
    env = {"PATH": "/usr/bin:/bin", abi.LIB_ENV: str(tmp_path / "nope.so")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ERR error:" in out.stdout and "cmake" in out.stdout


def test_unknown_algo_is_rejected():
    with pytest.raises(SparsefuseError):
        sfcuda.set_tuning(algo="fast")
    assert sfcuda.tuning().algo in ("auto", "gather_gemm_scatter", "direct")
