"""Skip `gpu` tests without CUDA and `tensorrt` tests without TensorRT + a working CUDA device.

TensorRT is probed in a subprocess: a failed CUDA initialisation can crash the process.
"""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest

_TENSORRT_PROBE = (
    "import tensorrt, torch; torch.cuda.init(); assert torch.cuda.device_count() > 0; "
    "tensorrt.Builder(tensorrt.Logger(tensorrt.Logger.ERROR))"
)


@functools.cache
def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.cache
def _tensorrt_available() -> bool:
    try:
        probe = subprocess.run([sys.executable, "-c", _TENSORRT_PROBE], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "gpu" in item.keywords and not _cuda_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "tensorrt" in item.keywords and not _tensorrt_available():
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and a CUDA device that initializes"))
