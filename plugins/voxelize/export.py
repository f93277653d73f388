"""Dynamo-export translation: ``torch.ops.sparsefuse.voxelize`` (three outputs) and
``torch.ops.sparsefuse.voxelize_with_counts`` (four) -> one ``sparsefuse::Voxelize`` node."""

from __future__ import annotations

import torch

from sparsefuse.plugins.onnx_helpers import custom_op
from sparsefuse.plugins.voxelize.reference import voxelize  # noqa: F401  (registers the torch ops)
from sparsefuse.plugins.voxelize.schema import SPEC, register_schema


def _attributes(point_range, voxel_size, max_voxels, max_points_per_voxel, reduce, order) -> dict:
    """Node attributes (the exporter writes the defaulted ones too)."""
    return {
        "point_range": [float(v) for v in point_range],
        "voxel_size": [float(v) for v in voxel_size],
        "max_voxels": int(max_voxels),
        "max_points_per_voxel": int(max_points_per_voxel),
        "reduce": str(reduce),
        "order": str(order),
    }


def voxelize_onnx(points, point_range: list[float], voxel_size: list[float], max_voxels: int,
                  max_points_per_voxel: int = 0, reduce: str = "mean", order: str = "key"):
    """Emit the node (V is a symbolic dim). The node lists all four schema outputs, the fourth unused:
    the exporter gives a node every output of its schema."""
    attrs = _attributes(point_range, voxel_size, max_voxels, max_points_per_voxel, reduce, order)
    return custom_op(SPEC)(points, **attrs)[:3]


def voxelize_with_counts_onnx(points, point_range: list[float], voxel_size: list[float], max_voxels: int,
                              max_points_per_voxel: int = 0, reduce: str = "mean", order: str = "key"):
    """Emit the node with its fourth output num_points_per_voxel."""
    attrs = _attributes(point_range, voxel_size, max_voxels, max_points_per_voxel, reduce, order)
    return custom_op(SPEC)(points, **attrs)


def translation_table() -> dict:
    """``{torch op overload: translation}`` for ``torch.onnx.export(custom_translation_table=...)``."""
    register_schema()
    return {
        torch.ops.sparsefuse.voxelize.default: voxelize_onnx,
        torch.ops.sparsefuse.voxelize_with_counts.default: voxelize_with_counts_onnx,
    }
