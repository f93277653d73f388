"""Voxelize: points[P,F] -> mean voxel features, (b,z,y,x) coords, voxel count."""

from sparsefuse.plugins.voxelize.reference import grid_shape, voxelize

__all__ = ["grid_shape", "voxelize"]
