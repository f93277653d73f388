// SparseConv3d mapping (see kernels.h): output sites, input tables (grid or hash), kernel map.
// Planning lives in kernels_plan.cu; gather / GEMM / scatter in kernels_gemm.cu and
// kernels_implicit.cu.
#include <algorithm>
#include <cub/cub.cuh>

#include "../cuda_common.cuh"
#include "kernels.h"
#include "site_table.cuh"

namespace {

// Output-stationary map search: for output m and offset k, the one input that can reach it.
__global__ void kernel_map_kernel(const int32_t* __restrict__ out_coords, int64_t rows,
                                  const int32_t* __restrict__ rows_dev, Dims d, Table t, int32_t* __restrict__ nbr) {
  const int64_t m_rows = rows_dev != nullptr ? static_cast<int64_t>(*rows_dev) : rows;
  const int64_t total = m_rows * d.volume;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = e / d.volume;
    int k = static_cast<int>(e - m * d.volume);
    int off[3];
    offset_of(k, d, off);
    const int32_t* o = out_coords + m * 4;
    int32_t c[4] = {o[0], 0, 0, 0};
    bool ok = true;
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      int64_t v;
      if (d.subm)
        v = static_cast<int64_t>(o[a + 1]) + static_cast<int64_t>(off[a] - d.k[a] / 2) * d.d[a];
      else
        v = static_cast<int64_t>(o[a + 1]) * d.s[a] - d.p[a] + static_cast<int64_t>(off[a]) * d.d[a];
      ok = ok && v >= 0 && v < d.in[a];
      c[a + 1] = ok ? static_cast<int32_t>(v) : 0;
    }
    Key key;
    nbr[e] = (ok && in_key(c, d, &key)) ? t.find(key) : -1;
  }
}

// Fused candidate generation (TorchSparse stages 1-4 in registers): the output key reached by
// input i through offset k, or the sentinel.
__global__ void candidate_kernel(const int32_t* __restrict__ coords, int64_t n, Dims d, Key sentinel,
                                 Key* __restrict__ keys) {
  const int64_t total = n * d.volume;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / d.volume;
    const int k = static_cast<int>(e - i * d.volume);
    int off[3];
    offset_of(k, d, off);
    const int32_t* c = coords + i * 4;
    int64_t q[3];
    const bool ok = c[0] >= 0 && (d.batches == 0 || c[0] < d.batches) && strided_site(c + 1, off, d, d.out, q);
    const int64_t key = ((static_cast<int64_t>(c[0]) * d.out[0] + q[0]) * d.out[1] + q[1]) * d.out[2] + q[2];
    keys[e] = ok ? static_cast<Key>(key) : sentinel;
  }
}

__global__ void sites_finish_kernel(const Key* __restrict__ uniq, const int32_t* __restrict__ num_unique,
                                    Key sentinel, Dims d, int64_t capacity, int32_t* __restrict__ out_coords,
                                    int32_t* __restrict__ num_out) {
  int64_t count = *num_unique;
  if (count > 0 && uniq[count - 1] == sentinel) --count;
  if (count > capacity) count = capacity;
  if (blockIdx.x == 0 && threadIdx.x == 0) *num_out = static_cast<int32_t>(count);
  for (int64_t m = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; m < count;
       m += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t key = static_cast<int64_t>(uniq[m]);
    const int64_t x = key % d.out[2];
    key /= d.out[2];
    const int64_t y = key % d.out[1];
    key /= d.out[1];
    const int64_t z = key % d.out[0];
    out_coords[m * 4] = static_cast<int32_t>(key / d.out[0]);
    out_coords[m * 4 + 1] = static_cast<int32_t>(z);
    out_coords[m * 4 + 2] = static_cast<int32_t>(y);
    out_coords[m * 4 + 3] = static_cast<int32_t>(x);
  }
}

int bits_for(Key max_value) {
  int bits = 1;
  while (bits < 64 && (max_value >> bits) != 0) ++bits;
  return bits;
}

Key site_sentinel(const Dims& d) {
  return d.batches > 0 ? static_cast<Key>(d.batches * cells(d.out)) : (1ULL << 62);
}

struct SitesLayout {
  Key* keys_in;
  Key* keys_out;
  Key* uniq;
  int32_t* num_unique;
  void* temp;
  size_t temp_bytes;
  size_t total;
};

SitesLayout carve_sites(void* base, int64_t items, int bits) {
  size_t sort_bytes = 0, unique_bytes = 0;
  const int n = static_cast<int>(items);
  cub::DeviceRadixSort::SortKeys(nullptr, sort_bytes, static_cast<const Key*>(nullptr), static_cast<Key*>(nullptr),
                                 n, 0, bits);
  cub::DeviceSelect::Unique(nullptr, unique_bytes, static_cast<const Key*>(nullptr), static_cast<Key*>(nullptr),
                            static_cast<int32_t*>(nullptr), n);
  sf::Carver c(base);
  SitesLayout l{};
  l.keys_in = c.take<Key>(items);
  l.keys_out = c.take<Key>(items);
  l.uniq = c.take<Key>(items);
  l.num_unique = c.take<int32_t>(1);
  l.temp_bytes = std::max(sort_bytes, unique_bytes);
  l.temp = c.take<char>(l.temp_bytes);
  l.total = c.used();
  return l;
}

}  // namespace

SF_API int sf_spconv_out_shape(SfConvGeometry* g) {
  if (!geometry_ok(g)) return SF_ERR_INVALID_ARGUMENT;
  for (int a = 0; a < 3; ++a) {
    if (g->subm) {
      g->out_shape[a] = g->spatial_shape[a];
      continue;
    }
    const int64_t span = static_cast<int64_t>(g->spatial_shape[a]) + 2LL * g->padding[a] -
                         static_cast<int64_t>(g->dilation[a]) * (g->kernel_size[a] - 1) - 1;
    if (span < 0) return SF_ERR_INVALID_ARGUMENT;
    g->out_shape[a] = static_cast<int32_t>(span / g->stride[a] + 1);
  }
  return SF_OK;
}

SF_API int sf_spconv_sites_workspace_size(const SfConvGeometry* g, int64_t num_in, size_t* bytes) {
  if (!geometry_ok(g) || bytes == nullptr || num_in < 0) return SF_ERR_INVALID_ARGUMENT;
  const Dims d = dims_of(*g);
  const int64_t items = std::max<int64_t>(1, num_in * d.volume);
  if (items > 2147483647LL) return SF_ERR_UNSUPPORTED;
  *bytes = carve_sites(nullptr, items, bits_for(site_sentinel(d))).total;
  return SF_OK;
}

SF_API int sf_spconv_out_sites(const SfConvGeometry* g, const int32_t* coords, int64_t num_in,
                               int32_t* out_coords, int64_t capacity, int32_t* num_out, void* workspace,
                               size_t workspace_bytes, cudaStream_t stream) {
  if (!geometry_ok(g) || g->subm || num_in < 0 || num_out == nullptr || capacity < 0) return SF_ERR_INVALID_ARGUMENT;
  const Dims d = dims_of(*g);
  const int64_t items = num_in * d.volume;
  if (items > 2147483647LL) return SF_ERR_UNSUPPORTED;
  if (items == 0) return sf::status_of(cudaMemsetAsync(num_out, 0, sizeof(int32_t), stream));
  if (coords == nullptr || out_coords == nullptr || workspace == nullptr) return SF_ERR_INVALID_ARGUMENT;
  const Key sentinel = site_sentinel(d);
  const int bits = bits_for(sentinel);
  SitesLayout l = carve_sites(workspace, items, bits);
  if (workspace_bytes < l.total) return SF_ERR_WORKSPACE_TOO_SMALL;
  const int threads = 256;
  candidate_kernel<<<sf::blocks_for(items, threads), threads, 0, stream>>>(coords, num_in, d, sentinel, l.keys_in);
  SF_CHECK_STATUS(sf::launch_status());
  size_t temp = l.temp_bytes;
  SF_CHECK_CUDA(cub::DeviceRadixSort::SortKeys(l.temp, temp, l.keys_in, l.keys_out, static_cast<int>(items), 0, bits,
                                               stream));
  temp = l.temp_bytes;
  SF_CHECK_CUDA(cub::DeviceSelect::Unique(l.temp, temp, l.keys_out, l.uniq, l.num_unique, static_cast<int>(items),
                                          stream));
  const int64_t rows = std::min(items, capacity);
  sites_finish_kernel<<<sf::blocks_for(std::max<int64_t>(rows, 1), threads), threads, 0, stream>>>(
      l.uniq, l.num_unique, sentinel, d, capacity, out_coords, num_out);
  return sf::launch_status();
}

SF_API int sf_spconv_table_kind(const SfConvGeometry* g, int64_t max_grid_cells) {
  if (!geometry_ok(g)) return SF_ERR_INVALID_ARGUMENT;
  const int64_t grid_cells = static_cast<int64_t>(g->num_batches) * g->spatial_shape[0] * g->spatial_shape[1] *
                             g->spatial_shape[2];
  return (g->num_batches > 0 && grid_cells <= max_grid_cells) ? 1 : 0;
}

SF_API int sf_spconv_map_workspace_size(const SfConvGeometry* g, int64_t num_in, int64_t max_grid_cells,
                                        size_t* bytes) {
  if (!geometry_ok(g) || bytes == nullptr || num_in < 0) return SF_ERR_INVALID_ARGUMENT;
  *bytes = carve_map(nullptr, dims_of(*g), num_in, sf_spconv_table_kind(g, max_grid_cells)).total;
  return SF_OK;
}

SF_API int sf_spconv_kernel_map(const SfConvGeometry* g, const int32_t* coords, int64_t num_in,
                                const int32_t* out_coords, int64_t num_out_rows, const int32_t* num_out_dev,
                                int32_t* nbr, int64_t max_grid_cells, void* workspace, size_t workspace_bytes,
                                cudaStream_t stream) {
  if (!geometry_ok(g) || num_in < 0 || num_in > 2147483647LL || num_out_rows < 0) return SF_ERR_INVALID_ARGUMENT;
  const Dims d = dims_of(*g);
  if (num_out_rows == 0) return SF_OK;
  if (out_coords == nullptr || nbr == nullptr || workspace == nullptr || (num_in > 0 && coords == nullptr))
    return SF_ERR_INVALID_ARGUMENT;
  MapLayout l = carve_map(workspace, d, num_in, sf_spconv_table_kind(g, max_grid_cells));
  if (workspace_bytes < l.total) return SF_ERR_WORKSPACE_TOO_SMALL;
  SF_CHECK_STATUS(fill_table(l.table, coords, num_in, d, stream));
  const int threads = 256;
  kernel_map_kernel<<<sf::blocks_for(num_out_rows * d.volume, threads), threads, 0, stream>>>(
      out_coords, num_out_rows, num_out_dev, d, l.table, nbr);
  return sf::launch_status();
}
