// TensorRT IPluginV3 for SparseInverseConv3d (sparsefuse, version "1"); API notes in ../trt_common.h.
// inputs: features[N,Cin] f32|f16 (coarse sites), coords[N,4] i32 (coarse), out_coords[M,4] i32 (fine),
// weight[Cout,kz,ky,kx,Cin], bias[Cout]?
// output: features[M,Cout]: M is out_coords' row count, so no size tensor and no host sync for M.
//
// Fields: the paired strided conv's geometry (spatial_shape = the fine grid), activation, and
// SparseConv3d's GEMM knobs: "algo" ("gather_gemm_scatter" default: enqueue synchronizes once to read the
// K map sizes; "implicit_gemm": no staging, no sync), "epsilon", "threshold".
#include <cuda_runtime_api.h>

#include "../trt_common.h"
#include "kernels.h"

namespace sparsefuse {
namespace trt {
namespace {

class SparseInverseConv3dPlugin : public PluginBase<SparseInverseConv3dPlugin> {
 public:
  static constexpr char kName[] = "SparseInverseConv3d";

  static std::vector<PluginField> fieldNames() {
    return {PluginField("spatial_shape", nullptr, PluginFieldType::kINT32, 3),
            PluginField("kernel_size", nullptr, PluginFieldType::kINT32, 3),
            PluginField("stride", nullptr, PluginFieldType::kINT32, 3),
            PluginField("padding", nullptr, PluginFieldType::kINT32, 3),
            PluginField("dilation", nullptr, PluginFieldType::kINT32, 3),
            PluginField("activation", nullptr, PluginFieldType::kCHAR, 0),
            PluginField("algo", nullptr, PluginFieldType::kCHAR, 0),
            PluginField("epsilon", nullptr, PluginFieldType::kFLOAT32, 1),
            PluginField("threshold", nullptr, PluginFieldType::kINT32, 1)};
  }
  static IPluginV3* create(PluginFieldCollection const* fc) {
    auto p = new SparseInverseConv3dPlugin();
    auto grab = [&](char const* name, std::vector<int64_t> fallback, int32_t* dst) {
      auto v = read_ints(fc, name, fallback);
      for (size_t a = 0; a < 3 && a < v.size(); ++a) dst[a] = static_cast<int32_t>(v[a]);
      return v.size() == 3;
    };
    SfConvGeometry& g = p->geom_;
    bool ok = grab("spatial_shape", {}, g.spatial_shape) && grab("kernel_size", {}, g.kernel_size) &&
              grab("stride", {1, 1, 1}, g.stride) && grab("padding", {0, 0, 0}, g.padding) &&
              grab("dilation", {1, 1, 1}, g.dilation);
    g.subm = 0;
    g.num_batches = 0;  // unknown at build time: hash table, full-width keys
    std::string act = read_string(fc, "activation", "none");
    p->activation_ = act == "relu" ? SF_ACT_RELU : SF_ACT_NONE;
    std::string algo = read_string(fc, "algo", "gather_gemm_scatter");
    p->implicit_ = algo == "implicit_gemm";
    auto eps = read_floats(fc, "epsilon");
    if (!eps.empty()) p->epsilon_ = eps[0];
    p->threshold_ = read_ints(fc, "threshold", {p->threshold_})[0];
    size_t bytes = 0;  // also validates the geometry (a non-empty coarse grid)
    ok = ok && (act == "none" || act == "relu") && (algo == "gather_gemm_scatter" || p->implicit_) &&
         sf_spinv_map_workspace_size(&g, 0, 0, &bytes) == SF_OK;
    if (!ok) {
      delete p;
      return nullptr;
    }
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
    SFT_CHECK(sf_spinv_kernel_map(&geom_, static_cast<int32_t const*>(inputs[1]), n,
                                  static_cast<int32_t const*>(inputs[2]), m, l.nbr, 0, l.map, l.map_bytes, stream));
    void const* bias = in_count_ > 4 ? inputs[4] : nullptr;
    int const dtype = sf_dtype(in[0].type);
    if (n == 0)  // no coarse site: every output row is act(bias)
      return sf_spconv_direct(dtype, inputs[0], cin, inputs[3], bias, cout, l.nbr, m, volume_, activation_,
                              outputs[0], stream);
    if (implicit_)
      return sf_spconv_implicit(dtype, inputs[0], cin, inputs[3], bias, cout, l.nbr, m, volume_, activation_,
                                outputs[0], stream);
    SfConvPlan plan;
    SFT_CHECK(sf_spconv_plan(l.nbr, m, volume_, -1, epsilon_, threshold_, l.sidx, &plan, l.plan, l.plan_bytes,
                             stream));
    return sf_spconv_apply(dtype, &plan, inputs[0], n, cin, inputs[3], bias, cout, l.nbr, l.sidx, activation_,
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
    auto vec = [](int32_t const* v) { return std::vector<int64_t>{v[0], v[1], v[2]}; };
    writer_.clear();
    writer_.ints("spatial_shape", vec(geom_.spatial_shape));
    writer_.ints("kernel_size", vec(geom_.kernel_size));
    writer_.ints("stride", vec(geom_.stride));
    writer_.ints("padding", vec(geom_.padding));
    writer_.ints("dilation", vec(geom_.dilation));
    writer_.string("activation", activation_ == SF_ACT_RELU ? "relu" : "none");
    writer_.string("algo", implicit_ ? "implicit_gemm" : "gather_gemm_scatter");
    writer_.floats("epsilon", {static_cast<float>(epsilon_)});
    writer_.ints("threshold", {threshold_});
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
    SFT_CHECK(sf_spinv_map_workspace_size(&geom_, n, 0, &l->map_bytes));
    if (!implicit_) SFT_CHECK(sf_spconv_plan_workspace_size(m, volume_, &l->plan_bytes));
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
    if (!implicit_) {  // implicit GEMM needs no staging
      l->sidx = static_cast<int32_t*>(take(static_cast<size_t>(m * volume_) * 4));
      // Every pair has a distinct (fine site, offset), so at most M*K gathered rows.
      l->gathered = take(static_cast<size_t>(m * volume_ * cin) * elem);
      l->partial = take(static_cast<size_t>(m * volume_ * cout) * elem);
    }
    l->total = used;
    return SF_OK;
  }

  SfConvGeometry geom_{};
  int32_t volume_ = 1;
  int32_t activation_ = SF_ACT_NONE;
  double epsilon_ = 0.4;
  int64_t threshold_ = 8192;
  int32_t in_count_ = 5;
  bool implicit_ = false;
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
