"""ScatterDense: sparse voxels -> dense BEV with height folded into channels."""

from sparsefuse.plugins.scatter_dense.export import translation_table
from sparsefuse.plugins.scatter_dense.function import function_proto
from sparsefuse.plugins.scatter_dense.reference import scatter_dense
from sparsefuse.plugins.scatter_dense.schema import OP_TYPE, SPEC, register_schema

__all__ = [
    "scatter_dense",
    "OP_TYPE",
    "SPEC",
    "function_proto",
    "register_schema",
    "translation_table",
]
