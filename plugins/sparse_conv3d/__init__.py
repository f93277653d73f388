"""SparseConv3d: spconv 2.x SubMConv3d / SparseConv3d semantics."""

from sparsefuse.plugins.sparse_conv3d.reference import (
    build_kernel_map,
    kernel_offsets,
    output_spatial_shape,
    sparse_conv3d,
)

__all__ = ["build_kernel_map", "kernel_offsets", "output_spatial_shape", "sparse_conv3d"]
