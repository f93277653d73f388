// Voxelize (see kernels.h): key per point -> stable radix sort of (key, point index) ->
// run-length encode -> exclusive scan of run lengths (each run is one voxel, its points in input
// order). Arrival order: a second radix sort of the runs by their first point index. Then one
// thread per output element: the mean of a run's first `max_points` points, or one padded slot,
// or a coordinate / count. Deterministic; no atomics.
#include <algorithm>

#include <cub/cub.cuh>

#include "../cuda_common.cuh"
#include "kernels.h"

namespace {

using Key = unsigned long long;
using First = unsigned int;  // a run's first point index; kNoRun sorts after every real run
constexpr First kNoRun = 0xffffffffu;

struct Grid {
  float lo[3];
  float size[3];
  int64_t dim[3];  // (X, Y, Z) to match the point columns
};

struct Mode {
  int64_t max_points;  // > 0: count only a voxel's first max_points points
  int reduce;          // SF_VOXEL_REDUCE_*
  int order;           // SF_VOXEL_ORDER_*
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

// Per run slot r < n: the run's first point index (runs past num_runs and the sentinel run: kNoRun),
// and r itself as the value the arrival sort permutes.
__global__ void run_first_kernel(int64_t n, const int32_t* __restrict__ sorted_order,
                                 const int32_t* __restrict__ run_starts, const Key* __restrict__ run_keys,
                                 const int32_t* __restrict__ num_runs, Key sentinel, First* __restrict__ first,
                                 int32_t* __restrict__ run_ids) {
  const int64_t runs = *num_runs;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < n;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bool real = r < runs && run_keys[r] != sentinel;
    first[r] = real ? static_cast<First>(sorted_order[run_starts[r]]) : kNoRun;
    run_ids[r] = static_cast<int32_t>(r);
  }
}

__global__ void voxel_out_kernel(const float* __restrict__ points, int64_t num_features,
                                 const int32_t* __restrict__ sorted_order, const Key* __restrict__ run_keys,
                                 const int32_t* __restrict__ run_lengths, const int32_t* __restrict__ run_starts,
                                 const int32_t* __restrict__ num_runs, const int32_t* __restrict__ run_of_voxel,
                                 Key sentinel, int64_t limit, Grid grid, Mode mode, float* __restrict__ features,
                                 int32_t* __restrict__ coords, int32_t* __restrict__ num_voxels,
                                 int32_t* __restrict__ num_points_per_voxel) {
  const int64_t runs = *num_runs;
  int64_t valid = (runs > 0 && run_keys[runs - 1] == sentinel) ? runs - 1 : runs;
  if (valid > limit) valid = limit;
  if (blockIdx.x == 0 && threadIdx.x == 0) *num_voxels = static_cast<int32_t>(valid);
  const bool lists = mode.reduce == SF_VOXEL_REDUCE_NONE;
  const int64_t feature_cols = lists ? mode.max_points * num_features : num_features;
  const int64_t per_row = feature_cols + 5;  // features, the 4 coordinates, the point count
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < valid * per_row;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t v = e / per_row;
    const int64_t col = e - v * per_row;
    const int64_t run = run_of_voxel == nullptr ? v : run_of_voxel[v];
    const int32_t begin = run_starts[run];
    int32_t count = run_lengths[run];
    if (mode.max_points > 0 && count > mode.max_points) count = static_cast<int32_t>(mode.max_points);
    if (col < feature_cols && lists) {
      const int64_t slot = col / num_features;
      const int64_t f = col - slot * num_features;
      features[v * feature_cols + col] =
          slot < count ? points[static_cast<int64_t>(sorted_order[begin + slot]) * num_features + f] : 0.f;
    } else if (col < feature_cols) {
      float sum = 0.f;
      for (int32_t t = 0; t < count; ++t) sum += points[static_cast<int64_t>(sorted_order[begin + t]) * num_features + col];
      features[v * num_features + col] = __fdiv_rn(sum, static_cast<float>(count));
    } else if (col < feature_cols + 4) {
      const int64_t key = static_cast<int64_t>(run_keys[run]);
      const int64_t x = key % grid.dim[0];
      const int64_t y = (key / grid.dim[0]) % grid.dim[1];
      const int64_t z = key / (grid.dim[0] * grid.dim[1]);
      const int64_t which = col - feature_cols;
      coords[v * 4 + which] = static_cast<int32_t>(which == 0 ? 0 : (which == 1 ? z : (which == 2 ? y : x)));
    } else if (num_points_per_voxel != nullptr) {
      num_points_per_voxel[v] = count;
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
  First* first_in;  // arrival order: runs by first point
  First* first_out;
  int32_t* runs_in;
  int32_t* runs_out;
  void* temp;
  size_t temp_bytes;
  size_t total;
};

Layout carve(void* base, int64_t n, Key sentinel) {
  const int bits = key_bits(sentinel);
  size_t sort_bytes = 0, rle_bytes = 0, scan_bytes = 0, arrival_bytes = 0;
  const int items = static_cast<int>(n);
  cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<const Key*>(nullptr), static_cast<Key*>(nullptr),
                                  static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), items, 0, bits);
  cub::DeviceRunLengthEncode::Encode(nullptr, rle_bytes, static_cast<const Key*>(nullptr),
                                     static_cast<Key*>(nullptr), static_cast<int32_t*>(nullptr),
                                     static_cast<int32_t*>(nullptr), items);
  cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, static_cast<const int32_t*>(nullptr),
                                static_cast<int32_t*>(nullptr), items);
  cub::DeviceRadixSort::SortPairs(nullptr, arrival_bytes, static_cast<const First*>(nullptr),
                                  static_cast<First*>(nullptr), static_cast<const int32_t*>(nullptr),
                                  static_cast<int32_t*>(nullptr), items, 0, 32);
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
  l.first_in = c.take<First>(n);
  l.first_out = c.take<First>(n);
  l.runs_in = c.take<int32_t>(n);
  l.runs_out = c.take<int32_t>(n);
  l.temp_bytes = std::max(std::max(sort_bytes, arrival_bytes), std::max(rle_bytes, scan_bytes));
  l.temp = c.take<char>(l.temp_bytes);
  l.total = c.used();
  return l;
}

bool valid_grid(int64_t gz, int64_t gy, int64_t gx) {
  return gz > 0 && gy > 0 && gx > 0 && gz < (1LL << 21) && gy < (1LL << 21) && gx < (1LL << 21);
}

bool valid_mode(int64_t max_points, int reduce, int order) {
  const bool reduce_ok = reduce == SF_VOXEL_REDUCE_MEAN || (reduce == SF_VOXEL_REDUCE_NONE && max_points > 0);
  return max_points >= 0 && max_points <= 2147483647LL && reduce_ok &&
         (order == SF_VOXEL_ORDER_KEY || order == SF_VOXEL_ORDER_ARRIVAL);
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
                       int64_t max_voxels, int64_t max_points_per_voxel, int reduce, int order,
                       float* voxel_features, int32_t* voxel_coords, int32_t* num_voxels,
                       int32_t* num_points_per_voxel, int64_t capacity, void* workspace, size_t workspace_bytes,
                       cudaStream_t stream) {
  if (num_points < 0 || num_points > 2147483647LL || num_features < 3 || max_voxels < 0 ||
      point_range == nullptr || voxel_size == nullptr || num_voxels == nullptr ||
      !valid_grid(grid_z, grid_y, grid_x) || !valid_mode(max_points_per_voxel, reduce, order))
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
  const int32_t* run_of_voxel = nullptr;  // key order: voxel v is run v
  if (order == SF_VOXEL_ORDER_ARRIVAL) {
    // The sort above is stable, so a run's first sorted point is its first point in input order.
    run_first_kernel<<<sf::blocks_for(num_points, threads), threads, 0, stream>>>(
        num_points, l.order_out, l.run_starts, l.run_keys, l.num_runs, sentinel, l.first_in, l.runs_in);
    SF_CHECK_STATUS(sf::launch_status());
    temp = l.temp_bytes;
    SF_CHECK_CUDA(cub::DeviceRadixSort::SortPairs(l.temp, temp, l.first_in, l.first_out, l.runs_in, l.runs_out,
                                                  items, 0, 32, stream));
    run_of_voxel = l.runs_out;
  }
  const Mode mode{max_points_per_voxel, reduce, order};
  const int64_t feature_cols = reduce == SF_VOXEL_REDUCE_NONE ? max_points_per_voxel * num_features : num_features;
  const int64_t work = limit * (feature_cols + 5);
  voxel_out_kernel<<<sf::blocks_for(work, threads), threads, 0, stream>>>(
      points, num_features, l.order_out, l.run_keys, l.run_lengths, l.run_starts, l.num_runs, run_of_voxel, sentinel,
      limit, grid, mode, voxel_features, voxel_coords, num_voxels, num_points_per_voxel);
  return sf::launch_status();
}
