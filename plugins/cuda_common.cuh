// Device helpers shared by the sparsefuse kernels: fp32 accumulation over fp32 / fp16 storage,
// 16-byte vector copies, launch arithmetic and status plumbing. Built without fast-math on
// purpose: Voxelize must bin points with a correctly rounded float32 division.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "sf_abi.h"

namespace sf {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// Elements of T that fit in one 16-byte vector.
template <typename T>
constexpr int kVec16 = 16 / static_cast<int>(sizeof(T));

// Aligned 16-byte bundle of elements, the unit of vectorized loads and stores.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// One vector load of N elements at `src` where `ok`, else N zeros (tile edges, missing rows).
template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_or_zero(const T* src, bool ok, T zero) {
  Pack<T, N> out;
  if (ok) {
    out = *reinterpret_cast<const Pack<T, N>*>(src);
  } else {
#pragma unroll
    for (int t = 0; t < N; ++t) out.v[t] = zero;
  }
  return out;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Largest vector width (in elements, a power of two up to 16 bytes) that divides `channels` and
// keeps every row start of the given base pointers aligned.
template <typename T>
inline int pick_vec(int64_t channels, const void* a, const void* b = nullptr, const void* c = nullptr) {
  int vec = kVec16<T>;
  auto ok = [&](const void* p, int w) {
    return p == nullptr || (reinterpret_cast<uintptr_t>(p) % (static_cast<uintptr_t>(w) * sizeof(T))) == 0;
  };
  while (vec > 1 && (channels % vec != 0 || !ok(a, vec) || !ok(b, vec) || !ok(c, vec))) vec /= 2;
  return vec;
}

inline unsigned int blocks_for(int64_t work, int threads) {
  int64_t blocks = (work + threads - 1) / threads;
  const int64_t cap = 2147483647LL;  // gridDim.x limit; kernels use grid-stride loops past it
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

inline int status_of(cudaError_t err) { return err == cudaSuccess ? SF_OK : static_cast<int>(err); }

// Status of the last launch on this thread (launch-configuration errors only; asynchronous
// faults surface at the next synchronizing call, as usual in CUDA).
inline int launch_status() { return status_of(cudaGetLastError()); }

inline size_t align_up(size_t bytes, size_t alignment = 256) {
  return (bytes + alignment - 1) / alignment * alignment;
}

// Carves typed sub-buffers out of one workspace allocation, 256-byte aligned.
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<char*>(base)) {}
  template <typename T>
  T* take(size_t count) {
    T* p = base_ == nullptr ? nullptr : reinterpret_cast<T*>(base_ + used_);
    used_ += align_up(count * sizeof(T));
    return p;
  }
  size_t used() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

}  // namespace sf

#define SF_CHECK_CUDA(expr)                     \
  do {                                          \
    cudaError_t sf_err_ = (expr);               \
    if (sf_err_ != cudaSuccess) return static_cast<int>(sf_err_); \
  } while (0)

#define SF_CHECK_STATUS(expr)   \
  do {                          \
    int sf_st_ = (expr);        \
    if (sf_st_ != SF_OK) return sf_st_; \
  } while (0)
