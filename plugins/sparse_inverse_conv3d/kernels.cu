// SparseInverseConv3d kernel map (see kernels.h); tables from sparse_conv3d/site_table.cuh.
#include "../cuda_common.cuh"
#include "../sparse_conv3d/site_table.cuh"
#include "kernels.h"

namespace {

// Dims of the coarse grid: `in` = the paired conv's output grid, so that in_key / the table key
// coarse sites; the kernel geometry stays that of the paired conv.
bool coarse_dims(const SfConvGeometry* g, Dims* coarse) {
  if (!geometry_ok(g) || g->subm) return false;
  SfConvGeometry full = *g;
  if (sf_spconv_out_shape(&full) != SF_OK) return false;
  *coarse = dims_of(full);
  for (int a = 0; a < 3; ++a) coarse->in[a] = full.out_shape[a];
  return true;
}

int coarse_table_kind(const Dims& c, int64_t max_grid_cells) {
  return (c.batches > 0 && c.batches * cells(c.in) <= max_grid_cells) ? 1 : 0;
}

// Fine-site-stationary map search: for fine site m and offset k, the one coarse site that reaches it.
__global__ void inverse_map_kernel(const int32_t* __restrict__ fine, int64_t rows, Dims c, Table t,
                                   int32_t* __restrict__ nbr) {
  const int64_t total = rows * c.volume;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = e / c.volume;
    const int k = static_cast<int>(e - m * c.volume);
    int off[3];
    offset_of(k, c, off);
    const int32_t* x = fine + m * 4;
    int64_t q[3];
    const bool ok = strided_site(x + 1, off, c, c.in, q);  // bound: the coarse grid
    const int32_t site[4] = {x[0], static_cast<int32_t>(q[0]), static_cast<int32_t>(q[1]),
                             static_cast<int32_t>(q[2])};
    Key key;
    nbr[e] = (ok && in_key(site, c, &key)) ? t.find(key) : -1;
  }
}

}  // namespace

SF_API int sf_spinv_map_workspace_size(const SfConvGeometry* g, int64_t num_in, int64_t max_grid_cells,
                                       size_t* bytes) {
  Dims c;
  if (!coarse_dims(g, &c) || bytes == nullptr || num_in < 0) return SF_ERR_INVALID_ARGUMENT;
  *bytes = carve_map(nullptr, c, num_in, coarse_table_kind(c, max_grid_cells)).total;
  return SF_OK;
}

SF_API int sf_spinv_kernel_map(const SfConvGeometry* g, const int32_t* coords, int64_t num_in,
                               const int32_t* out_coords, int64_t num_out, int32_t* nbr, int64_t max_grid_cells,
                               void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  Dims c;
  if (!coarse_dims(g, &c) || num_in < 0 || num_in > 2147483647LL || num_out < 0) return SF_ERR_INVALID_ARGUMENT;
  if (num_out == 0) return SF_OK;
  if (out_coords == nullptr || nbr == nullptr || workspace == nullptr || (num_in > 0 && coords == nullptr))
    return SF_ERR_INVALID_ARGUMENT;
  MapLayout l = carve_map(workspace, c, num_in, coarse_table_kind(c, max_grid_cells));
  if (workspace_bytes < l.total) return SF_ERR_WORKSPACE_TOO_SMALL;
  SF_CHECK_STATUS(fill_table(l.table, coords, num_in, c, stream));
  const int threads = 256;
  inverse_map_kernel<<<sf::blocks_for(num_out * c.volume, threads), threads, 0, stream>>>(out_coords, num_out, c,
                                                                                            l.table, nbr);
  return sf::launch_status();
}
