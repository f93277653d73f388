// TensorRT IPluginV3 for Voxelize (sparsefuse, version "1"); API notes in ../trt_common.h.
// input: points[P,F] f32; outputs: voxel_features[V,F] f32 (reduce "mean") or [V,max_points_per_voxel,F]
// ("none"), voxel_coords[V,4] i32, the size tensor num_voxels[] i32 = V, declared with
// IExprBuilder::declareSizeTensor(2, opt, upper) where upper = min(P, max_voxels): TensorRT allocates
// the upper bound, the kernel writes V; and num_points_per_voxel[V] i32. The plugin always declares
// the four outputs (the ONNX node's fourth is optional in the schema; our exporter lists it).
#include <cmath>
#include <string>

#include "../trt_common.h"
#include "kernels.h"

namespace sparsefuse {
namespace trt {
namespace {

class VoxelizePlugin : public PluginBase<VoxelizePlugin> {
 public:
  static constexpr char kName[] = "Voxelize";

  static std::vector<PluginField> fieldNames() {
    return {PluginField("point_range", nullptr, PluginFieldType::kFLOAT32, 6),
            PluginField("voxel_size", nullptr, PluginFieldType::kFLOAT32, 3),
            PluginField("max_voxels", nullptr, PluginFieldType::kINT32, 1),
            PluginField("max_points_per_voxel", nullptr, PluginFieldType::kINT32, 1),
            PluginField("reduce", nullptr, PluginFieldType::kCHAR, 0),
            PluginField("order", nullptr, PluginFieldType::kCHAR, 0)};
  }
  static IPluginV3* create(PluginFieldCollection const* fc) {
    auto p = new VoxelizePlugin();
    p->range_ = read_floats(fc, "point_range");
    p->size_ = read_floats(fc, "voxel_size");
    p->max_voxels_ = read_ints(fc, "max_voxels", {-1})[0];
    p->max_points_ = read_ints(fc, "max_points_per_voxel", {0})[0];
    std::string const reduce = read_string(fc, "reduce", "mean");
    std::string const order = read_string(fc, "order", "key");
    p->reduce_ = reduce == "none" ? SF_VOXEL_REDUCE_NONE : SF_VOXEL_REDUCE_MEAN;
    p->order_ = order == "arrival" ? SF_VOXEL_ORDER_ARRIVAL : SF_VOXEL_ORDER_KEY;
    bool const modes_ok = (reduce == "mean" || reduce == "none") && (order == "key" || order == "arrival") &&
                          p->max_points_ >= 0 && (p->reduce_ == SF_VOXEL_REDUCE_MEAN || p->max_points_ > 0);
    if (p->range_.size() != 6 || p->size_.size() != 3 || p->max_voxels_ < 0 || !modes_ok) {
      delete p;
      return nullptr;
    }
    // (Z, Y, X) = round((max - min) / size) in double with ties to even, as Python's round().
    for (int a = 0; a < 3; ++a)
      p->grid_[2 - a] = static_cast<int64_t>(std::nearbyint(
          (static_cast<double>(p->range_[a + 3]) - static_cast<double>(p->range_[a])) / static_cast<double>(p->size_[a])));
    return p;
  }

  int32_t getNbOutputs() const noexcept override { return 4; }
  int32_t getOutputDataTypes(DataType* out, int32_t, DataType const*, int32_t) const noexcept override {
    out[0] = DataType::kFLOAT;
    out[1] = DataType::kINT32;
    out[2] = DataType::kINT32;
    out[3] = DataType::kINT32;
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* in, int32_t, DimsExprs const*, int32_t, DimsExprs* out, int32_t,
                          IExprBuilder& b) noexcept override {
    IDimensionExpr const* upper = b.operation(DimensionOperation::kMIN, *in[0].d[0], *b.constant(max_voxels_));
    IDimensionExpr const* opt = b.operation(DimensionOperation::kCEIL_DIV, *upper, *b.constant(2));
    IDimensionExpr const* voxels = b.declareSizeTensor(2, *opt, *upper);
    out[0].nbDims = reduce_ == SF_VOXEL_REDUCE_NONE ? 3 : 2;
    out[0].d[0] = voxels;
    if (reduce_ == SF_VOXEL_REDUCE_NONE) {
      out[0].d[1] = b.constant(max_points_);
      out[0].d[2] = in[0].d[1];
    } else {
      out[0].d[1] = in[0].d[1];
    }
    out[1].nbDims = 2;
    out[1].d[0] = voxels;
    out[1].d[1] = b.constant(4);
    out[2].nbDims = 0;  // size tensors are 0-D
    out[3].nbDims = 1;
    out[3].d[0] = voxels;
    return 0;
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t, int32_t) noexcept override {
    if (!linear(io[pos])) return false;
    return io[pos].desc.type == (pos <= 1 ? DataType::kFLOAT : DataType::kINT32);
  }
  size_t getWorkspaceSize(DynamicPluginTensorDesc const* in, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    size_t bytes = 0;
    return sf_voxelize_workspace_size(in[0].max.d[0], grid_[0], grid_[1], grid_[2], &bytes) == SF_OK ? bytes : 0;
  }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
    int64_t const points = in[0].dims.d[0];
    size_t bytes = 0;  // TensorRT sized the workspace for the profile's largest P; this call needs less
    int status = sf_voxelize_workspace_size(points, grid_[0], grid_[1], grid_[2], &bytes);
    if (status != SF_OK) return status;
    int64_t const capacity = points < max_voxels_ ? points : max_voxels_;
    return sf_voxelize(static_cast<float const*>(inputs[0]), points, in[0].dims.d[1], range_.data(), size_.data(),
                       grid_[0], grid_[1], grid_[2], max_voxels_, max_points_, reduce_, order_,
                       static_cast<float*>(outputs[0]), static_cast<int32_t*>(outputs[1]),
                       static_cast<int32_t*>(outputs[2]), static_cast<int32_t*>(outputs[3]), capacity, workspace,
                       bytes, stream);
  }
  PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    writer_.clear();
    writer_.floats("point_range", range_);
    writer_.floats("voxel_size", size_);
    writer_.ints("max_voxels", {max_voxels_});
    writer_.ints("max_points_per_voxel", {max_points_});
    writer_.string("reduce", reduce_ == SF_VOXEL_REDUCE_NONE ? "none" : "mean");
    writer_.string("order", order_ == SF_VOXEL_ORDER_ARRIVAL ? "arrival" : "key");
    return writer_.collection();
  }

 private:
  std::vector<float> range_, size_;
  int64_t max_voxels_ = 0;
  int64_t max_points_ = 0;  // max_points_per_voxel; 0 = all
  int reduce_ = SF_VOXEL_REDUCE_MEAN;
  int order_ = SF_VOXEL_ORDER_KEY;
  int64_t grid_[3] = {0, 0, 0};  // (Z, Y, X)
};

using VoxelizeCreator = Creator<VoxelizePlugin>;
REGISTER_TENSORRT_PLUGIN(VoxelizeCreator);

}  // namespace

IPluginCreatorV3One* voxelize_creator() {
  static VoxelizeCreator creator;
  return &creator;
}

}  // namespace trt
}  // namespace sparsefuse
