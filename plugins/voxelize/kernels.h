/* Voxelize CUDA launchers (C ABI). Semantics: plugins/voxelize/reference.py.
 *
 * index = floor((p - min) / size) per axis in float32 with correctly rounded subtraction and
 * division (__fsub_rn / __fdiv_rn, no fast-math), points outside the grid dropped. Voxels are
 * ordered by linear key z*Y*X + y*X + x (b = 0; order = SF_VOXEL_ORDER_KEY) or by their first
 * point in input order (SF_VOXEL_ORDER_ARRIVAL, spconv / mmcv hard voxelization); the first
 * max_voxels voxels are kept. max_points_per_voxel > 0 counts only each voxel's first that many
 * points (input order); 0 counts all. SF_VOXEL_REDUCE_MEAN averages every feature column over the
 * counted points (summed in input order, divided once): voxel_features [capacity, F];
 * SF_VOXEL_REDUCE_NONE copies them, zero-padded: voxel_features [capacity, max_points_per_voxel, F].
 *
 * Two-phase outputs in the TensorRT style: voxel_features / voxel_coords / num_points_per_voxel are
 * allocated with `capacity` rows (an upper bound, >= min(max_voxels, num_points)); the launcher
 * writes the first V rows and the count V to the device scalar num_voxels. num_points_per_voxel
 * (int32 [capacity], counted points per voxel) may be NULL.
 */
#ifndef SPARSEFUSE_VOXELIZE_KERNELS_H
#define SPARSEFUSE_VOXELIZE_KERNELS_H

#include <cuda_runtime_api.h>

#include "../sf_abi.h"

#define SF_VOXEL_REDUCE_MEAN 0
#define SF_VOXEL_REDUCE_NONE 1
#define SF_VOXEL_ORDER_KEY 0
#define SF_VOXEL_ORDER_ARRIVAL 1

/* Workspace bytes needed by sf_voxelize for num_points points on a (Z, Y, X) grid (any mode). */
SF_API int sf_voxelize_workspace_size(int64_t num_points, int64_t grid_z, int64_t grid_y, int64_t grid_x,
                                      size_t* bytes);

/* point_range (xmin, ymin, zmin, xmax, ymax, zmax) and voxel_size (vx, vy, vz) are host arrays in
 * float32; grid_* come from round((max - min) / size) in double, as the reference computes them.
 * reduce: SF_VOXEL_REDUCE_*; SF_VOXEL_REDUCE_NONE needs max_points_per_voxel > 0. order: SF_VOXEL_ORDER_*. */
SF_API int sf_voxelize(const float* points, int64_t num_points, int64_t num_features, const float* point_range,
                       const float* voxel_size, int64_t grid_z, int64_t grid_y, int64_t grid_x,
                       int64_t max_voxels, int64_t max_points_per_voxel, int reduce, int order,
                       float* voxel_features, int32_t* voxel_coords, int32_t* num_voxels,
                       int32_t* num_points_per_voxel, int64_t capacity, void* workspace, size_t workspace_bytes,
                       cudaStream_t stream);

#endif
