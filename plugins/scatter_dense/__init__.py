"""ScatterDense: sparse voxels -> dense BEV with height folded into channels."""

from sparsefuse.plugins.scatter_dense.reference import scatter_dense

__all__ = ["scatter_dense"]
