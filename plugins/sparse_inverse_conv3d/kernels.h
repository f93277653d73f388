/* SparseInverseConv3d CUDA launchers (C ABI). Semantics: plugins/sparse_inverse_conv3d/reference.py.
 *
 * Only the kernel map is specific to the inverse conv; the GEMM stages are SparseConv3d's
 * (sparse_conv3d/kernels.h), which take any nbr[M, K] map:
 *  1. sf_spinv_kernel_map: coarse sites into a table over the coarse grid (grid or hash, as
 *     sf_spconv_kernel_map), then from every fine site x and offset k the coarse site
 *     o = (x + p - k*d) / s when exactly divisible and inside the coarse grid: nbr[m, k] = its row or -1;
 *  2. sf_spconv_plan (center = -1) + sf_spconv_apply, or sf_spconv_implicit / sf_spconv_direct,
 *     with num_out = the fine sites' rows. Deterministic, no floating-point atomics.
 */
#ifndef SPARSEFUSE_SPARSE_INVERSE_CONV3D_KERNELS_H
#define SPARSEFUSE_SPARSE_INVERSE_CONV3D_KERNELS_H

#include <cuda_runtime_api.h>

#include "../sparse_conv3d/kernels.h"

/* g: the paired strided conv (spatial_shape = the FINE grid, subm = 0; num_batches as for
 * sf_spconv_kernel_map, 0 = unknown). The table is a grid when num_batches * coarse cells <=
 * max_grid_cells, else a hash. */
SF_API int sf_spinv_map_workspace_size(const SfConvGeometry* g, int64_t num_in, int64_t max_grid_cells,
                                       size_t* bytes);
/* coords [num_in, 4] int32: coarse sites (the paired conv's outputs); out_coords [num_out, 4] int32:
 * fine sites (its inputs); nbr [num_out, K] int32. */
SF_API int sf_spinv_kernel_map(const SfConvGeometry* g, const int32_t* coords, int64_t num_in,
                               const int32_t* out_coords, int64_t num_out, int32_t* nbr, int64_t max_grid_cells,
                               void* workspace, size_t workspace_bytes, cudaStream_t stream);

#endif
