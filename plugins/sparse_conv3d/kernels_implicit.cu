// SparseConv3d implicit GEMM (see kernels.h, sf_spconv_implicit): output-stationary tiles of 64
// output rows x 64 output channels accumulate over the kernel offsets in fixed order, gathering
// their input rows through nbr[m, k] straight into shared memory. No staging buffers, no host
// synchronization, no atomics (deterministic). Offsets with no pair in a tile are skipped.
#include <mma.h>

#include "../cuda_common.cuh"
#include "kernels.h"
#include "gemm_tile.cuh"

namespace {

constexpr int kBM = 64, kBN = 64;

template <typename T>
__device__ __forceinline__ void epilogue(float v, int64_t r, int o, const T* bias, int cout, int activation,
                                         T* out) {
  if (bias != nullptr) v += sf::to_float(bias[o]);
  if (activation == SF_ACT_RELU) v = fmaxf(v, 0.f);
  out[r * cout + o] = sf::from_float<T>(v);
}

// fp16 tensor cores (WMMA 16x16x16, fp32 accumulators), 4 warps x (32x32).
template <bool VEC8>
__global__ void __launch_bounds__(128) implicit_wmma(const __half* __restrict__ x, int cin,
                                                     const __half* __restrict__ w, const __half* __restrict__ bias,
                                                     int cout, const int32_t* __restrict__ nbr, int64_t m_rows,
                                                     int volume, int activation, __half* __restrict__ out) {
  using namespace nvcuda;
  constexpr int BK = 32, LDS = BK + 8, LDC = kBN + 4;
  __shared__ __align__(32) __half as[kBM * LDS];
  __shared__ __align__(32) __half bs[kBN * LDS];
  __shared__ __align__(32) float cs[kBM * LDC];
  __shared__ int32_t rows[kBM];
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int col0 = blockIdx.y * kBN;
  const int tid = threadIdx.x, warp = tid / 32, wm = warp / 2, wn = warp % 2;
  const int64_t ldw = static_cast<int64_t>(volume) * cin;
  const __half zero = __float2half(0.f);
  sf_wmma::Acc acc[2][2];
  sf_wmma::zero(acc);
  for (int k = 0; k < volume; ++k) {
    bool mine = false;
    if (tid < kBM) {
      const int64_t r = row0 + tid;
      rows[tid] = r < m_rows ? nbr[r * volume + k] : -1;
      mine = rows[tid] >= 0;
    }
    if (!__syncthreads_or(mine)) continue;  // block-uniform: no pair of this offset in the tile
    const __half* wk = w + static_cast<int64_t>(k) * cin;
    for (int kk = 0; kk < cin; kk += BK) {
      if (VEC8) {
        using P = sf::Pack<__half, 8>;
        for (int e = tid; e < kBM * BK / 8; e += 128) {
          const int r = e / (BK / 8), c = (e % (BK / 8)) * 8;
          const int gc = kk + c;
          const int32_t j = rows[r];
          const P va = sf::load_or_zero<__half, 8>(x + static_cast<int64_t>(j) * cin + gc, j >= 0 && gc < cin, zero);
          const int go = col0 + r;
          const P vb = sf::load_or_zero<__half, 8>(wk + go * ldw + gc, go < cout && gc < cin, zero);
          *reinterpret_cast<P*>(as + r * LDS + c) = va;
          *reinterpret_cast<P*>(bs + r * LDS + c) = vb;
        }
      } else {
        for (int e = tid; e < kBM * BK; e += 128) {
          const int r = e / BK, c = e % BK;
          const int gc = kk + c;
          const int32_t j = rows[r];
          as[r * LDS + c] = (j >= 0 && gc < cin) ? x[static_cast<int64_t>(j) * cin + gc] : zero;
          const int go = col0 + r;
          bs[r * LDS + c] = (go < cout && gc < cin) ? wk[go * ldw + gc] : zero;
        }
      }
      __syncthreads();
      sf_wmma::mma_k_block<BK, LDS>(acc, as, bs, wm, wn);
      __syncthreads();
    }
  }
  sf_wmma::store<LDC>(cs, acc, wm, wn);
  __syncthreads();
  for (int e = tid; e < kBM * kBN; e += 128) {
    const int r = e / kBN, o = e % kBN;
    const int64_t gr = row0 + r;
    if (gr < m_rows && col0 + o < cout) epilogue<__half>(cs[r * LDC + o], gr, col0 + o, bias, cout, activation, out);
  }
}

// fp32 (SIMT, fp32 FMA), 256 threads x 4x4 outputs.
template <typename T>
__global__ void __launch_bounds__(256) implicit_simt(const T* __restrict__ x, int cin, const T* __restrict__ w,
                                                     const T* __restrict__ bias, int cout,
                                                     const int32_t* __restrict__ nbr, int64_t m_rows, int volume,
                                                     int activation, T* __restrict__ out) {
  constexpr int BK = 16;
  __shared__ float as[BK][kBM + 4];
  __shared__ float bs[BK][kBN + 4];
  __shared__ int32_t rows[kBM];
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int col0 = blockIdx.y * kBN;
  const int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
  const int64_t ldw = static_cast<int64_t>(volume) * cin;
  float acc[4][4] = {};
  for (int k = 0; k < volume; ++k) {
    bool mine = false;
    if (tid < kBM) {
      const int64_t r = row0 + tid;
      rows[tid] = r < m_rows ? nbr[r * volume + k] : -1;
      mine = rows[tid] >= 0;
    }
    if (!__syncthreads_or(mine)) continue;
    const T* wk = w + static_cast<int64_t>(k) * cin;
    for (int kk = 0; kk < cin; kk += BK) {
      for (int e = tid; e < kBM * BK; e += 256) {
        const int r = e / BK, c = e % BK;
        const int gc = kk + c;
        const int32_t j = rows[r];
        as[c][r] = (j >= 0 && gc < cin) ? sf::to_float(x[static_cast<int64_t>(j) * cin + gc]) : 0.f;
        const int go = col0 + r;
        bs[c][r] = (go < cout && gc < cin) ? sf::to_float(wk[go * ldw + gc]) : 0.f;
      }
      __syncthreads();
      sf_simt::fma_k_block<BK, kBM + 4>(acc, as, bs, tr, tc);
      __syncthreads();
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = row0 + tr * 4 + i;
    if (r >= m_rows) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int o = col0 + tc * 4 + j;
      if (o < cout) epilogue<T>(acc[i][j], r, o, bias, cout, activation, out);
    }
  }
}

}  // namespace

SF_API int sf_spconv_implicit(int dtype, const void* features, int64_t cin, const void* weight, const void* bias,
                              int64_t cout, const int32_t* nbr, int64_t num_out, int32_t kernel_volume,
                              int32_t activation, void* out, cudaStream_t stream) {
  if (cin <= 0 || cout <= 0 || cin > (1 << 20) || cout > (1 << 20) || num_out < 0 || kernel_volume <= 0 ||
      kernel_volume > SF_MAX_KERNEL_VOLUME || (activation != SF_ACT_NONE && activation != SF_ACT_RELU) ||
      (dtype != SF_FLOAT32 && dtype != SF_FLOAT16))
    return SF_ERR_INVALID_ARGUMENT;
  if (num_out == 0) return SF_OK;
  if (nbr == nullptr || weight == nullptr || out == nullptr || features == nullptr) return SF_ERR_INVALID_ARGUMENT;
  const int64_t row_tiles = (num_out + kBM - 1) / kBM;
  if (row_tiles > 2147483647LL) return SF_ERR_UNSUPPORTED;
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>((cout + kBN - 1) / kBN));
  const int ci = static_cast<int>(cin), co = static_cast<int>(cout);
  if (dtype == SF_FLOAT32) {
    implicit_simt<float><<<grid, 256, 0, stream>>>(static_cast<const float*>(features), ci,
                                                   static_cast<const float*>(weight), static_cast<const float*>(bias),
                                                   co, nbr, num_out, kernel_volume, activation,
                                                   static_cast<float*>(out));
  } else {
    const auto* x = static_cast<const __half*>(features);
    const auto* w = static_cast<const __half*>(weight);
    const auto* b = static_cast<const __half*>(bias);
    auto* o = static_cast<__half*>(out);
    if (ci % 8 == 0 && sf::aligned16(x) && sf::aligned16(w))
      implicit_wmma<true><<<grid, 128, 0, stream>>>(x, ci, w, b, co, nbr, num_out, kernel_volume, activation, o);
    else
      implicit_wmma<false><<<grid, 128, 0, stream>>>(x, ci, w, b, co, nbr, num_out, kernel_volume, activation, o);
  }
  return sf::launch_status();
}
