// Voxelize (see kernels.h): key per point -> stable radix sort of (key, point index) ->
// run-length encode -> exclusive scan of run lengths -> one thread per (voxel, feature)
// averages its run in sorted (= input) order. Deterministic; no atomics.
#include <algorithm>

#include <cub/cub.cuh>

#include "../cuda_common.cuh"
#include "kernels.h"

namespace {

using Key = unsigned long long;

struct Grid {
  float lo[3];
  float size[3];
  int64_t dim[3];  // (X, Y, Z) to match the point columns
};

__global__ void voxel_key_kernel(const float* __restrict__ points, int64_t num_points, int64_t num_features,
                                 Grid grid, Key sentinel, Key* __restrict__ keys, int32_t* __restrict__ order) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < num_points;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t idx[3];
    bool inside = true;
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      // The reference's float32 (p - lo) / size, rounded exactly like torch does on the CPU.
      const float q = floorf(__fdiv_rn(__fsub_rn(points[i * num_features + a], grid.lo[a]), grid.size[a]));
      inside = inside && q >= 0.f && q < static_cast<float>(grid.dim[a]);
      idx[a] = inside ? static_cast<int64_t>(q) : 0;
    }
    keys[i] = inside ? static_cast<Key>((idx[2] * grid.dim[1] + idx[1]) * grid.dim[0] + idx[0]) : sentinel;
    order[i] = static_cast<int32_t>(i);
  }
}

__global__ void voxel_mean_kernel(const float* __restrict__ points, int64_t num_features,
                                  const int32_t* __restrict__ sorted_order, const Key* __restrict__ run_keys,
                                  const int32_t* __restrict__ run_lengths, const int32_t* __restrict__ run_starts,
                                  const int32_t* __restrict__ num_runs, Key sentinel, int64_t limit, Grid grid,
                                  float* __restrict__ features, int32_t* __restrict__ coords,
                                  int32_t* __restrict__ num_voxels) {
  const int64_t runs = *num_runs;
  int64_t valid = (runs > 0 && run_keys[runs - 1] == sentinel) ? runs - 1 : runs;
  if (valid > limit) valid = limit;
  if (blockIdx.x == 0 && threadIdx.x == 0) *num_voxels = static_cast<int32_t>(valid);
  const int64_t per_row = num_features + 4;  // feature columns, then the 4 coordinates
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < valid * per_row;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t v = e / per_row;
    const int64_t col = e - v * per_row;
    if (col < num_features) {
      const int32_t begin = run_starts[v];
      const int32_t count = run_lengths[v];
      float sum = 0.f;
      for (int32_t t = 0; t < count; ++t) sum += points[static_cast<int64_t>(sorted_order[begin + t]) * num_features + col];
      features[v * num_features + col] = __fdiv_rn(sum, static_cast<float>(count));
    } else {
      const int64_t key = static_cast<int64_t>(run_keys[v]);
      const int64_t x = key % grid.dim[0];
      const int64_t y = (key / grid.dim[0]) % grid.dim[1];
      const int64_t z = key / (grid.dim[0] * grid.dim[1]);
      const int64_t which = col - num_features;
      coords[v * 4 + which] = static_cast<int32_t>(which == 0 ? 0 : (which == 1 ? z : (which == 2 ? y : x)));
    }
  }
}

int key_bits(Key max_value) {
  int bits = 1;
  while (bits < 64 && (max_value >> bits) != 0) ++bits;
  return bits;
}

struct Layout {
  Key* keys_in;
  Key* keys_out;
  int32_t* order_in;
  int32_t* order_out;
  Key* run_keys;
  int32_t* run_lengths;
  int32_t* run_starts;
  int32_t* num_runs;
  void* temp;
  size_t temp_bytes;
  size_t total;
};

Layout carve(void* base, int64_t n, Key sentinel) {
  const int bits = key_bits(sentinel);
  size_t sort_bytes = 0, rle_bytes = 0, scan_bytes = 0;
  const int items = static_cast<int>(n);
  cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<const Key*>(nullptr), static_cast<Key*>(nullptr),
                                  static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), items, 0, bits);
  cub::DeviceRunLengthEncode::Encode(nullptr, rle_bytes, static_cast<const Key*>(nullptr),
                                     static_cast<Key*>(nullptr), static_cast<int32_t*>(nullptr),
                                     static_cast<int32_t*>(nullptr), items);
  cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, static_cast<const int32_t*>(nullptr),
                                static_cast<int32_t*>(nullptr), items);
  sf::Carver c(base);
  Layout l{};
  l.keys_in = c.take<Key>(n);
  l.keys_out = c.take<Key>(n);
  l.order_in = c.take<int32_t>(n);
  l.order_out = c.take<int32_t>(n);
  l.run_keys = c.take<Key>(n);
  l.run_lengths = c.take<int32_t>(n);
  l.run_starts = c.take<int32_t>(n);
  l.num_runs = c.take<int32_t>(1);
  l.temp_bytes = std::max(sort_bytes, std::max(rle_bytes, scan_bytes));
  l.temp = c.take<char>(l.temp_bytes);
  l.total = c.used();
  return l;
}

bool valid_grid(int64_t gz, int64_t gy, int64_t gx) {
  return gz > 0 && gy > 0 && gx > 0 && gz < (1LL << 21) && gy < (1LL << 21) && gx < (1LL << 21);
}

}  // namespace

SF_API int sf_voxelize_workspace_size(int64_t num_points, int64_t grid_z, int64_t grid_y, int64_t grid_x,
                                      size_t* bytes) {
  if (bytes == nullptr || num_points < 0 || num_points > 2147483647LL || !valid_grid(grid_z, grid_y, grid_x))
    return SF_ERR_INVALID_ARGUMENT;
  const Key sentinel = static_cast<Key>(grid_z * grid_y * grid_x);
  *bytes = carve(nullptr, num_points > 0 ? num_points : 1, sentinel).total;
  return SF_OK;
}

SF_API int sf_voxelize(const float* points, int64_t num_points, int64_t num_features, const float* point_range,
                       const float* voxel_size, int64_t grid_z, int64_t grid_y, int64_t grid_x,
                       int64_t max_voxels, float* voxel_features, int32_t* voxel_coords, int32_t* num_voxels,
                       int64_t capacity, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (num_points < 0 || num_points > 2147483647LL || num_features < 3 || max_voxels < 0 ||
      point_range == nullptr || voxel_size == nullptr || num_voxels == nullptr || !valid_grid(grid_z, grid_y, grid_x))
    return SF_ERR_INVALID_ARGUMENT;
  const int64_t limit = std::min(max_voxels, num_points);
  if (capacity < limit) return SF_ERR_INVALID_ARGUMENT;
  if (num_points == 0 || limit == 0) return sf::status_of(cudaMemsetAsync(num_voxels, 0, sizeof(int32_t), stream));
  if (points == nullptr || voxel_features == nullptr || voxel_coords == nullptr || workspace == nullptr)
    return SF_ERR_INVALID_ARGUMENT;
  const Key sentinel = static_cast<Key>(grid_z * grid_y * grid_x);
  Layout l = carve(workspace, num_points, sentinel);
  if (workspace_bytes < l.total) return SF_ERR_WORKSPACE_TOO_SMALL;

  Grid grid{};
  const int64_t dims[3] = {grid_x, grid_y, grid_z};
  for (int a = 0; a < 3; ++a) {
    grid.lo[a] = point_range[a];
    grid.size[a] = voxel_size[a];
    grid.dim[a] = dims[a];
  }
  const int threads = 256;
  const int items = static_cast<int>(num_points);
  voxel_key_kernel<<<sf::blocks_for(num_points, threads), threads, 0, stream>>>(
      points, num_points, num_features, grid, sentinel, l.keys_in, l.order_in);
  SF_CHECK_STATUS(sf::launch_status());
  // Runs past num_runs are never read, but keep the scan input defined.
  SF_CHECK_CUDA(cudaMemsetAsync(l.run_lengths, 0, static_cast<size_t>(num_points) * sizeof(int32_t), stream));
  size_t temp = l.temp_bytes;
  SF_CHECK_CUDA(cub::DeviceRadixSort::SortPairs(l.temp, temp, l.keys_in, l.keys_out, l.order_in, l.order_out, items,
                                                0, key_bits(sentinel), stream));
  temp = l.temp_bytes;
  SF_CHECK_CUDA(cub::DeviceRunLengthEncode::Encode(l.temp, temp, l.keys_out, l.run_keys, l.run_lengths, l.num_runs,
                                                   items, stream));
  temp = l.temp_bytes;
  SF_CHECK_CUDA(cub::DeviceScan::ExclusiveSum(l.temp, temp, l.run_lengths, l.run_starts, items, stream));
  const int64_t work = limit * (num_features + 4);
  voxel_mean_kernel<<<sf::blocks_for(work, threads), threads, 0, stream>>>(
      points, num_features, l.order_out, l.run_keys, l.run_lengths, l.run_starts, l.num_runs, sentinel, limit, grid,
      voxel_features, voxel_coords, num_voxels);
  return sf::launch_status();
}
