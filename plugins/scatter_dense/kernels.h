/* ScatterDense CUDA launcher (C ABI). Semantics: plugins/scatter_dense/reference.py.
 *
 * dense[b, c*Z + z, y, x] = features[n, c] for coords[n] = (b, z, y, x); zero elsewhere.
 * Rows whose coordinates fall outside [0,B)x[0,Z)x[0,Y)x[0,X) are skipped. Coordinates are
 * unique by contract (with duplicates the surviving row is unspecified).
 */
#ifndef SPARSEFUSE_SCATTER_DENSE_KERNELS_H
#define SPARSEFUSE_SCATTER_DENSE_KERNELS_H

#include <cuda_runtime_api.h>

#include "../sf_abi.h"

SF_API int sf_scatter_dense(int dtype, const void* features, const int32_t* coords, int64_t num_rows,
                            int64_t channels, int64_t batch, int64_t grid_z, int64_t grid_y, int64_t grid_x,
                            void* dense, cudaStream_t stream);

#endif
