"""Fixtures for the targets tests."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx_toys import conv_stack_model


@pytest.fixture
def toy_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "toy.onnx"
    onnx.save(conv_stack_model(), str(path))
    return path
