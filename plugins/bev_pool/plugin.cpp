// TensorRT IPluginV3 for BEVPool (sparsefuse, version "1"); API notes in ../trt_common.h.
// inputs: depth[Ncam,D,H,W], feat[Ncam,H,W,C] (same float type), ranks_depth, ranks_feat,
// ranks_bev, interval_starts, interval_lengths (i32); output: bev[B,C,Y,X] of feat's type.
#include "../trt_common.h"
#include "kernels.h"

namespace sparsefuse {
namespace trt {
namespace {

class BEVPoolPlugin : public PluginBase<BEVPoolPlugin> {
 public:
  static constexpr char kName[] = "BEVPool";

  static std::vector<PluginField> fieldNames() {
    return {PluginField("bev_shape", nullptr, PluginFieldType::kINT32, 3)};
  }
  static IPluginV3* create(PluginFieldCollection const* fc) {
    auto p = new BEVPoolPlugin();
    p->shape_ = read_ints(fc, "bev_shape", {});
    if (p->shape_.size() != 3) {
      delete p;
      return nullptr;
    }
    return p;
  }

  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t getOutputDataTypes(DataType* out, int32_t, DataType const* in, int32_t) const noexcept override {
    out[0] = in[1];
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* in, int32_t, DimsExprs const*, int32_t, DimsExprs* out, int32_t,
                          IExprBuilder& b) noexcept override {
    out[0].nbDims = 4;
    out[0].d[0] = b.constant(shape_[0]);
    out[0].d[1] = in[1].d[3];
    out[0].d[2] = b.constant(shape_[1]);
    out[0].d[3] = b.constant(shape_[2]);
    return 0;
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t nbIn, int32_t) noexcept override {
    if (!linear(io[pos])) return false;
    if (pos == 0) return is_float(io[0].desc.type);
    if (pos == 1) return io[1].desc.type == io[0].desc.type;
    if (pos < nbIn) return io[pos].desc.type == DataType::kINT32;
    return io[pos].desc.type == io[0].desc.type;
  }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    auto i32 = [&](int k) { return static_cast<int32_t const*>(inputs[k]); };
    return sf_bev_pool(sf_dtype(in[1].type), inputs[0], inputs[1], i32(2), i32(3), i32(4), i32(5), i32(6),
                       in[5].dims.d[0], in[1].dims.d[3], shape_[0], shape_[1], shape_[2], outputs[0], stream);
  }
  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    writer_.clear();
    writer_.ints("bev_shape", shape_);
    return writer_.collection();
  }

 private:
  std::vector<int64_t> shape_;
};

using BEVPoolCreator = Creator<BEVPoolPlugin>;
REGISTER_TENSORRT_PLUGIN(BEVPoolCreator);

}  // namespace

IPluginCreatorV3One* bev_pool_creator() {
  static BEVPoolCreator creator;
  return &creator;
}

}  // namespace trt
}  // namespace sparsefuse
