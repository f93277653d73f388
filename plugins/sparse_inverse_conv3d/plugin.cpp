// TensorRT IPluginV3 for SparseInverseConv3d (sparsefuse, version "1"); API notes in ../trt_common.h.
// inputs: features[N,Cin] f32|f16 (coarse sites), coords[N,4] i32 (coarse), out_coords[M,4] i32 (fine),
// weight[Cout,kz,ky,kx,Cin], bias[Cout]?
// output: features[M,Cout]: M is out_coords' row count, so no size tensor and no host sync for M.
//
// Fields: the paired strided conv's geometry (spatial_shape = the fine grid), activation, and
// SparseConv3d's GEMM knobs: "algo" ("gather_gemm_scatter" default: enqueue synchronizes once to read the
// K map sizes; "implicit_gemm": no staging, no sync), "epsilon", "threshold".
#include <cuda_runtime_api.h>

#include "../sparse_conv3d/plugin_fields.h"
#include "../trt_common.h"
#include "kernels.h"

namespace sparsefuse {
namespace trt {
namespace {

class SparseInverseConv3dPlugin : public PluginBase<SparseInverseConv3dPlugin> {
 public:
  static constexpr char kName[] = "SparseInverseConv3d";

  static std::vector<PluginField> fieldNames() { return SpconvFields::names(false); }
  static IPluginV3* create(PluginFieldCollection const* fc) {
    auto p = new SparseInverseConv3dPlugin();
    size_t bytes = 0;  // also validates the geometry (a non-empty coarse grid)
    bool const ok = p->f_.read(fc, false) && sf_spinv_map_workspace_size(&p->f_.geom, 0, 0, &bytes) == SF_OK;
    if (!ok) {
      delete p;
      return nullptr;
    }
    SfConvGeometry const& g = p->f_.geom;
    p->volume_ = g.kernel_size[0] * g.kernel_size[1] * g.kernel_size[2];
    return p;
  }

  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t getOutputDataTypes(DataType* out, int32_t, DataType const* in, int32_t) const noexcept override {
    out[0] = in[0];
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* in, int32_t, DimsExprs const*, int32_t, DimsExprs* out, int32_t,
                          IExprBuilder&) noexcept override {
    out[0].nbDims = 2;
    out[0].d[0] = in[2].d[0];  // the fine sites' rows
    out[0].d[1] = in[3].d[0];  // Cout
    return 0;
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t, int32_t) noexcept override {
    if (!linear(io[pos])) return false;
    DataType const t = io[pos].desc.type;
    if (pos == 0) return is_float(t);
    if (pos == 1 || pos == 2) return t == DataType::kINT32;
    return t == io[0].desc.type;  // weight, bias, out features
  }
  size_t getWorkspaceSize(DynamicPluginTensorDesc const* in, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    Layout l;
    return layout(in[0].max.d[0], in[2].max.d[0], in[0].max.d[1], in[3].max.d[0], in[0].desc.type, nullptr, &l) ==
                   SF_OK
               ? l.total
               : 0;
  }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
    int64_t const n = in[0].dims.d[0], cin = in[0].dims.d[1], m = in[2].dims.d[0], cout = in[3].dims.d[0];
    if (m == 0) return SF_OK;
    Layout l;
    SFT_CHECK(layout(n, m, cin, cout, in[0].type, workspace, &l));
    SFT_CHECK(sf_spinv_kernel_map(&f_.geom, static_cast<int32_t const*>(inputs[1]), n,
                                  static_cast<int32_t const*>(inputs[2]), m, l.nbr, 0, l.map, l.map_bytes, stream));
    void const* bias = in_count_ > 4 ? inputs[4] : nullptr;
    int const dtype = sf_dtype(in[0].type);
    if (n == 0)  // no coarse site: every output row is act(bias)
      return sf_spconv_direct(dtype, inputs[0], cin, inputs[3], bias, cout, l.nbr, m, volume_, f_.activation,
                              outputs[0], stream);
    if (f_.implicit)
      return sf_spconv_implicit(dtype, inputs[0], cin, inputs[3], bias, cout, l.nbr, m, volume_, f_.activation,
                                outputs[0], stream);
    SfConvPlan plan;
    SFT_CHECK(sf_spconv_plan(l.nbr, m, volume_, -1, f_.epsilon, f_.threshold, l.sidx, &plan, l.plan, l.plan_bytes,
                             stream));
    return sf_spconv_apply(dtype, &plan, inputs[0], n, cin, inputs[3], bias, cout, l.nbr, l.sidx, f_.activation,
                           l.gathered, l.partial, outputs[0], stream);
  }
  int32_t onShapeChange(PluginTensorDesc const*, int32_t nbIn, PluginTensorDesc const*, int32_t) noexcept override {
    in_count_ = nbIn;
    return 0;
  }
  int32_t configurePlugin(DynamicPluginTensorDesc const*, int32_t nbIn, DynamicPluginTensorDesc const*,
                          int32_t) noexcept override {
    in_count_ = nbIn;
    return 0;
  }
  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    writer_.clear();
    f_.write(writer_, false);
    return writer_.collection();
  }

 private:
  struct Layout {
    void *map = nullptr, *plan = nullptr, *gathered = nullptr, *partial = nullptr;
    int32_t *nbr = nullptr, *sidx = nullptr;
    size_t map_bytes = 0, plan_bytes = 0, total = 0;
  };

  // Worst-case carve of one workspace: coarse-site hash, kernel map, plan, staging.
  int layout(int64_t n, int64_t m, int64_t cin, int64_t cout, DataType type, void* base, Layout* l) const {
    const size_t elem = type == DataType::kHALF ? 2 : 4;
    SFT_CHECK(sf_spinv_map_workspace_size(&f_.geom, n, 0, &l->map_bytes));
    if (!f_.implicit) SFT_CHECK(sf_spconv_plan_workspace_size(m, volume_, &l->plan_bytes));
    char* p = static_cast<char*>(base);
    size_t used = 0;
    auto take = [&](size_t bytes) {
      void* at = p == nullptr ? nullptr : p + used;
      used += (bytes + 255) / 256 * 256;
      return at;
    };
    l->map = take(l->map_bytes);
    l->plan = take(l->plan_bytes);
    l->nbr = static_cast<int32_t*>(take(static_cast<size_t>(m * volume_) * 4));
    if (!f_.implicit) {  // implicit GEMM needs no staging
      l->sidx = static_cast<int32_t*>(take(static_cast<size_t>(m * volume_) * 4));
      // Every pair has a distinct (fine site, offset), so at most M*K gathered rows.
      l->gathered = take(static_cast<size_t>(m * volume_ * cin) * elem);
      l->partial = take(static_cast<size_t>(m * volume_ * cout) * elem);
    }
    l->total = used;
    return SF_OK;
  }

  SpconvFields f_;
  int32_t volume_ = 1;
  int32_t in_count_ = 5;
};

using SparseInverseConv3dCreator = Creator<SparseInverseConv3dPlugin>;
REGISTER_TENSORRT_PLUGIN(SparseInverseConv3dCreator);

}  // namespace

IPluginCreatorV3One* sparse_inverse_conv3d_creator() {
  static SparseInverseConv3dCreator creator;
  return &creator;
}

}  // namespace trt
}  // namespace sparsefuse
