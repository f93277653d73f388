"""BEVPool: lift-splat pooling of camera features into BEV over precomputed ranks."""

from sparsefuse.plugins.bev_pool.export import translation_table
from sparsefuse.plugins.bev_pool.function import function_proto
from sparsefuse.plugins.bev_pool.reference import bev_pool
from sparsefuse.plugins.bev_pool.schema import OP_TYPE, SPEC, register_schema

__all__ = [
    "bev_pool",
    "OP_TYPE",
    "SPEC",
    "function_proto",
    "register_schema",
    "translation_table",
]
