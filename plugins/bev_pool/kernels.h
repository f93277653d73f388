/* BEVPool CUDA launcher (C ABI). Semantics: plugins/bev_pool/reference.py.
 *
 * bev[b, c, y, x] = sum over the points p of the interval of cell (b*Y + y)*X + x of
 * depth.flat[ranks_depth[p]] * feat.flat[ranks_feat[p]*C + c].
 * One thread per (interval, channel vector) reduces its interval in fp32 registers and writes
 * once (BEVFusion interval reduction, BEVPoolv2 inputs, no atomics, no materialized frustum).
 * Cells without an interval are zero. depth and feat share dtype (SF_FLOAT32 or SF_FLOAT16).
 */
#ifndef SPARSEFUSE_BEV_POOL_KERNELS_H
#define SPARSEFUSE_BEV_POOL_KERNELS_H

#include <cuda_runtime_api.h>

#include "../sf_abi.h"

SF_API int sf_bev_pool(int dtype, const void* depth, const void* feat, const int32_t* ranks_depth,
                       const int32_t* ranks_feat, const int32_t* ranks_bev, const int32_t* interval_starts,
                       const int32_t* interval_lengths, int64_t num_intervals, int64_t channels,
                       int64_t batch, int64_t bev_y, int64_t bev_x, void* bev, cudaStream_t stream);

#endif
