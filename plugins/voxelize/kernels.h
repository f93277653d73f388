/* Voxelize CUDA launchers (C ABI). Semantics: plugins/voxelize/reference.py.
 *
 * index = floor((p - min) / size) per axis in float32 with correctly rounded subtraction and
 * division (__fsub_rn / __fdiv_rn, no fast-math), points outside the grid dropped, voxels
 * ordered by linear key z*Y*X + y*X + x (b = 0), the first max_voxels voxels kept, every
 * feature column averaged over the voxel's points (summed in input order, divided once).
 *
 * Two-phase outputs in the TensorRT style: voxel_features / voxel_coords are allocated with
 * `capacity` rows (an upper bound, >= min(max_voxels, num_points)); the launcher writes the
 * first V rows and the count V to the device scalar num_voxels.
 */
#ifndef SPARSEFUSE_VOXELIZE_KERNELS_H
#define SPARSEFUSE_VOXELIZE_KERNELS_H

#include <cuda_runtime_api.h>

#include "../sf_abi.h"

/* Workspace bytes needed by sf_voxelize for num_points points on a (Z, Y, X) grid. */
SF_API int sf_voxelize_workspace_size(int64_t num_points, int64_t grid_z, int64_t grid_y, int64_t grid_x,
                                      size_t* bytes);

/* point_range (xmin, ymin, zmin, xmax, ymax, zmax) and voxel_size (vx, vy, vz) are host arrays in
 * float32; grid_* come from round((max - min) / size) in double, as the reference computes them. */
SF_API int sf_voxelize(const float* points, int64_t num_points, int64_t num_features, const float* point_range,
                       const float* voxel_size, int64_t grid_z, int64_t grid_y, int64_t grid_x,
                       int64_t max_voxels, float* voxel_features, int32_t* voxel_coords, int32_t* num_voxels,
                       int64_t capacity, void* workspace, size_t workspace_bytes, cudaStream_t stream);

#endif
