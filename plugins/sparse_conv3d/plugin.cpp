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

namespace sparsefuse {
namespace trt {
namespace {

class SparseConv3dPlugin : public PluginBase<SparseConv3dPlugin> {
 public:
  static constexpr char kName[] = "SparseConv3d";

  static std::vector<PluginField> fieldNames() {
    return {PluginField("spatial_shape", nullptr, PluginFieldType::kINT32, 3),
            PluginField("kernel_size", nullptr, PluginFieldType::kINT32, 3),
            PluginField("stride", nullptr, PluginFieldType::kINT32, 3),
            PluginField("padding", nullptr, PluginFieldType::kINT32, 3),
            PluginField("dilation", nullptr, PluginFieldType::kINT32, 3),
            PluginField("subm", nullptr, PluginFieldType::kINT32, 1),
            PluginField("activation", nullptr, PluginFieldType::kCHAR, 0),
            PluginField("algo", nullptr, PluginFieldType::kCHAR, 0),
            PluginField("epsilon", nullptr, PluginFieldType::kFLOAT32, 1),
            PluginField("threshold", nullptr, PluginFieldType::kINT32, 1)};
  }
  static IPluginV3* create(PluginFieldCollection const* fc) {
    auto p = new SparseConv3dPlugin();
    auto grab = [&](char const* name, std::vector<int64_t> fallback, int32_t* dst) {
      auto v = read_ints(fc, name, fallback);
      for (size_t a = 0; a < 3 && a < v.size(); ++a) dst[a] = static_cast<int32_t>(v[a]);
      return v.size() == 3;
    };
    SfConvGeometry& g = p->geom_;
    bool ok = grab("spatial_shape", {}, g.spatial_shape) && grab("kernel_size", {}, g.kernel_size) &&
              grab("stride", {1, 1, 1}, g.stride) && grab("padding", {0, 0, 0}, g.padding) &&
              grab("dilation", {1, 1, 1}, g.dilation);
    g.subm = static_cast<int32_t>(read_ints(fc, "subm", {0})[0] != 0);
    g.num_batches = 0;  // unknown at build time: hash table, full-width keys
    std::string act = read_string(fc, "activation", "none");
    p->activation_ = act == "relu" ? SF_ACT_RELU : SF_ACT_NONE;
    std::string algo = read_string(fc, "algo", "gather_gemm_scatter");
    p->implicit_ = algo == "implicit_gemm";
    auto eps = read_floats(fc, "epsilon");
    if (!eps.empty()) p->epsilon_ = eps[0];
    p->threshold_ = read_ints(fc, "threshold", {p->threshold_})[0];
    ok = ok && (act == "none" || act == "relu") && (algo == "gather_gemm_scatter" || p->implicit_) &&
         sf_spconv_out_shape(&g) == SF_OK;
    if (!ok) {
      delete p;
      return nullptr;
    }
    p->volume_ = g.kernel_size[0] * g.kernel_size[1] * g.kernel_size[2];
    p->reach_ = 1;
    for (int a = 0; a < 3; ++a) {
      const int64_t step = g.stride[a] / std::gcd(g.stride[a], g.dilation[a]);
      p->reach_ *= (g.kernel_size[a] + step - 1) / step;
    }
    return p;
  }

  int32_t getNbOutputs() const noexcept override { return geom_.subm ? 2 : 3; }
  int32_t getOutputDataTypes(DataType* out, int32_t nbOut, DataType const* in, int32_t) const noexcept override {
    out[0] = in[0];
    out[1] = DataType::kINT32;
    if (nbOut > 2) out[2] = DataType::kINT32;
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* in, int32_t, DimsExprs const*, int32_t, DimsExprs* out, int32_t,
                          IExprBuilder& b) noexcept override {
    IDimensionExpr const* rows = in[0].d[0];
    if (!geom_.subm) {
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
    if (geom_.subm) {
      if (n > 0) SFT_CHECK_CUDA(cudaMemcpyAsync(out_coords, coords, n * 4 * sizeof(int32_t), cudaMemcpyDeviceToDevice, stream));
    } else {
      auto* num_out = static_cast<int32_t*>(outputs[2]);
      SFT_CHECK(sf_spconv_out_sites(&geom_, coords, n, out_coords, n * reach_, num_out, l.sites, l.sites_bytes, stream));
      int32_t host_m = 0;
      SFT_CHECK_CUDA(cudaMemcpyAsync(&host_m, num_out, sizeof(int32_t), cudaMemcpyDeviceToHost, stream));
      SFT_CHECK_CUDA(cudaStreamSynchronize(stream));
      m = host_m;
    }
    if (m == 0) return SF_OK;
    SFT_CHECK(sf_spconv_kernel_map(&geom_, coords, n, out_coords, m, nullptr, l.nbr, 0, l.map, l.map_bytes, stream));
    void const* bias = in_count_ > 3 ? inputs[3] : nullptr;
    if (implicit_)
      return sf_spconv_implicit(sf_dtype(in[0].type), inputs[0], cin, inputs[2], bias, cout, l.nbr, m, volume_,
                                activation_, outputs[0], stream);
    SfConvPlan plan;
    int32_t const center = geom_.subm ? volume_ / 2 : -1;
    SFT_CHECK(sf_spconv_plan(l.nbr, m, volume_, center, epsilon_, threshold_, l.sidx, &plan, l.plan,
                                   l.plan_bytes, stream));
    return sf_spconv_apply(sf_dtype(in[0].type), &plan, inputs[0], n, cin, inputs[2], bias, cout, l.nbr, l.sidx,
                           activation_, l.gathered, l.partial, outputs[0], stream);
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
    auto vec = [](int32_t const* v) { return std::vector<int64_t>{v[0], v[1], v[2]}; };
    writer_.clear();
    writer_.ints("spatial_shape", vec(geom_.spatial_shape));
    writer_.ints("kernel_size", vec(geom_.kernel_size));
    writer_.ints("stride", vec(geom_.stride));
    writer_.ints("padding", vec(geom_.padding));
    writer_.ints("dilation", vec(geom_.dilation));
    writer_.ints("subm", {geom_.subm});
    writer_.string("activation", activation_ == SF_ACT_RELU ? "relu" : "none");
    writer_.string("algo", implicit_ ? "implicit_gemm" : "gather_gemm_scatter");
    writer_.floats("epsilon", {static_cast<float>(epsilon_)});
    writer_.ints("threshold", {threshold_});
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
    const int64_t m = geom_.subm ? n : n * reach_;
    const size_t elem = type == DataType::kHALF ? 2 : 4;
    if (!geom_.subm) SFT_CHECK(sf_spconv_sites_workspace_size(&geom_, n, &l->sites_bytes));
    SFT_CHECK(sf_spconv_map_workspace_size(&geom_, n, 0, &l->map_bytes));
    if (!implicit_) SFT_CHECK(sf_spconv_plan_workspace_size(m, volume_, &l->plan_bytes));
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
    if (!implicit_) {  // implicit GEMM needs no staging
      l->sidx = static_cast<int32_t*>(take(static_cast<size_t>(m * volume_) * 4));
      // Every pair has a distinct (input, offset), so at most N*K gathered rows.
      l->gathered = take(static_cast<size_t>(n * volume_ * cin) * elem);
      l->partial = take(static_cast<size_t>((n * volume_ + (geom_.subm ? n : 0)) * cout) * elem);
    }
    l->total = used;
    return SF_OK;
  }

  SfConvGeometry geom_{};
  int32_t volume_ = 1;
  int64_t reach_ = 1;
  int32_t activation_ = SF_ACT_NONE;
  double epsilon_ = 0.4;
  int64_t threshold_ = 8192;
  int32_t in_count_ = 4;
  bool implicit_ = false;
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
