// TensorRT IPluginV3 for ScatterDense (sparsefuse, version "1"); API notes in ../trt_common.h.
// inputs: features[N,C] f32|f16, coords[N,4] i32; output: dense[B, C*Z, Y, X] of features' type.
#include "../trt_common.h"
#include "kernels.h"

namespace sparsefuse {
namespace trt {
namespace {

class ScatterDensePlugin : public PluginBase<ScatterDensePlugin> {
 public:
  static constexpr char kName[] = "ScatterDense";

  static std::vector<PluginField> fieldNames() {
    return {PluginField("spatial_shape", nullptr, PluginFieldType::kINT32, 3),
            PluginField("batch_size", nullptr, PluginFieldType::kINT32, 1)};
  }
  static IPluginV3* create(PluginFieldCollection const* fc) {
    auto p = new ScatterDensePlugin();
    p->shape_ = read_ints(fc, "spatial_shape", {});
    p->batch_ = read_ints(fc, "batch_size", {1})[0];
    if (p->shape_.size() != 3 || p->batch_ <= 0) {
      delete p;
      return nullptr;
    }
    return p;
  }

  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t getOutputDataTypes(DataType* out, int32_t, DataType const* in, int32_t) const noexcept override {
    out[0] = in[0];
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* in, int32_t, DimsExprs const*, int32_t, DimsExprs* out, int32_t,
                          IExprBuilder& b) noexcept override {
    out[0].nbDims = 4;
    out[0].d[0] = b.constant(batch_);
    out[0].d[1] = b.operation(DimensionOperation::kPROD, *in[0].d[1], *b.constant(shape_[0]));
    out[0].d[2] = b.constant(shape_[1]);
    out[0].d[3] = b.constant(shape_[2]);
    return 0;
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t, int32_t) noexcept override {
    if (!linear(io[pos])) return false;
    if (pos == 0) return is_float(io[0].desc.type);
    if (pos == 1) return io[1].desc.type == DataType::kINT32;
    return io[pos].desc.type == io[0].desc.type;
  }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    return sf_scatter_dense(sf_dtype(in[0].type), inputs[0], static_cast<int32_t const*>(inputs[1]), in[0].dims.d[0],
                            in[0].dims.d[1], batch_, shape_[0], shape_[1], shape_[2], outputs[0], stream);
  }
  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    writer_.clear();
    writer_.ints("spatial_shape", shape_);
    writer_.ints("batch_size", {batch_});
    return writer_.collection();
  }

 private:
  std::vector<int64_t> shape_;
  int64_t batch_ = 1;
};

using ScatterDenseCreator = Creator<ScatterDensePlugin>;
REGISTER_TENSORRT_PLUGIN(ScatterDenseCreator);

}  // namespace

IPluginCreatorV3One* scatter_dense_creator() {
  static ScatterDenseCreator creator;
  return &creator;
}

}  // namespace trt
}  // namespace sparsefuse
