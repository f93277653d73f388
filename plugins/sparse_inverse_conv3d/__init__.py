"""SparseInverseConv3d: spconv 2.x SparseInverseConv3d (indice_key) semantics."""

from sparsefuse.plugins.sparse_inverse_conv3d.export import translation_table
from sparsefuse.plugins.sparse_inverse_conv3d.function import function_proto
from sparsefuse.plugins.sparse_inverse_conv3d.reference import (
    build_inverse_kernel_map,
    coarse_shape,
    sparse_inverse_conv3d,
)
from sparsefuse.plugins.sparse_inverse_conv3d.schema import OP_TYPE, SPEC, register_schema

__all__ = [
    "build_inverse_kernel_map",
    "coarse_shape",
    "sparse_inverse_conv3d",
    "OP_TYPE",
    "SPEC",
    "function_proto",
    "register_schema",
    "translation_table",
]
