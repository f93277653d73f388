// SparseConv3d compute (see kernels.h): fused gather, grouped GEMMs, output-stationary scatter,
// and the fetch-on-demand direct kernel.
#include <mma.h>

#include "../cuda_common.cuh"
#include "kernels.h"
#include "gemm_tile.cuh"

namespace {

constexpr int kMaxBatch = 32;  // offsets per grouped launch

// ---- gather ---------------------------------------------------------------------------------

// Input-stationary gather for submanifold layers: input j is read once (one vector per thread)
// and written to every pair that uses it. By map symmetry, output m uses j through offset k
// exactly when nbr[j, K-1-k] = m.
template <typename T, int VEC>
__global__ void gather_input_stationary(const T* __restrict__ x, int64_t n, int cin, const int32_t* __restrict__ nbr,
                                        const int32_t* __restrict__ sidx, int volume, int center, T* __restrict__ g) {
  const int groups = cin / VEC;
  const int64_t total = n * groups;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = e / groups;
    const int cg = static_cast<int>(e - j * groups);
    using P = sf::Pack<T, VEC>;
    const P v = *reinterpret_cast<const P*>(x + j * cin + cg * VEC);
    for (int k = 0; k < volume; ++k) {
      if (k == center) continue;
      const int32_t m = nbr[j * volume + (volume - 1 - k)];
      if (m < 0) continue;
      const int32_t row = sidx[static_cast<int64_t>(m) * volume + k];
      if (row < 0) continue;  // only when j itself is not in the table (out-of-grid or duplicate coordinate)
      *reinterpret_cast<P*>(g + static_cast<int64_t>(row) * cin + cg * VEC) = v;
    }
  }
}

// Output-stationary gather for strided layers (no symmetry): one pass over all offsets.
template <typename T, int VEC>
__global__ void gather_output_stationary(const T* __restrict__ x, int64_t m_rows, int cin,
                                         const int32_t* __restrict__ nbr, const int32_t* __restrict__ sidx,
                                         int volume, T* __restrict__ g) {
  const int groups = cin / VEC;
  const int64_t total = m_rows * volume * groups;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pair = e / groups;
    const int cg = static_cast<int>(e - pair * groups);
    const int32_t j = nbr[pair];
    if (j < 0) continue;
    using P = sf::Pack<T, VEC>;
    *reinterpret_cast<P*>(g + static_cast<int64_t>(sidx[pair]) * cin + cg * VEC) =
        *reinterpret_cast<const P*>(x + static_cast<int64_t>(j) * cin + cg * VEC);
  }
}

// ---- grouped GEMM: C_b[r, o] = sum_c A_b[r, c] * W[o, k_b, c] ----------------------------------

template <typename T>
struct GemmBatch {
  const T* a[kMaxBatch];
  const T* w[kMaxBatch];
  T* c[kMaxBatch];
  int64_t rows[kMaxBatch];
};

constexpr int kBM = 64, kBN = 64;

// fp32 (and fallback) SIMT tile: 256 threads, 4x4 outputs each, fp32 accumulation.
template <typename T>
__global__ void __launch_bounds__(256) gemm_simt(GemmBatch<T> batch, int cin, int cout, int64_t ldw) {
  constexpr int BK = 16;
  __shared__ float as[BK][kBM + 4];
  __shared__ float bs[BK][kBN + 4];
  const int b = blockIdx.z;
  const int64_t rows = batch.rows[b];
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kBM;
  if (row0 >= rows) return;
  const int col0 = blockIdx.y * kBN;
  const T* a = batch.a[b];
  const T* w = batch.w[b];
  const int tid = threadIdx.x;
  const int tr = tid / 16, tc = tid % 16;
  float acc[4][4] = {};
  for (int kk = 0; kk < cin; kk += BK) {
    for (int e = tid; e < kBM * BK; e += 256) {
      const int r = e / BK, c = e % BK;
      const int64_t gr = row0 + r;
      const int gc = kk + c;
      as[c][r] = (gr < rows && gc < cin) ? sf::to_float(a[gr * cin + gc]) : 0.f;
      const int go = col0 + r;
      bs[c][r] = (go < cout && gc < cin) ? sf::to_float(w[go * ldw + gc]) : 0.f;
    }
    __syncthreads();
    sf_simt::fma_k_block<BK, kBM + 4>(acc, as, bs, tr, tc);
    __syncthreads();
  }
  T* cptr = batch.c[b];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = row0 + tr * 4 + i;
    if (r >= rows) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int o = col0 + tc * 4 + j;
      if (o < cout) cptr[r * cout + o] = sf::from_float<T>(acc[i][j]);
    }
  }
}

// fp16 tensor-core tile (WMMA 16x16x16, fp32 accumulators): 4 warps, 32x32 outputs per warp.
// VEC8 = true when cin % 8 == 0 and the row starts are 16-byte aligned (128-bit loads).
template <bool VEC8>
__global__ void __launch_bounds__(128) gemm_wmma(GemmBatch<__half> batch, int cin, int cout, int64_t ldw) {
  using namespace nvcuda;
  constexpr int BK = 32, LDS = BK + 8, LDC = kBN + 4;
  __shared__ __align__(32) __half as[kBM * LDS];
  __shared__ __align__(32) __half bs[kBN * LDS];
  __shared__ __align__(32) float cs[kBM * LDC];
  const int b = blockIdx.z;
  const int64_t rows = batch.rows[b];
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kBM;
  if (row0 >= rows) return;
  const int col0 = blockIdx.y * kBN;
  const __half* a = batch.a[b];
  const __half* w = batch.w[b];
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int wm = warp / 2, wn = warp % 2;
  sf_wmma::Acc acc[2][2];
  sf_wmma::zero(acc);
  const __half zero = __float2half(0.f);
  for (int kk = 0; kk < cin; kk += BK) {
    if (VEC8) {
      using P = sf::Pack<__half, 8>;
      for (int e = tid; e < kBM * BK / 8; e += 128) {
        const int r = e / (BK / 8), c = (e % (BK / 8)) * 8;
        const int64_t gr = row0 + r;
        const int gc = kk + c;
        const P va = sf::load_or_zero<__half, 8>(a + gr * cin + gc, gr < rows && gc < cin, zero);
        const int go = col0 + r;
        const P vb = sf::load_or_zero<__half, 8>(w + go * ldw + gc, go < cout && gc < cin, zero);
        *reinterpret_cast<P*>(as + r * LDS + c) = va;
        *reinterpret_cast<P*>(bs + r * LDS + c) = vb;
      }
    } else {
      for (int e = tid; e < kBM * BK; e += 128) {
        const int r = e / BK, c = e % BK;
        const int64_t gr = row0 + r;
        const int gc = kk + c;
        as[r * LDS + c] = (gr < rows && gc < cin) ? a[gr * cin + gc] : zero;
        const int go = col0 + r;
        bs[r * LDS + c] = (go < cout && gc < cin) ? w[go * ldw + gc] : zero;
      }
    }
    __syncthreads();
    sf_wmma::mma_k_block<BK, LDS>(acc, as, bs, wm, wn);
    __syncthreads();
  }
  sf_wmma::store<LDC>(cs, acc, wm, wn);
  __syncthreads();
  __half* cptr = batch.c[b];
  for (int e = tid; e < kBM * kBN; e += 128) {
    const int r = e / kBN, o = e % kBN;
    const int64_t gr = row0 + r;
    if (gr < rows && col0 + o < cout) cptr[gr * cout + col0 + o] = __float2half_rn(cs[r * LDC + o]);
  }
}

template <typename T>
int launch_gemm(const GemmBatch<T>& batch, int members, int64_t max_rows, int cin, int cout, int64_t ldw,
                bool vec8, cudaStream_t stream) {
  if (members == 0 || max_rows == 0) return SF_OK;
  const int64_t row_tiles = (max_rows + kBM - 1) / kBM;
  if (row_tiles > 2147483647LL) return SF_ERR_UNSUPPORTED;
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>((cout + kBN - 1) / kBN), members);
  if constexpr (std::is_same<T, __half>::value) {
    if (vec8)
      gemm_wmma<true><<<grid, 128, 0, stream>>>(batch, cin, cout, ldw);
    else
      gemm_wmma<false><<<grid, 128, 0, stream>>>(batch, cin, cout, ldw);
  } else {
    gemm_simt<T><<<grid, 256, 0, stream>>>(batch, cin, cout, ldw);
  }
  return sf::launch_status();
}

// ---- scatter --------------------------------------------------------------------------------

// Output-stationary reduction: out[m] = act(bias + sum_k partial[sidx[m, k]]), offsets in fixed
// order, fp32 registers, one write per output element.
template <typename T, int VEC>
__global__ void scatter_output_stationary(const T* __restrict__ partial, const int32_t* __restrict__ sidx,
                                          int64_t m_rows, int volume, int cout, const T* __restrict__ bias,
                                          int activation, T* __restrict__ out) {
  const int groups = cout / VEC;
  const int64_t total = m_rows * groups;
  using P = sf::Pack<T, VEC>;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = e / groups;
    const int cg = static_cast<int>(e - m * groups);
    float acc[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[v] = 0.f;
    for (int k = 0; k < volume; ++k) {
      const int32_t row = sidx[m * volume + k];
      if (row < 0) continue;
      const P p = *reinterpret_cast<const P*>(partial + static_cast<int64_t>(row) * cout + cg * VEC);
#pragma unroll
      for (int v = 0; v < VEC; ++v) acc[v] += sf::to_float(p.v[v]);
    }
    P o;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      float y = acc[v] + (bias != nullptr ? sf::to_float(bias[cg * VEC + v]) : 0.f);
      if (activation == SF_ACT_RELU) y = fmaxf(y, 0.f);
      o.v[v] = sf::from_float<T>(y);
    }
    *reinterpret_cast<P*>(out + m * cout + cg * VEC) = o;
  }
}

// ---- fetch-on-demand ------------------------------------------------------------------------

template <typename T>
__global__ void direct_kernel(const T* __restrict__ x, int cin, const T* __restrict__ w, const T* __restrict__ bias,
                              int cout, const int32_t* __restrict__ nbr, int64_t m_rows, int volume, int activation,
                              T* __restrict__ out) {
  const int64_t total = m_rows * cout;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = e / cout;
    const int o = static_cast<int>(e - m * cout);
    float acc = 0.f;
    for (int k = 0; k < volume; ++k) {
      const int32_t j = nbr[m * volume + k];
      if (j < 0) continue;
      const T* xr = x + static_cast<int64_t>(j) * cin;
      const T* wr = w + (static_cast<int64_t>(o) * volume + k) * cin;
      for (int c = 0; c < cin; ++c) acc = fmaf(sf::to_float(xr[c]), sf::to_float(wr[c]), acc);
    }
    if (bias != nullptr) acc += sf::to_float(bias[o]);
    if (activation == SF_ACT_RELU) acc = fmaxf(acc, 0.f);
    out[e] = sf::from_float<T>(acc);
  }
}

template <typename T, int VEC>
int run_gather(const SfConvPlan& plan, const T* x, int64_t n, int cin, const int32_t* nbr, const int32_t* sidx,
               T* g, cudaStream_t stream) {
  const int threads = 256;
  const int64_t groups = cin / VEC;
  if (plan.center >= 0) {
    gather_input_stationary<T, VEC><<<sf::blocks_for(n * groups, threads), threads, 0, stream>>>(
        x, n, cin, nbr, sidx, plan.kernel_volume, plan.center, g);
  } else {
    const int64_t work = static_cast<int64_t>(plan.num_out) * plan.kernel_volume * groups;
    gather_output_stationary<T, VEC><<<sf::blocks_for(work, threads), threads, 0, stream>>>(
        x, plan.num_out, cin, nbr, sidx, plan.kernel_volume, g);
  }
  return sf::launch_status();
}

template <typename T, int VEC>
int run_scatter(const SfConvPlan& plan, const T* partial, const int32_t* sidx, int cout, const T* bias,
                int activation, T* out, cudaStream_t stream) {
  const int threads = 256;
  const int64_t work = static_cast<int64_t>(plan.num_out) * (cout / VEC);
  scatter_output_stationary<T, VEC><<<sf::blocks_for(work, threads), threads, 0, stream>>>(
      partial, sidx, plan.num_out, plan.kernel_volume, cout, bias, activation, out);
  return sf::launch_status();
}

template <typename T>
int apply(const SfConvPlan& plan, const T* x, int64_t n, int cin, const T* w, const T* bias, int cout,
          const int32_t* nbr, const int32_t* sidx, int activation, T* g, T* partial, T* out, cudaStream_t stream) {
  if (plan.num_out == 0) return SF_OK;
  if (plan.total_gathered > 0) {
    int st;
    switch (sf::pick_vec<T>(cin, x, g)) {
      case 8: st = run_gather<T, 8>(plan, x, n, cin, nbr, sidx, g, stream); break;
      case 4: st = run_gather<T, 4>(plan, x, n, cin, nbr, sidx, g, stream); break;
      case 2: st = run_gather<T, 2>(plan, x, n, cin, nbr, sidx, g, stream); break;
      default: st = run_gather<T, 1>(plan, x, n, cin, nbr, sidx, g, stream); break;
    }
    SF_CHECK_STATUS(st);
  }
  const int volume = plan.kernel_volume;
  const int64_t ldw = static_cast<int64_t>(volume) * cin;
  const bool vec8 = cin % 8 == 0 && sf::aligned16(x) && sf::aligned16(w) && (g == nullptr || sf::aligned16(g));
  auto member = [&](GemmBatch<T>& batch, int slot, int k) {
    batch.a[slot] = k == plan.center ? x : g + plan.base[k] * cin;
    batch.w[slot] = w + static_cast<int64_t>(k) * cin;
    batch.c[slot] = partial + plan.base[k] * cout;
    batch.rows[slot] = plan.count[k];
  };
  for (int gi = 0; gi < plan.num_groups; ++gi) {
    const int first = plan.group_first[gi], size = plan.group_size[gi];
    if (plan.group_batched[gi]) {
      for (int chunk = 0; chunk < size; chunk += kMaxBatch) {
        GemmBatch<T> batch{};
        int members = 0;
        int64_t max_rows = 0;
        for (int k = first + chunk; k < first + size && k < first + chunk + kMaxBatch; ++k) {
          if (plan.count[k] == 0) continue;
          member(batch, members++, k);
          max_rows = plan.count[k] > max_rows ? plan.count[k] : max_rows;
        }
        SF_CHECK_STATUS(launch_gemm<T>(batch, members, max_rows, cin, cout, ldw, vec8, stream));
      }
    } else {
      for (int k = first; k < first + size; ++k) {
        if (plan.count[k] == 0) continue;
        GemmBatch<T> batch{};
        member(batch, 0, k);
        SF_CHECK_STATUS(launch_gemm<T>(batch, 1, plan.count[k], cin, cout, ldw, vec8, stream));
      }
    }
  }
  switch (sf::pick_vec<T>(cout, partial, out, bias)) {
    case 8: return run_scatter<T, 8>(plan, partial, sidx, cout, bias, activation, out, stream);
    case 4: return run_scatter<T, 4>(plan, partial, sidx, cout, bias, activation, out, stream);
    case 2: return run_scatter<T, 2>(plan, partial, sidx, cout, bias, activation, out, stream);
    default: return run_scatter<T, 1>(plan, partial, sidx, cout, bias, activation, out, stream);
  }
}

}  // namespace

SF_API int sf_spconv_apply(int dtype, const SfConvPlan* plan, const void* features, int64_t num_in, int64_t cin,
                           const void* weight, const void* bias, int64_t cout, const int32_t* nbr,
                           const int32_t* sidx, int32_t activation, void* gathered, void* partial, void* out,
                           cudaStream_t stream) {
  if (plan == nullptr || cin <= 0 || cout <= 0 || cin > (1 << 20) || cout > (1 << 20) || num_in < 0 ||
      (activation != SF_ACT_NONE && activation != SF_ACT_RELU) || (dtype != SF_FLOAT32 && dtype != SF_FLOAT16))
    return SF_ERR_INVALID_ARGUMENT;
  if (plan->num_out == 0) return SF_OK;
  if (nbr == nullptr || sidx == nullptr || weight == nullptr || partial == nullptr || out == nullptr ||
      (plan->total_gathered > 0 && gathered == nullptr) || (num_in > 0 && features == nullptr))
    return SF_ERR_INVALID_ARGUMENT;
  const int ci = static_cast<int>(cin), co = static_cast<int>(cout);
  if (dtype == SF_FLOAT32)
    return apply<float>(*plan, static_cast<const float*>(features), num_in, ci, static_cast<const float*>(weight),
                        static_cast<const float*>(bias), co, nbr, sidx, activation, static_cast<float*>(gathered),
                        static_cast<float*>(partial), static_cast<float*>(out), stream);
  return apply<__half>(*plan, static_cast<const __half*>(features), num_in, ci, static_cast<const __half*>(weight),
                       static_cast<const __half*>(bias), co, nbr, sidx, activation, static_cast<__half*>(gathered),
                       static_cast<__half*>(partial), static_cast<__half*>(out), stream);
}

SF_API int sf_spconv_direct(int dtype, const void* features, int64_t cin, const void* weight, const void* bias,
                            int64_t cout, const int32_t* nbr, int64_t num_out, int32_t kernel_volume,
                            int32_t activation, void* out, cudaStream_t stream) {
  if (cin <= 0 || cout <= 0 || num_out < 0 || kernel_volume <= 0 || kernel_volume > SF_MAX_KERNEL_VOLUME ||
      (activation != SF_ACT_NONE && activation != SF_ACT_RELU) || (dtype != SF_FLOAT32 && dtype != SF_FLOAT16))
    return SF_ERR_INVALID_ARGUMENT;
  if (num_out == 0) return SF_OK;
  if (nbr == nullptr || weight == nullptr || out == nullptr || features == nullptr) return SF_ERR_INVALID_ARGUMENT;
  const int threads = 256;
  const unsigned blocks = sf::blocks_for(num_out * cout, threads);
  if (dtype == SF_FLOAT32)
    direct_kernel<float><<<blocks, threads, 0, stream>>>(
        static_cast<const float*>(features), static_cast<int>(cin), static_cast<const float*>(weight),
        static_cast<const float*>(bias), static_cast<int>(cout), nbr, num_out, kernel_volume, activation,
        static_cast<float*>(out));
  else
    direct_kernel<__half><<<blocks, threads, 0, stream>>>(
        static_cast<const __half*>(features), static_cast<int>(cin), static_cast<const __half*>(weight),
        static_cast<const __half*>(bias), static_cast<int>(cout), nbr, num_out, kernel_volume, activation,
        static_cast<__half*>(out));
  return sf::launch_status();
}
