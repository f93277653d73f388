// BEVPool interval reduction (see kernels.h). Threads of one block cover a run of consecutive
// intervals; partial results are staged in shared memory so that the NCHW store walks
// consecutive cells of one channel (consecutive intervals are consecutive non-empty cells).
#include "../cuda_common.cuh"
#include "kernels.h"

namespace {

template <typename T, int VEC>
__global__ void bev_pool_kernel(const T* __restrict__ depth, const T* __restrict__ feat,
                                const int32_t* __restrict__ ranks_depth, const int32_t* __restrict__ ranks_feat,
                                const int32_t* __restrict__ ranks_bev, const int32_t* __restrict__ starts,
                                const int32_t* __restrict__ lengths, int64_t num_intervals, int channels,
                                int64_t cells_per_batch, T* __restrict__ bev) {
  extern __shared__ float tile[];  // [intervals per block][channels]
  const int per_block = blockDim.y;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * per_block;
  const int local = threadIdx.y;
  const int64_t interval = first + local;
  const int groups = channels / VEC;
  if (interval < num_intervals) {
    const int begin = starts[interval];
    const int end = begin + lengths[interval];
    for (int g = threadIdx.x; g < groups; g += blockDim.x) {
      float acc[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) acc[v] = 0.f;
      // Consecutive points of one feature pixel (the same ray at neighbouring depth bins, when the
      // ranks are ordered that way) share one feature load: sum their depth weights first.
      int32_t row = -1;
      float weight = 0.f;
      for (int p = begin; p <= end; ++p) {
        const int32_t next = p < end ? ranks_feat[p] : -1;
        if (next != row && row >= 0) {
          const auto f = *reinterpret_cast<const sf::Pack<T, VEC>*>(feat + static_cast<int64_t>(row) * channels +
                                                                    g * VEC);
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc[v] = fmaf(weight, sf::to_float(f.v[v]), acc[v]);
          weight = 0.f;
        }
        if (p < end) weight += sf::to_float(depth[ranks_depth[p]]);
        row = next;
      }
#pragma unroll
      for (int v = 0; v < VEC; ++v) tile[local * channels + g * VEC + v] = acc[v];
    }
  }
  __syncthreads();
  const int64_t rest = num_intervals - first;
  const int count = static_cast<int>(rest < per_block ? rest : per_block);
  const int threads = blockDim.x * blockDim.y;
  for (int e = threadIdx.y * blockDim.x + threadIdx.x; e < count * channels; e += threads) {
    const int i = e % count;
    const int c = e / count;
    const int64_t rank = ranks_bev[starts[first + i]];
    const int64_t b = rank / cells_per_batch;
    const int64_t cell = rank - b * cells_per_batch;
    bev[(b * channels + c) * cells_per_batch + cell] = sf::from_float<T>(tile[i * channels + c]);
  }
}

template <typename T, int VEC>
int launch(const T* depth, const T* feat, const int32_t* rd, const int32_t* rf, const int32_t* rb,
           const int32_t* starts, const int32_t* lengths, int64_t num_intervals, int channels,
           int64_t cells, T* bev, cudaStream_t stream) {
  const int groups = channels / VEC;
  const int bx = groups < 256 ? groups : 256;
  int by = 256 / bx;
  if (by < 1) by = 1;
  while (by > 1 && static_cast<size_t>(by) * channels * sizeof(float) > 48 * 1024) by /= 2;
  const size_t smem = static_cast<size_t>(by) * channels * sizeof(float);
  if (smem > 48 * 1024) return SF_ERR_UNSUPPORTED;
  const int64_t blocks = (num_intervals + by - 1) / by;
  if (blocks > 2147483647LL) return SF_ERR_UNSUPPORTED;
  bev_pool_kernel<T, VEC><<<static_cast<unsigned>(blocks), dim3(bx, by), smem, stream>>>(
      depth, feat, rd, rf, rb, starts, lengths, num_intervals, channels, cells, bev);
  return sf::launch_status();
}

template <typename T>
int dispatch(const void* depth, const void* feat, const int32_t* rd, const int32_t* rf, const int32_t* rb,
             const int32_t* starts, const int32_t* lengths, int64_t num_intervals, int channels, int64_t cells,
             void* bev, cudaStream_t stream) {
  const T* d = static_cast<const T*>(depth);
  const T* f = static_cast<const T*>(feat);
  T* out = static_cast<T*>(bev);
  switch (sf::pick_vec<T>(channels, feat)) {
    case 8:
      return launch<T, 8>(d, f, rd, rf, rb, starts, lengths, num_intervals, channels, cells, out, stream);
    case 4:
      return launch<T, 4>(d, f, rd, rf, rb, starts, lengths, num_intervals, channels, cells, out, stream);
    case 2:
      return launch<T, 2>(d, f, rd, rf, rb, starts, lengths, num_intervals, channels, cells, out, stream);
    default:
      return launch<T, 1>(d, f, rd, rf, rb, starts, lengths, num_intervals, channels, cells, out, stream);
  }
}

}  // namespace

SF_API int sf_bev_pool(int dtype, const void* depth, const void* feat, const int32_t* ranks_depth,
                       const int32_t* ranks_feat, const int32_t* ranks_bev, const int32_t* interval_starts,
                       const int32_t* interval_lengths, int64_t num_intervals, int64_t channels, int64_t batch,
                       int64_t bev_y, int64_t bev_x, void* bev, cudaStream_t stream) {
  if (channels <= 0 || channels > (1 << 20) || batch < 0 || bev_y < 0 || bev_x < 0 || num_intervals < 0 ||
      bev == nullptr)
    return SF_ERR_INVALID_ARGUMENT;
  if (dtype != SF_FLOAT32 && dtype != SF_FLOAT16) return SF_ERR_INVALID_ARGUMENT;
  const size_t elem = dtype == SF_FLOAT32 ? 4 : 2;
  const int64_t cells = bev_y * bev_x;
  SF_CHECK_CUDA(cudaMemsetAsync(bev, 0, static_cast<size_t>(batch * channels * cells) * elem, stream));
  if (num_intervals == 0 || cells == 0) return SF_OK;
  if (depth == nullptr || feat == nullptr || ranks_depth == nullptr || ranks_feat == nullptr ||
      ranks_bev == nullptr || interval_starts == nullptr || interval_lengths == nullptr)
    return SF_ERR_INVALID_ARGUMENT;
  const int c = static_cast<int>(channels);
  if (dtype == SF_FLOAT32)
    return dispatch<float>(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths,
                           num_intervals, c, cells, bev, stream);
  return dispatch<__half>(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths,
                          num_intervals, c, cells, bev, stream);
}
