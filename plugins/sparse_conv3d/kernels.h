/* SparseConv3d CUDA launchers (C ABI). Semantics: plugins/sparse_conv3d/reference.py (spconv 2.x).
 *
 * Pipeline (TorchSparse-style, MLSys'22; thesis.md §3), one call per stage so that callers with
 * static allocation (TensorRT) and callers that allocate per call (torch) share the launchers:
 *  1. sf_spconv_out_sites (strided only): fused candidate generation (broadcast add, modular and
 *     boundary checks, 1-D keys) -> radix sort -> unique; output sites ordered by linear key.
 *  2. sf_spconv_kernel_map: input table (collision-free grid when the grid is small, open-
 *     addressing hash otherwise), then output-stationary map search nbr[m, k] = input row or -1.
 *  3. sf_spconv_plan: per-offset map sizes (one scan), host copy of the K sizes (ONE stream
 *     synchronization), adaptive grouping of offsets (epsilon, S), row of each pair in the
 *     gathered buffer.
 *  4. sf_spconv_apply: fused gather of all offsets (input-stationary for submanifold layers, by
 *     map symmetry), grouped GEMMs per offset (fp16 tensor cores via WMMA with fp32 accumulation,
 *     or fp32 SIMT), output-stationary scatter that reduces each output row over the offsets in
 *     fixed order in fp32 registers, adds the bias, applies the activation and writes once.
 *     Deterministic: no floating-point atomics anywhere.
 * sf_spconv_implicit is the one-kernel alternative (implicit GEMM on tensor cores, no staging, no
 * host sync); sf_spconv_direct the scalar fetch-on-demand kernel for tiny layers.
 */
#ifndef SPARSEFUSE_SPARSE_CONV3D_KERNELS_H
#define SPARSEFUSE_SPARSE_CONV3D_KERNELS_H

#include <cuda_runtime_api.h>

#include "../sf_abi.h"

#define SF_MAX_KERNEL_VOLUME 343 /* 7x7x7 */
#define SF_ACT_NONE 0
#define SF_ACT_RELU 1

typedef struct SfConvGeometry {
  int32_t spatial_shape[3]; /* input grid (Z, Y, X) */
  int32_t out_shape[3];     /* output grid, filled by sf_spconv_out_shape */
  int32_t kernel_size[3];   /* (kz, ky, kx) */
  int32_t stride[3];
  int32_t padding[3];
  int32_t dilation[3];
  int32_t subm;        /* 1: submanifold (odd kernel), 0: regular conv */
  int32_t num_batches; /* upper bound of b + 1, or 0 when unknown (then: hash table, 63-bit keys) */
} SfConvGeometry;

/* Host-side result of sf_spconv_plan / sf_spconv_group_offsets. */
typedef struct SfConvPlan {
  int32_t kernel_volume;
  int32_t center;     /* submanifold centre offset (identity map, never gathered), or -1 */
  int32_t num_groups; /* offsets are batched in contiguous groups */
  int32_t num_out;
  int64_t total_gathered; /* rows of the gathered buffer; partial rows = this + (center >= 0 ? num_out : 0) */
  int64_t count[SF_MAX_KERNEL_VOLUME]; /* map size per offset */
  int64_t base[SF_MAX_KERNEL_VOLUME];  /* first row of each offset in the gathered / partial buffers */
  int32_t group_first[SF_MAX_KERNEL_VOLUME];
  int32_t group_size[SF_MAX_KERNEL_VOLUME];
  int32_t group_batched[SF_MAX_KERNEL_VOLUME]; /* 1: one grouped launch (bmm), 0: one launch per offset (mm) */
} SfConvPlan;

/* Fills g->out_shape; pure host code. */
SF_API int sf_spconv_out_shape(SfConvGeometry* g);

/* Adaptive grouping (pure host code): contiguous offsets share a group while the idle share of its
 * tiles, 1 - sum(count) / (size * max(count)), stays <= epsilon; a group whose largest map is
 * smaller than `threshold` rows runs as one grouped launch, else one launch per offset. The
 * centre offset (or -1) always forms its own group. Fills count, base (compact), groups. */
SF_API int sf_spconv_group_offsets(const int64_t* counts, int32_t kernel_volume, int32_t center, double epsilon,
                                   int64_t threshold, int32_t num_out, SfConvPlan* plan);

SF_API int sf_spconv_sites_workspace_size(const SfConvGeometry* g, int64_t num_in, size_t* bytes);
/* Strided conv: writes out_coords rows [0, M) (capacity >= num_in * kernel volume suffices) and M to
 * the device scalar num_out. */
SF_API int sf_spconv_out_sites(const SfConvGeometry* g, const int32_t* coords, int64_t num_in,
                               int32_t* out_coords, int64_t capacity, int32_t* num_out, void* workspace,
                               size_t workspace_bytes, cudaStream_t stream);

/* Input table kind: 1 = grid when num_batches > 0 and num_batches*Z*Y*X <= max_grid_cells, else 0 = hash. */
SF_API int sf_spconv_table_kind(const SfConvGeometry* g, int64_t max_grid_cells);
SF_API int sf_spconv_map_workspace_size(const SfConvGeometry* g, int64_t num_in, int64_t max_grid_cells,
                                        size_t* bytes);
/* nbr[m, k] for rows m < (num_out_dev ? *num_out_dev : num_out_rows); subm: out_coords = coords. */
SF_API int sf_spconv_kernel_map(const SfConvGeometry* g, const int32_t* coords, int64_t num_in,
                                const int32_t* out_coords, int64_t num_out_rows, const int32_t* num_out_dev,
                                int32_t* nbr, int64_t max_grid_cells, void* workspace, size_t workspace_bytes,
                                cudaStream_t stream);

SF_API int sf_spconv_plan_workspace_size(int64_t num_out, int32_t kernel_volume, size_t* bytes);
/* Synchronizes `stream` once (to read the K map sizes). sidx[m, k] = partial row or -1. */
SF_API int sf_spconv_plan(const int32_t* nbr, int64_t num_out, int32_t kernel_volume, int32_t center,
                          double epsilon, int64_t threshold, int32_t* sidx, SfConvPlan* plan, void* workspace,
                          size_t workspace_bytes, cudaStream_t stream);

/* gathered: [plan.total_gathered, cin]; partial: [plan.total_gathered + (center >= 0 ? M : 0), cout];
 * weight [cout, K, cin]; bias [cout] or NULL; out [M, cout]. All of dtype. */
SF_API int sf_spconv_apply(int dtype, const SfConvPlan* plan, const void* features, int64_t num_in, int64_t cin,
                           const void* weight, const void* bias, int64_t cout, const int32_t* nbr,
                           const int32_t* sidx, int32_t activation, void* gathered, void* partial, void* out,
                           cudaStream_t stream);

/* Implicit GEMM (one kernel, no staging, no host sync): output-stationary 64x64 tiles accumulate over
 * the offsets in fixed order, gathering input rows through nbr into shared memory; fp16 tensor cores
 * (WMMA) with fp32 accumulation, or fp32 SIMT. Same result contract as sf_spconv_apply. */
SF_API int sf_spconv_implicit(int dtype, const void* features, int64_t cin, const void* weight, const void* bias,
                              int64_t cout, const int32_t* nbr, int64_t num_out, int32_t kernel_volume,
                              int32_t activation, void* out, cudaStream_t stream);

/* Fetch-on-demand: out[m, o] = act(bias[o] + sum_k sum_c features[nbr[m,k], c] * weight[o, k, c]). */
SF_API int sf_spconv_direct(int dtype, const void* features, int64_t cin, const void* weight, const void* bias,
                            int64_t cout, const int32_t* nbr, int64_t num_out, int32_t kernel_volume,
                            int32_t activation, void* out, cudaStream_t stream);

#endif
