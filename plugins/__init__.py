"""Custom ops, one folder each (docs/design.md §4). Importing this package registers the
``sparsefuse::*`` torch ops."""

from sparsefuse.plugins import bev_pool, scatter_dense, sparse_conv3d, sparse_inverse_conv3d, voxelize
from sparsefuse.plugins.common import DOMAIN, OPSET_VERSION

OP_TYPES = {
    "Voxelize": voxelize,
    "SparseConv3d": sparse_conv3d,
    "SparseInverseConv3d": sparse_inverse_conv3d,
    "ScatterDense": scatter_dense,
    "BEVPool": bev_pool,
}

__all__ = ["DOMAIN", "OPSET_VERSION", "OP_TYPES"]
