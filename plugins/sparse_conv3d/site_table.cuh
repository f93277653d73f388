// Site tables shared by the sparse conv mappings (SparseConv3d, SparseInverseConv3d): geometry in
// 64-bit, linear keys, and a table from site key to row: a collision-free grid (int32 per cell) when
// the grid is small, else an open-addressing hash (splitmix64, linear probing). Duplicate
// coordinates: the smallest row wins, deterministically. Everything has internal linkage (one copy
// per translation unit).
#pragma once

#include <cstdint>

#include "../cuda_common.cuh"
#include "kernels.h"

namespace {

using Key = unsigned long long;
constexpr Key kEmpty = ~0ULL;
constexpr int32_t kAbsent = 0x7F7F7F7F;  // memset(0x7F) pattern; any real row index is smaller

struct Dims {
  int64_t in[3], out[3];
  int32_t k[3], s[3], p[3], d[3];
  int32_t volume, subm;
  int64_t batches;  // 0: unknown
};

inline Dims dims_of(const SfConvGeometry& g) {
  Dims d{};
  for (int a = 0; a < 3; ++a) {
    d.in[a] = g.spatial_shape[a];
    d.out[a] = g.out_shape[a];
    d.k[a] = g.kernel_size[a];
    d.s[a] = g.stride[a];
    d.p[a] = g.padding[a];
    d.d[a] = g.dilation[a];
  }
  d.volume = g.kernel_size[0] * g.kernel_size[1] * g.kernel_size[2];
  d.subm = g.subm;
  d.batches = g.num_batches;
  return d;
}

inline bool geometry_ok(const SfConvGeometry* g) {
  if (g == nullptr || g->num_batches < 0) return false;
  int64_t volume = 1;
  for (int a = 0; a < 3; ++a) {
    if (g->spatial_shape[a] <= 0 || g->kernel_size[a] <= 0 || g->stride[a] <= 0 || g->dilation[a] <= 0 ||
        g->padding[a] < 0)
      return false;
    if (g->subm && g->kernel_size[a] % 2 == 0) return false;
    volume *= g->kernel_size[a];
  }
  return volume <= SF_MAX_KERNEL_VOLUME;
}

__host__ __device__ inline int64_t cells(const int64_t* shape) { return shape[0] * shape[1] * shape[2]; }

__device__ inline uint64_t mix(uint64_t x) {  // splitmix64 finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

struct Table {
  int kind;  // 1 grid, 0 hash
  int32_t* values;
  Key* keys;      // hash only
  uint64_t mask;  // hash only
  int64_t size;   // grid cells

  __device__ void insert(Key key, int32_t row) const {
    if (kind == 1) {
      atomicMin(values + key, row);
      return;
    }
    uint64_t slot = mix(key) & mask;
    while (true) {
      const Key prev = atomicCAS(keys + slot, kEmpty, key);
      if (prev == kEmpty || prev == key) {
        atomicMin(values + slot, row);  // duplicate coordinates: the smallest row wins, deterministically
        return;
      }
      slot = (slot + 1) & mask;
    }
  }

  __device__ int32_t find(Key key) const {
    if (kind == 1) {
      if (static_cast<int64_t>(key) >= size) return -1;
      const int32_t v = values[key];
      return v == kAbsent ? -1 : v;
    }
    uint64_t slot = mix(key) & mask;
    while (true) {
      const Key k = keys[slot];
      if (k == key) return values[slot];
      if (k == kEmpty) return -1;
      slot = (slot + 1) & mask;
    }
  }
};

inline uint64_t hash_capacity(int64_t num_in) {
  uint64_t cap = 1024;
  while (cap < static_cast<uint64_t>(num_in) * 2) cap <<= 1;
  return cap;
}

__device__ inline bool in_key(const int32_t* c, const Dims& d, Key* key) {
  const int64_t b = c[0], z = c[1], y = c[2], x = c[3];
  if (b < 0 || (d.batches > 0 && b >= d.batches) || z < 0 || z >= d.in[0] || y < 0 || y >= d.in[1] || x < 0 ||
      x >= d.in[2])
    return false;
  *key = static_cast<Key>(((b * d.in[0] + z) * d.in[1] + y) * d.in[2] + x);
  return true;
}

// Kernel offset k (row-major, kx fastest) as (kz, ky, kx).
__device__ inline void offset_of(int k, const Dims& d, int off[3]) {
  off[0] = k / (d.k[2] * d.k[1]);
  off[1] = (k / d.k[2]) % d.k[1];
  off[2] = k % d.k[2];
}

// The strided site q = (x + p - k*d) / s reached from fine coordinates xyz through offset `off`
// (the regular conv's input -> output relation): true when, on all three axes, x + p - k*d >= 0,
// s divides it and q < bound.
__device__ inline bool strided_site(const int32_t* xyz, const int off[3], const Dims& d, const int64_t* bound,
                                    int64_t q[3]) {
  bool ok = true;
#pragma unroll
  for (int a = 0; a < 3; ++a) {
    const int64_t num = static_cast<int64_t>(xyz[a]) + d.p[a] - static_cast<int64_t>(off[a]) * d.d[a];
    q[a] = num >= 0 ? num / d.s[a] : -1;
    ok = ok && num >= 0 && q[a] * d.s[a] == num && q[a] < bound[a];
  }
  return ok;
}

__global__ void table_insert_kernel(const int32_t* __restrict__ coords, int64_t n, Dims d, Table t) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Key key;
    if (in_key(coords + i * 4, d, &key)) t.insert(key, static_cast<int32_t>(i));
  }
}

struct MapLayout {
  Table table;
  size_t total;
};

inline MapLayout carve_map(void* base, const Dims& d, int64_t num_in, int kind) {
  sf::Carver c(base);
  MapLayout l{};
  l.table.kind = kind;
  if (kind == 1) {
    l.table.size = d.batches * cells(d.in);
    l.table.values = c.take<int32_t>(static_cast<size_t>(l.table.size));
  } else {
    const uint64_t cap = hash_capacity(num_in);
    l.table.mask = cap - 1;
    l.table.keys = c.take<Key>(cap);
    l.table.values = c.take<int32_t>(cap);
  }
  l.total = c.used();
  return l;
}

// Clears the table carved by carve_map and inserts rows [0, n) of coords (keyed over d.in).
inline int fill_table(const Table& t, const int32_t* coords, int64_t n, const Dims& d, cudaStream_t stream) {
  if (t.kind == 0) SF_CHECK_CUDA(cudaMemsetAsync(t.keys, 0xFF, (t.mask + 1) * sizeof(Key), stream));
  const size_t value_count = t.kind == 1 ? static_cast<size_t>(t.size) : t.mask + 1;
  SF_CHECK_CUDA(cudaMemsetAsync(t.values, 0x7F, value_count * sizeof(int32_t), stream));
  if (n == 0) return SF_OK;
  const int threads = 256;
  table_insert_kernel<<<sf::blocks_for(n, threads), threads, 0, stream>>>(coords, n, d, t);
  return sf::launch_status();
}

}  // namespace
