"""Voxelize: points[P,F] -> mean voxel features or hard-voxelization point lists, (b,z,y,x) coords,
voxel count, optional points per voxel."""

from sparsefuse.plugins.voxelize.export import translation_table
from sparsefuse.plugins.voxelize.function import function_proto
from sparsefuse.plugins.voxelize.reference import grid_shape, voxelize, voxelize_with_counts
from sparsefuse.plugins.voxelize.schema import OP_TYPE, SPEC, register_schema

__all__ = [
    "grid_shape",
    "voxelize",
    "voxelize_with_counts",
    "OP_TYPE",
    "SPEC",
    "function_proto",
    "register_schema",
    "translation_table",
]
