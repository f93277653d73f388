// SparseConv3d planning (see kernels.h): per-offset map sizes from one scan, one host copy of
// the K sizes, TorchSparse-style adaptive grouping of offsets, and the partial row of every pair.
#include <algorithm>
#include <cub/cub.cuh>

#include "../cuda_common.cuh"
#include "kernels.h"

namespace {

__global__ void plan_flags_kernel(const int32_t* __restrict__ nbr, int64_t m_rows, int32_t volume, int32_t center,
                                  int32_t* __restrict__ flags) {
  const int64_t total = m_rows * volume;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e <= total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (e == total) {
      flags[e] = 0;
      continue;
    }
    const int64_t k = e / m_rows;  // k-major so that one scan yields every offset's compact rows
    const int64_t m = e - k * m_rows;
    flags[e] = (k != center && nbr[m * volume + k] >= 0) ? 1 : 0;
  }
}

__global__ void plan_sidx_kernel(const int32_t* __restrict__ nbr, const int32_t* __restrict__ pos, int64_t m_rows,
                                 int32_t volume, int32_t center, int64_t center_base, int32_t* __restrict__ sidx) {
  const int64_t total = m_rows * volume;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = e / volume;
    const int64_t k = e - m * volume;
    int32_t row = -1;
    if (nbr[e] >= 0) row = k == center ? static_cast<int32_t>(center_base + m) : pos[k * m_rows + m];
    sidx[e] = row;
  }
}

}  // namespace

SF_API int sf_spconv_group_offsets(const int64_t* counts, int32_t kernel_volume, int32_t center, double epsilon,
                                   int64_t threshold, int32_t num_out, SfConvPlan* plan) {
  if (counts == nullptr || plan == nullptr || kernel_volume <= 0 || kernel_volume > SF_MAX_KERNEL_VOLUME ||
      center >= kernel_volume || num_out < 0)
    return SF_ERR_INVALID_ARGUMENT;
  plan->kernel_volume = kernel_volume;
  plan->center = center;
  plan->num_out = num_out;
  plan->num_groups = 0;
  int64_t rows = 0;
  for (int k = 0; k < kernel_volume; ++k) {
    if (counts[k] < 0) return SF_ERR_INVALID_ARGUMENT;
    plan->count[k] = k == center ? num_out : counts[k];
    plan->base[k] = rows;
    if (k != center) rows += counts[k];
  }
  plan->total_gathered = rows;
  if (center >= 0) plan->base[center] = rows;  // the centre's partial rows follow the gathered ones

  int64_t sum = 0, biggest = 0;
  int size = 0;
  auto close = [&](int last) {
    if (size == 0) return;
    const int g = plan->num_groups++;
    plan->group_first[g] = last - size + 1;
    plan->group_size[g] = size;
    plan->group_batched[g] = (size > 1 && biggest < threshold) ? 1 : 0;
    sum = biggest = 0;
    size = 0;
  };
  for (int k = 0; k < kernel_volume; ++k) {
    if (k == center) {
      close(k - 1);
      size = 1;
      biggest = sum = num_out;
      close(k);
      continue;
    }
    if (size > 0) {
      const int64_t new_sum = sum + counts[k];
      const int64_t new_max = std::max(biggest, counts[k]);
      const double idle = new_max > 0 ? 1.0 - static_cast<double>(new_sum) / (static_cast<double>(size + 1) * new_max)
                                      : 0.0;
      if (idle > epsilon) close(k - 1);
    }
    sum += counts[k];
    biggest = std::max(biggest, counts[k]);
    ++size;
  }
  close(kernel_volume - 1);
  return SF_OK;
}

SF_API int sf_spconv_plan_workspace_size(int64_t num_out, int32_t kernel_volume, size_t* bytes) {
  if (bytes == nullptr || num_out < 0 || kernel_volume <= 0 || kernel_volume > SF_MAX_KERNEL_VOLUME)
    return SF_ERR_INVALID_ARGUMENT;
  const int64_t items = num_out * kernel_volume + 1;
  if (items > 2147483647LL) return SF_ERR_UNSUPPORTED;
  size_t scan_bytes = 0;
  cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, static_cast<const int32_t*>(nullptr),
                                static_cast<int32_t*>(nullptr), static_cast<int>(items));
  sf::Carver c(nullptr);
  c.take<int32_t>(items);
  c.take<int32_t>(items);
  c.take<char>(scan_bytes);
  *bytes = c.used();
  return SF_OK;
}

SF_API int sf_spconv_plan(const int32_t* nbr, int64_t num_out, int32_t kernel_volume, int32_t center,
                          double epsilon, int64_t threshold, int32_t* sidx, SfConvPlan* plan, void* workspace,
                          size_t workspace_bytes, cudaStream_t stream) {
  size_t need = 0;
  SF_CHECK_STATUS(sf_spconv_plan_workspace_size(num_out, kernel_volume, &need));
  if (plan == nullptr || center >= kernel_volume || num_out > 2147483647LL) return SF_ERR_INVALID_ARGUMENT;
  int64_t counts[SF_MAX_KERNEL_VOLUME] = {0};
  if (num_out == 0)
    return sf_spconv_group_offsets(counts, kernel_volume, center, epsilon, threshold, 0, plan);
  if (nbr == nullptr || sidx == nullptr || workspace == nullptr) return SF_ERR_INVALID_ARGUMENT;
  if (workspace_bytes < need) return SF_ERR_WORKSPACE_TOO_SMALL;
  const int64_t items = num_out * kernel_volume + 1;
  sf::Carver c(workspace);
  int32_t* flags = c.take<int32_t>(items);
  int32_t* pos = c.take<int32_t>(items);
  size_t scan_bytes = need - c.used();
  void* temp = c.take<char>(scan_bytes);
  const int threads = 256;
  plan_flags_kernel<<<sf::blocks_for(items, threads), threads, 0, stream>>>(nbr, num_out, kernel_volume, center, flags);
  SF_CHECK_STATUS(sf::launch_status());
  SF_CHECK_CUDA(cub::DeviceScan::ExclusiveSum(temp, scan_bytes, flags, pos, static_cast<int>(items), stream));
  // pos[k*M] is the first compact row of offset k; pos[K*M] the total. One strided copy, one sync.
  int32_t starts[SF_MAX_KERNEL_VOLUME + 1];
  SF_CHECK_CUDA(cudaMemcpy2DAsync(starts, sizeof(int32_t), pos, static_cast<size_t>(num_out) * sizeof(int32_t),
                                  sizeof(int32_t), static_cast<size_t>(kernel_volume) + 1, cudaMemcpyDeviceToHost,
                                  stream));
  SF_CHECK_CUDA(cudaStreamSynchronize(stream));
  for (int k = 0; k < kernel_volume; ++k) counts[k] = starts[k + 1] - starts[k];
  SF_CHECK_STATUS(sf_spconv_group_offsets(counts, kernel_volume, center, epsilon, threshold,
                                          static_cast<int32_t>(num_out), plan));
  plan_sidx_kernel<<<sf::blocks_for(num_out * kernel_volume, threads), threads, 0, stream>>>(
      nbr, pos, num_out, kernel_volume, center, plan->total_gathered, sidx);
  return sf::launch_status();
}
