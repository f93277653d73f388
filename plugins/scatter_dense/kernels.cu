// ScatterDense (see kernels.h): one thread per (row, channel); reads are coalesced along the
// channels of a row, writes land in the C*Z planes of the dense tensor.
#include "../cuda_common.cuh"
#include "kernels.h"

namespace {

template <typename T>
__global__ void scatter_dense_kernel(const T* __restrict__ features, const int32_t* __restrict__ coords,
                                     int64_t num_rows, int64_t channels, int64_t batch, int64_t gz,
                                     int64_t gy, int64_t gx, T* __restrict__ dense) {
  const int64_t total = num_rows * channels;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = e / channels;
    const int64_t c = e - n * channels;
    const int64_t b = coords[n * 4], z = coords[n * 4 + 1], y = coords[n * 4 + 2], x = coords[n * 4 + 3];
    if (b < 0 || b >= batch || z < 0 || z >= gz || y < 0 || y >= gy || x < 0 || x >= gx) continue;
    dense[(((b * channels + c) * gz + z) * gy + y) * gx + x] = features[e];
  }
}

}  // namespace

SF_API int sf_scatter_dense(int dtype, const void* features, const int32_t* coords, int64_t num_rows,
                            int64_t channels, int64_t batch, int64_t grid_z, int64_t grid_y, int64_t grid_x,
                            void* dense, cudaStream_t stream) {
  if (num_rows < 0 || channels < 0 || batch < 0 || grid_z < 0 || grid_y < 0 || grid_x < 0 || dense == nullptr)
    return SF_ERR_INVALID_ARGUMENT;
  if (dtype != SF_FLOAT32 && dtype != SF_FLOAT16) return SF_ERR_INVALID_ARGUMENT;
  const size_t elem = dtype == SF_FLOAT32 ? 4 : 2;
  const size_t bytes = static_cast<size_t>(batch * channels * grid_z * grid_y * grid_x) * elem;
  SF_CHECK_CUDA(cudaMemsetAsync(dense, 0, bytes, stream));
  if (num_rows == 0 || channels == 0) return SF_OK;
  if (features == nullptr || coords == nullptr) return SF_ERR_INVALID_ARGUMENT;
  const int threads = 256;
  const unsigned blocks = sf::blocks_for(num_rows * channels, threads);
  if (dtype == SF_FLOAT32)
    scatter_dense_kernel<float><<<blocks, threads, 0, stream>>>(static_cast<const float*>(features), coords,
                                                                num_rows, channels, batch, grid_z, grid_y,
                                                                grid_x, static_cast<float*>(dense));
  else
    scatter_dense_kernel<__half><<<blocks, threads, 0, stream>>>(static_cast<const __half*>(features), coords,
                                                                 num_rows, channels, batch, grid_z, grid_y,
                                                                 grid_x, static_cast<__half*>(dense));
  return sf::launch_status();
}
