"""Conversion pass: third-party modules and functions -> sparsefuse ops, in a copy of the model.

One module per library: ``spconv.py`` (spconv 2.x convs, SparseSequential with BatchNorm1d / ReLU,
ToDense / ``.dense()``, sparse residual adds, PointToVoxel), ``voxelization.py`` (mmcv / mmdet3d-style
hard voxelization), ``bev_pool.py`` (BEVFusion / BEVDet-style ``bev_pool`` functions). Adding a
library is one more module listed in :data:`CONVERTERS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sparsefuse.passes.convert.base import (
    ConversionReport,
    ConversionRow,
    ConvertContext,
    Converter,
    run_converters,
)


def converters() -> list[Converter]:
    """The converters, in the order they run (imported lazily: spconv is optional)."""
    found: list[Converter] = []
    import importlib

    for name in CONVERTERS:
        module = importlib.import_module(f"sparsefuse.passes.convert.{name}")
        found.append(module.CONVERTER)
    return found


# Module names under passes/convert/, each exposing CONVERTER (a Converter).
CONVERTERS: tuple[str, ...] = ("voxelization", "bev_pool", "spconv")


def convert(
    model: torch.nn.Module,
    frames: Sequence[Mapping[str, torch.Tensor]] = (),
    options: Mapping[str, Any] | None = None,
) -> tuple[torch.nn.Module, ConversionReport]:
    """A converted copy of ``model`` (the original is untouched) and the report of what was
    converted and kept. Unsupported third-party modules raise SparsefuseError by path."""
    return run_converters(model, converters(), ConvertContext(tuple(frames), dict(options or {})))


__all__ = ["ConversionReport", "ConversionRow", "ConvertContext", "Converter", "convert", "converters"]
