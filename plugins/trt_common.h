// Thin TensorRT glue shared by the four sparsefuse plugins (docs/design.md §4, item 6).
//
// API checked against the public TensorRT 10.x headers in NVIDIA/TensorRT include/:
//   NvInferPluginBase.h (commit 2a387d69: PluginField, PluginFieldCollection, PluginFieldType,
//     TensorRTPhase, PluginCapabilityType, v_1_0::IPluginV3 {getCapabilityInterface, clone});
//   NvInferRuntime.h (10.x: v_1_0::IPluginV3OneCore {getPluginName, getPluginVersion,
//     getPluginNamespace}, v_1_0::IPluginV3OneBuild {configurePlugin, getOutputDataTypes,
//     getOutputShapes, supportsFormatCombination, getNbOutputs, getWorkspaceSize},
//     v_1_0::IPluginV3OneRuntime {onShapeChange, enqueue, attachToContext, getFieldsToSerialize},
//     IExprBuilder {constant, operation, declareSizeTensor}, DimsExprs, DynamicPluginTensorDesc);
//   IPluginCreatorV3One {createPlugin(name, fc, phase), getFieldNames, getPluginName,
//     getPluginVersion, getPluginNamespace} and the getCreators / setLoggerFinder entry points as
//   documented in NVIDIA/TensorRT samples (dynamic plugin loading, TensorRT >= 10.0).
// Compiled in CI against NVIDIA's TensorRT 10.3 and 11.1 headers (tests/plugins/test_trt_headers.py);
// never run inside TensorRT there: see docs/native-build.md.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "sf_abi.h"

// Early return of a non-zero launcher status / CUDA error from enqueue().
#define SFT_CHECK(expr)          \
  do {                           \
    int sft_st_ = (expr);        \
    if (sft_st_ != 0) return sft_st_; \
  } while (0)
#define SFT_CHECK_CUDA(expr) SFT_CHECK(static_cast<int>(expr))

namespace sparsefuse {
namespace trt {

using namespace nvinfer1;

constexpr char kNamespace[] = "sparsefuse";
constexpr char kVersion[] = "1";

// ---- reading fields (the ONNX parser passes INT(S) as kINT32, FLOAT(S) as kFLOAT32, STRING as kCHAR) ----

inline PluginField const* find_field(PluginFieldCollection const* fc, char const* name) {
  if (fc == nullptr) return nullptr;
  for (int32_t i = 0; i < fc->nbFields; ++i)
    if (fc->fields[i].name != nullptr && std::strcmp(fc->fields[i].name, name) == 0) return &fc->fields[i];
  return nullptr;
}

inline std::vector<int64_t> read_ints(PluginFieldCollection const* fc, char const* name,
                                      std::vector<int64_t> fallback) {
  PluginField const* f = find_field(fc, name);
  if (f == nullptr || f->data == nullptr) return fallback;
  std::vector<int64_t> out(static_cast<size_t>(f->length));
  for (int32_t i = 0; i < f->length; ++i) {
    if (f->type == PluginFieldType::kINT64)
      out[i] = static_cast<int64_t const*>(f->data)[i];
    else if (f->type == PluginFieldType::kINT32)
      out[i] = static_cast<int32_t const*>(f->data)[i];
    else
      return fallback;
  }
  return out;
}

inline std::vector<float> read_floats(PluginFieldCollection const* fc, char const* name) {
  PluginField const* f = find_field(fc, name);
  std::vector<float> out;
  if (f == nullptr || f->data == nullptr) return out;
  for (int32_t i = 0; i < f->length; ++i) {
    if (f->type == PluginFieldType::kFLOAT32)
      out.push_back(static_cast<float const*>(f->data)[i]);
    else if (f->type == PluginFieldType::kFLOAT64)
      out.push_back(static_cast<float>(static_cast<double const*>(f->data)[i]));
    else
      return {};
  }
  return out;
}

inline std::string read_string(PluginFieldCollection const* fc, char const* name, std::string fallback) {
  PluginField const* f = find_field(fc, name);
  if (f == nullptr || f->data == nullptr || f->type != PluginFieldType::kCHAR) return fallback;
  std::string s(static_cast<char const*>(f->data), static_cast<size_t>(f->length));
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

// ---- writing fields: owns the storage behind getFieldsToSerialize() ----

class FieldWriter {
 public:
  void clear() {
    fields_.clear();
    ints_.clear();
    floats_.clear();
    strings_.clear();
  }
  void ints(char const* name, std::vector<int64_t> const& values) {
    ints_.emplace_back(values.begin(), values.end());
    pending_.push_back({name, 0, ints_.size() - 1});
  }
  void floats(char const* name, std::vector<float> const& values) {
    floats_.push_back(values);
    pending_.push_back({name, 1, floats_.size() - 1});
  }
  void string(char const* name, std::string const& value) {
    strings_.push_back(value);
    pending_.push_back({name, 2, strings_.size() - 1});
  }
  // Pointers are taken only once all storage is in place (vectors may reallocate while adding).
  PluginFieldCollection const* collection() {
    fields_.clear();
    for (auto const& p : pending_) {
      if (p.kind == 0)
        fields_.emplace_back(p.name, ints_[p.index].data(), PluginFieldType::kINT32,
                             static_cast<int32_t>(ints_[p.index].size()));
      else if (p.kind == 1)
        fields_.emplace_back(p.name, floats_[p.index].data(), PluginFieldType::kFLOAT32,
                             static_cast<int32_t>(floats_[p.index].size()));
      else
        fields_.emplace_back(p.name, strings_[p.index].c_str(), PluginFieldType::kCHAR,
                             static_cast<int32_t>(strings_[p.index].size()));
    }
    pending_.clear();
    fc_.nbFields = static_cast<int32_t>(fields_.size());
    fc_.fields = fields_.data();
    return &fc_;
  }

 private:
  struct Pending {
    char const* name;
    int kind;
    size_t index;
  };
  std::vector<Pending> pending_;
  std::vector<PluginField> fields_;
  std::vector<std::vector<int32_t>> ints_;
  std::vector<std::vector<float>> floats_;
  std::vector<std::string> strings_;
  PluginFieldCollection fc_{};
};

inline bool is_float(DataType t) { return t == DataType::kFLOAT || t == DataType::kHALF; }
inline int sf_dtype(DataType t) { return t == DataType::kHALF ? 1 : 0; }  // SF_FLOAT16 / SF_FLOAT32
inline bool linear(DynamicPluginTensorDesc const& d) { return d.desc.format == TensorFormat::kLINEAR; }

// ---- the one base class: capabilities, identity, no-op configuration ----

template <class Derived>
class PluginBase : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
 public:
  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    switch (type) {
      case PluginCapabilityType::kCORE:
        return static_cast<IPluginV3OneCore*>(this);
      case PluginCapabilityType::kBUILD:
        return static_cast<IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME:
        return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }
  IPluginV3* clone() noexcept override { return new (std::nothrow) Derived(static_cast<Derived const&>(*this)); }
  AsciiChar const* getPluginName() const noexcept override { return Derived::kName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }
  int32_t configurePlugin(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) noexcept override {
    return 0;
  }
  int32_t onShapeChange(PluginTensorDesc const*, int32_t, PluginTensorDesc const*, int32_t) noexcept override {
    return 0;
  }
  IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }

 protected:
  FieldWriter writer_;
};

// ---- creator: field names from Derived::fieldNames(), construction from Derived::create(fc) ----

template <class Plugin>
class Creator : public IPluginCreatorV3One {
 public:
  Creator() : names_(Plugin::fieldNames()) {
    fc_.nbFields = static_cast<int32_t>(names_.size());
    fc_.fields = names_.data();
  }
  IPluginV3* createPlugin(AsciiChar const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
    try {
      return Plugin::create(fc);
    } catch (...) {
      return nullptr;
    }
  }
  PluginFieldCollection const* getFieldNames() noexcept override { return &fc_; }
  AsciiChar const* getPluginName() const noexcept override { return Plugin::kName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

 private:
  std::vector<PluginField> names_;
  PluginFieldCollection fc_{};
};

// Creator instances, defined next to each plugin and listed by trt_register.cpp.
IPluginCreatorV3One* voxelize_creator();
IPluginCreatorV3One* sparse_conv3d_creator();
IPluginCreatorV3One* sparse_inverse_conv3d_creator();
IPluginCreatorV3One* scatter_dense_creator();
IPluginCreatorV3One* bev_pool_creator();

}  // namespace trt
}  // namespace sparsefuse
