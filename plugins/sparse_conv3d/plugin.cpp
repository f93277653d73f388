// TensorRT IPluginV3 for SparseConv3d (sparsefuse, version "1"); API notes in ../trt_common.h.
// inputs: features[N,Cin] f32|f16, coords[N,4] i32, weight[Cout,kz,ky,kx,Cin], bias[Cout]?
// outputs: features[M,Cout], coords[M,4] i32; strided layers (subm=0) add a third output, the size
// tensor num_out[] i32 = M, declared with declareSizeTensor(2, opt=N, upper=N*reach), where reach
// bounds the outputs one input can reach. The ONNX node must then list three outputs (the
// TensorRT ONNX parser requires node outputs == plugin outputs).
//
// Field "algo": "gather_gemm_scatter" (default; enqueue synchronizes its stream once to read the K
// map sizes, workspace sized for every pair present) or "implicit_gemm" (no staging, no sync).
// Strided layers synchronize once more to read M.
#include <cuda_runtime_api.h>

#include <numeric>

#include "../trt_common.h"
#include "kernels.h"
#include "plugin_fields.h"

namespace sparsefuse {
namespace trt {
namespace {

class SparseConv3dPlugin : public PluginBase<SparseConv3dPlugin> {
 public:
  static constexpr char kName[] = "SparseConv3d";

  static std::vector<PluginField> fieldNames() { return SpconvFields::names(true); }
  static IPluginV3* create(PluginFieldCollection const* fc) {
    auto p = new SparseConv3dPlugin();
    bool const ok = p->f_.read(fc, true) && sf_spconv_out_shape(&p->f_.geom) == SF_OK;
    if (!ok) {
      delete p;
      return nullptr;
    }
    SfConvGeometry const& g = p->f_.geom;
    p->volume_ = g.kernel_size[0] * g.kernel_size[1] * g.kernel_size[2];
    p->reach_ = 1;
    for (int a = 0; a < 3; ++a) {
      const int64_t step = g.stride[a] / std::gcd(g.stride[a], g.dilation[a]);
      p->reach_ *= (g.kernel_size[a] + step - 1) / step;
    }
    return p;
  }

  int32_t getNbOutputs() const noexcept override { return f_.geom.subm ? 2 : 3; }
  int32_t getOutputDataTypes(DataType* out, int32_t nbOut, DataType const* in, int32_t) const noexcept override {
    out[0] = in[0];
    out[1] = DataType::kINT32;
    if (nbOut > 2) out[2] = DataType::kINT32;
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* in, int32_t, DimsExprs const*, int32_t, DimsExprs* out, int32_t,
                          IExprBuilder& b) noexcept override {
    IDimensionExpr const* rows = in[0].d[0];
    if (!f_.geom.subm) {
      IDimensionExpr const* upper = b.operation(DimensionOperation::kPROD, *in[0].d[0], *b.constant(reach_));
      rows = b.declareSizeTensor(2, *in[0].d[0], *upper);
      out[2].nbDims = 0;
    }
    out[0].nbDims = 2;
    out[0].d[0] = rows;
    out[0].d[1] = in[2].d[0];
    out[1].nbDims = 2;
    out[1].d[0] = rows;
    out[1].d[1] = b.constant(4);
    return 0;
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t nbIn, int32_t) noexcept override {
    if (!linear(io[pos])) return false;
    DataType const t = io[pos].desc.type;
    if (pos == 0) return is_float(t);
    if (pos == 1) return t == DataType::kINT32;
    if (pos < nbIn) return t == io[0].desc.type;      // weight, bias
    if (pos == nbIn) return t == io[0].desc.type;     // out features
    return t == DataType::kINT32;                     // out coords, num_out
  }
  size_t getWorkspaceSize(DynamicPluginTensorDesc const* in, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    Layout l;
    return layout(in[0].max.d[0], in[0].max.d[1], in[2].max.d[0], in[0].desc.type, nullptr, &l) == SF_OK ? l.total : 0;
  }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
    int64_t const n = in[0].dims.d[0], cin = in[0].dims.d[1], cout = in[2].dims.d[0];
    auto const* coords = static_cast<int32_t const*>(inputs[1]);
    auto* out_coords = static_cast<int32_t*>(outputs[1]);
    Layout l;
    SFT_CHECK(layout(n, cin, cout, in[0].type, workspace, &l));
    int64_t m = n;
    if (f_.geom.subm) {
      if (n > 0) SFT_CHECK_CUDA(cudaMemcpyAsync(out_coords, coords, n * 4 * sizeof(int32_t), cudaMemcpyDeviceToDevice, stream));
    } else {
      auto* num_out = static_cast<int32_t*>(outputs[2]);
      SFT_CHECK(sf_spconv_out_sites(&f_.geom, coords, n, out_coords, n * reach_, num_out, l.sites, l.sites_bytes, stream));
      int32_t host_m = 0;
      SFT_CHECK_CUDA(cudaMemcpyAsync(&host_m, num_out, sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
      SFT_CHECK_CUDA(cudaStreamSynchronize(stream));
      m = host_m;
    }
    if (m == 0) return SF_OK;
    SFT_CHECK(sf_spconv_kernel_map(&f_.geom, coords, n, out_coords, m, nullptr, l.nbr, 0, l.map, l.map_bytes, stream));
    void const* bias = in_count_ > 3 ? inputs[3] : nullptr;
    if (f_.implicit)
      return sf_spconv_implicit(sf_dtype(in[0].type), inputs[0], cin, inputs[2], bias, cout, l.nbr, m, volume_,
                                f_.activation, outputs[0], stream);
    SfConvPlan plan;
    int32_t const center = f_.geom.subm ? volume_ / 2 : -1;
    SFT_CHECK(sf_spconv_plan(l.nbr, m, volume_, center, f_.epsilon, f_.threshold, l.sidx, &plan, l.plan,
                                   l.plan_bytes, stream));
    return sf_spconv_apply(sf_dtype(in[0].type), &plan, inputs[0], n, cin, inputs[2], bias, cout, l.nbr, l.sidx,
                           f_.activation, l.gathered, l.partial, outputs[0], stream);
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
    f_.write(writer_, true);
    return writer_.collection();
  }

 private:
  struct Layout {
    void *sites = nullptr, *map = nullptr, *plan = nullptr, *gathered = nullptr, *partial = nullptr;
    int32_t *nbr = nullptr, *sidx = nullptr;
    size_t sites_bytes = 0, map_bytes = 0, plan_bytes = 0, total = 0;
  };

  // Worst-case carve of one workspace: out-site sort, input hash, kernel map, plan, staging.
  int layout(int64_t n, int64_t cin, int64_t cout, DataType type, void* base, Layout* l) const {
    const int64_t m = f_.geom.subm ? n : n * reach_;
    const size_t elem = type == DataType::kHALF ? 2 : 4;
    if (!f_.geom.subm) SFT_CHECK(sf_spconv_sites_workspace_size(&f_.geom, n, &l->sites_bytes));
    SFT_CHECK(sf_spconv_map_workspace_size(&f_.geom, n, 0, &l->map_bytes));
    if (!f_.implicit) SFT_CHECK(sf_spconv_plan_workspace_size(m, volume_, &l->plan_bytes));
    char* p = static_cast<char*>(base);
    size_t used = 0;
    auto take = [&](size_t bytes) {
      void* at = p == nullptr ? nullptr : p + used;
      used += (bytes + 255) / 256 * 256;
      return at;
    };
    l->sites = take(l->sites_bytes);
    l->map = take(l->map_bytes);
    l->plan = take(l->plan_bytes);
    l->nbr = static_cast<int32_t*>(take(static_cast<size_t>(m * volume_) * 4));
    if (!f_.implicit) {  // implicit GEMM needs no staging
      l->sidx = static_cast<int32_t*>(take(static_cast<size_t>(m * volume_) * 4));
      // Every pair has a distinct (input, offset), so at most N*K gathered rows.
      l->gathered = take(static_cast<size_t>(n * volume_ * cin) * elem);
      l->partial = take(static_cast<size_t>((n * volume_ + (f_.geom.subm ? n : 0)) * cout) * elem);
    }
    l->total = used;
    return SF_OK;
  }

  SpconvFields f_;
  int32_t volume_ = 1;
  int64_t reach_ = 1;
  int32_t in_count_ = 4;
};

using SparseConv3dCreator = Creator<SparseConv3dPlugin>;
REGISTER_TENSORRT_PLUGIN(SparseConv3dCreator);

}  // namespace

IPluginCreatorV3One* sparse_conv3d_creator() {
  static SparseConv3dCreator creator;
  return &creator;
}

}  // namespace trt
}  // namespace sparsefuse
