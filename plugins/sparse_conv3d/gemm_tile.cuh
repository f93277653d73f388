// The GEMM tile cores shared by the gather-GEMM (kernels_gemm.cu) and implicit-GEMM
// (kernels_implicit.cu) paths, both computing a 64x64 output tile per block.
// - fp16 tensor cores (namespace sf_wmma): 4 warps, each owning a 32x32 quadrant (wm, wn) as 2x2
//   WMMA 16x16x16 fragments with fp32 accumulation. Operands staged in shared memory: A row-major
//   [64][LDS], B (= W, [Cout][Cin]) as column-major K x N, i.e. [64][LDS] rows of output channels.
// - fp32 SIMT (sf_simt): 256 threads, each owning 4x4 outputs (tr, tc); operands staged
//   K-major: as[BK][>=64], bs[BK][>=64].
#pragma once

#include <cuda_fp16.h>
#include <mma.h>

namespace sf_wmma {

using Acc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;

__device__ __forceinline__ void zero(Acc (&acc)[2][2]) {
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.f);
}

// acc += A[wm quadrant, 0:BK] * B[0:BK, wn quadrant] for one staged K block.
template <int BK, int LDS>
__device__ __forceinline__ void mma_k_block(Acc (&acc)[2][2], const __half* as, const __half* bs, int wm,
                                            int wn) {
  using namespace nvcuda;
#pragma unroll
  for (int ks = 0; ks < BK; ks += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], as + (wm * 32 + i * 16) * LDS + ks, LDS);
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], bs + (wn * 32 + j * 16) * LDS + ks, LDS);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
  }
}

// Write this warp's 32x32 quadrant into the fp32 staging tile cs [64][LDC] (row-major).
template <int LDC>
__device__ __forceinline__ void store(float* cs, const Acc (&acc)[2][2], int wm, int wn) {
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      nvcuda::wmma::store_matrix_sync(cs + (wm * 32 + i * 16) * LDC + wn * 32 + j * 16, acc[i][j], LDC,
                                      nvcuda::wmma::mem_row_major);
}

}  // namespace sf_wmma

namespace sf_simt {

// acc[4][4] += A[tr*4 .. +4, 0:BK] * B[0:BK, tc*4 .. +4] for one staged K block.
template <int BK, int LD>
__device__ __forceinline__ void fma_k_block(float (&acc)[4][4], const float (*as)[LD], const float (*bs)[LD],
                                            int tr, int tc) {
#pragma unroll
  for (int c = 0; c < BK; ++c) {
    float av[4], bv[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      av[i] = as[c][tr * 4 + i];
      bv[i] = bs[c][tc * 4 + i];
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
  }
}

}  // namespace sf_simt
