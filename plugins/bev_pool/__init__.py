"""BEVPool: lift-splat pooling of camera features into BEV over precomputed ranks."""

from sparsefuse.plugins.bev_pool.reference import bev_pool

__all__ = ["bev_pool"]
