// Plugin fields shared by SparseConv3d and SparseInverseConv3d (TensorRT glue): the conv geometry,
// the activation and the GEMM knobs ("algo", "epsilon", "threshold"); API notes in ../trt_common.h.
#pragma once

#include <string>
#include <vector>

#include "../trt_common.h"
#include "kernels.h"

namespace sparsefuse {
namespace trt {

struct SpconvFields {
  SfConvGeometry geom{};  // num_batches 0: unknown at build time (hash table, full-width keys)
  int32_t activation = SF_ACT_NONE;
  bool implicit = false;  // "implicit_gemm" instead of "gather_gemm_scatter"
  double epsilon = 0.4;
  int64_t threshold = 8192;

  // The field list; `with_subm`: SparseConv3d's "subm" field (the inverse conv is never submanifold).
  static std::vector<PluginField> names(bool with_subm) {
    std::vector<PluginField> out = {PluginField("spatial_shape", nullptr, PluginFieldType::kINT32, 3),
                                    PluginField("kernel_size", nullptr, PluginFieldType::kINT32, 3),
                                    PluginField("stride", nullptr, PluginFieldType::kINT32, 3),
                                    PluginField("padding", nullptr, PluginFieldType::kINT32, 3),
                                    PluginField("dilation", nullptr, PluginFieldType::kINT32, 3)};
    if (with_subm) out.emplace_back("subm", nullptr, PluginFieldType::kINT32, 1);
    out.emplace_back("activation", nullptr, PluginFieldType::kCHAR, 0);
    out.emplace_back("algo", nullptr, PluginFieldType::kCHAR, 0);
    out.emplace_back("epsilon", nullptr, PluginFieldType::kFLOAT32, 1);
    out.emplace_back("threshold", nullptr, PluginFieldType::kINT32, 1);
    return out;
  }

  // False when a required field is missing or a value is not allowed (geometry checks are the caller's).
  bool read(PluginFieldCollection const* fc, bool with_subm) {
    auto grab = [&](char const* name, std::vector<int64_t> fallback, int32_t* dst) {
      auto v = read_ints(fc, name, fallback);
      for (size_t a = 0; a < 3 && a < v.size(); ++a) dst[a] = static_cast<int32_t>(v[a]);
      return v.size() == 3;
    };
    bool ok = grab("spatial_shape", {}, geom.spatial_shape) && grab("kernel_size", {}, geom.kernel_size) &&
              grab("stride", {1, 1, 1}, geom.stride) && grab("padding", {0, 0, 0}, geom.padding) &&
              grab("dilation", {1, 1, 1}, geom.dilation);
    geom.subm = with_subm ? static_cast<int32_t>(read_ints(fc, "subm", {0})[0] != 0) : 0;
    geom.num_batches = 0;
    std::string const act = read_string(fc, "activation", "none");
    activation = act == "relu" ? SF_ACT_RELU : SF_ACT_NONE;
    std::string const algo = read_string(fc, "algo", "gather_gemm_scatter");
    implicit = algo == "implicit_gemm";
    auto eps = read_floats(fc, "epsilon");
    if (!eps.empty()) epsilon = eps[0];
    threshold = read_ints(fc, "threshold", {threshold})[0];
    return ok && (act == "none" || act == "relu") && (algo == "gather_gemm_scatter" || implicit);
  }

  void write(FieldWriter& w, bool with_subm) const {
    auto vec = [](int32_t const* v) { return std::vector<int64_t>{v[0], v[1], v[2]}; };
    w.ints("spatial_shape", vec(geom.spatial_shape));
    w.ints("kernel_size", vec(geom.kernel_size));
    w.ints("stride", vec(geom.stride));
    w.ints("padding", vec(geom.padding));
    w.ints("dilation", vec(geom.dilation));
    if (with_subm) w.ints("subm", {geom.subm});
    w.string("activation", activation == SF_ACT_RELU ? "relu" : "none");
    w.string("algo", implicit ? "implicit_gemm" : "gather_gemm_scatter");
    w.floats("epsilon", {static_cast<float>(epsilon)});
    w.ints("threshold", {threshold});
  }
};

}  // namespace trt
}  // namespace sparsefuse
