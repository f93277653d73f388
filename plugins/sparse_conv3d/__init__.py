"""SparseConv3d: spconv 2.x SubMConv3d / SparseConv3d semantics."""

from sparsefuse.plugins.sparse_conv3d.export import translation_table
from sparsefuse.plugins.sparse_conv3d.function import function_proto
from sparsefuse.plugins.sparse_conv3d.reference import (
    build_kernel_map,
    kernel_offsets,
    output_spatial_shape,
    sparse_conv3d,
)
from sparsefuse.plugins.sparse_conv3d.schema import OP_TYPE, SPEC, register_schema

__all__ = [
    "build_kernel_map",
    "kernel_offsets",
    "output_spatial_shape",
    "sparse_conv3d",
    "OP_TYPE",
    "SPEC",
    "function_proto",
    "register_schema",
    "translation_table",
]
