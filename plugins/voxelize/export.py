"""Dynamo-export translation: ``torch.ops.sparsefuse.voxelize`` -> one ``sparsefuse::Voxelize`` node."""

from __future__ import annotations

import torch

from sparsefuse.plugins.onnx_helpers import custom_op
from sparsefuse.plugins.voxelize.reference import voxelize  # noqa: F401  (registers the torch op)
from sparsefuse.plugins.voxelize.schema import SPEC, register_schema


def voxelize_onnx(points, point_range: list[float], voxel_size: list[float], max_voxels: int):
    """Emit the node (three outputs; V is a symbolic dim)."""
    return custom_op(SPEC)(
        points,
        point_range=[float(v) for v in point_range],
        voxel_size=[float(v) for v in voxel_size],
        max_voxels=int(max_voxels),
    )


def translation_table() -> dict:
    """``{torch op overload: translation}`` for ``torch.onnx.export(custom_translation_table=...)``."""
    register_schema()
    return {torch.ops.sparsefuse.voxelize.default: voxelize_onnx}
