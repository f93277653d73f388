// TEST FIXTURE, NOT TensorRT. Exercises the plugin glue (plugins/*/plugin.cpp, trt_register.cpp)
// compiled against NVIDIA's real TensorRT headers (10.x and 11.x): static registration and
// getCreators, creation from fields, serialization round trip, output counts, types and shape
// expressions (evaluated here on constants), rejection of bad fields. Prints "OK" on success.
// Linked against libsparsefuse_trt_plugins.so built with the same headers; no GPU, no TensorRT:
// the registry and the expression builder below are test doubles implementing the public
// interfaces (IPluginRegistry, and IDimensionExpr / IExprBuilder through their apiv:: impls).
#include <cstdio>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include <NvInferRuntime.h>

using namespace nvinfer1;

namespace {
// Function-local statics: the plugin library's static registrars run before this executable's
// namespace-scope objects are constructed.
std::vector<IPluginCreatorInterface*>& registered() {
  static std::vector<IPluginCreatorInterface*> creators;
  return creators;
}
struct SizeDecl {
  int32_t index;
  int64_t opt, upper;
};
std::vector<SizeDecl> g_sizes;
int g_failures = 0;

#define EXPECT(cond)                                                   \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);    \
      ++g_failures;                                                    \
    }                                                                  \
  } while (0)

// A dimension expression with a known value (size tensors carry their upper bound).
class Expr final : public IDimensionExpr {
 public:
  Expr(int64_t value, bool size_tensor) : impl_(value, size_tensor) { mImpl = &impl_; }
  ~Expr() noexcept override = default;
  int64_t value() const { return impl_.value; }

 private:
  struct Impl final : apiv::VDimensionExpr {
    Impl(int64_t v, bool s) : value(v), size(s) {}
    bool isConstant() const override { return !size; }
    int64_t getConstantValue() const override { return value; }
    bool isSizeTensor() const override { return size; }
    int64_t value;
    bool size;
  };
  Impl impl_;
};

std::deque<Expr> g_exprs;

IDimensionExpr const* make(int64_t v, bool size = false) {
  g_exprs.emplace_back(v, size);
  return &g_exprs.back();
}

int64_t value_of(IDimensionExpr const* e) { return static_cast<Expr const*>(e)->value(); }

class Builder final : public IExprBuilder {
 public:
  Builder() { mImpl = &impl_; }
  ~Builder() noexcept override = default;

 private:
  struct Impl final : apiv::VExprBuilder {
    IDimensionExpr const* constant(int64_t value) override { return make(value); }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a,
                                    IDimensionExpr const& b) override {
      int64_t x = value_of(&a), y = value_of(&b);
      switch (op) {
        case DimensionOperation::kSUM: return make(x + y);
        case DimensionOperation::kPROD: return make(x * y);
        case DimensionOperation::kMAX: return make(x > y ? x : y);
        case DimensionOperation::kMIN: return make(x < y ? x : y);
        case DimensionOperation::kSUB: return make(x - y);
        case DimensionOperation::kCEIL_DIV: return make((x + y - 1) / y);
        case DimensionOperation::kFLOOR_DIV: return make(x / y);
        default: return nullptr;
      }
    }
    IDimensionExpr const* declareSizeTensor(int32_t index, IDimensionExpr const& opt,
                                            IDimensionExpr const& upper) override {
      g_sizes.push_back({index, value_of(&opt), value_of(&upper)});
      return make(value_of(&upper), true);
    }
  };
  Impl impl_;
};

// Records registrations; everything else is unused by the plugin library.
class Registry final : public IPluginRegistry {
 public:
  bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const) noexcept override {
    registered().push_back(&creator);
    return true;
  }
  void setErrorRecorder(IErrorRecorder* const) noexcept override {}
  IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
  bool isParentSearchEnabled() const override { return false; }
  void setParentSearchEnabled(bool const) override {}
  PluginLibraryHandle loadLibrary(AsciiChar const*) noexcept override { return nullptr; }
  void deregisterLibrary(PluginLibraryHandle) noexcept override {}
  IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override {
    *n = static_cast<int32_t>(registered().size());
    return registered().data();
  }
  IPluginCreatorInterface* getCreator(AsciiChar const* const, AsciiChar const* const,
                                      AsciiChar const* const) noexcept override {
    return nullptr;
  }
  bool deregisterCreator(IPluginCreatorInterface const&) noexcept override { return false; }
  IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override { return nullptr; }
  int32_t releasePluginResource(AsciiChar const*) noexcept override { return 0; }
  // Pure virtual in 11.x; a plain member where the interface lacks it (hence no `override`).
  IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept { return getAllCreators(n); }
#if NV_TENSORRT_MAJOR < 11
  // The IPluginV2-era overloads, removed from IPluginRegistry in TensorRT 11.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override { return false; }
  IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override {
    *n = 0;
    return nullptr;
  }
  IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const,
                                   AsciiChar const* const) noexcept override {
    return nullptr;
  }
  bool deregisterCreator(IPluginCreator const&) noexcept override { return false; }
#pragma GCC diagnostic pop
#endif
};
}  // namespace

// Interposes on the stub libnvinfer's definition (the executable comes first in symbol lookup).
extern "C" IPluginRegistry* getPluginRegistry() noexcept {
  static Registry registry;
  return &registry;
}
extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

namespace {

IPluginCreatorV3One* creator(char const* name) {
  for (auto* c : registered()) {
    auto* v3 = static_cast<IPluginCreatorV3One*>(c);
    if (std::strcmp(v3->getPluginName(), name) == 0) return v3;
  }
  return nullptr;
}

struct Fields {
  std::vector<std::vector<int32_t>> ints;
  std::vector<std::vector<float>> floats;
  std::vector<std::string> strings;
  std::vector<PluginField> list;
  void i(char const* n, std::vector<int32_t> v) {
    ints.push_back(std::move(v));
    list.emplace_back(n, nullptr, PluginFieldType::kINT32, static_cast<int32_t>(ints.back().size()));
  }
  void f(char const* n, std::vector<float> v) {
    floats.push_back(std::move(v));
    list.emplace_back(n, nullptr, PluginFieldType::kFLOAT32, static_cast<int32_t>(floats.back().size()));
  }
  void s(char const* n, std::string v) {
    strings.push_back(std::move(v));
    list.emplace_back(n, nullptr, PluginFieldType::kCHAR, static_cast<int32_t>(strings.back().size()));
  }
  PluginFieldCollection fc() {  // data pointers bound last: the vectors no longer move
    size_t a = 0, b = 0, c = 0;
    for (auto& field : list) {
      if (field.type == PluginFieldType::kINT32) field.data = ints[a++].data();
      else if (field.type == PluginFieldType::kFLOAT32) field.data = floats[b++].data();
      else field.data = strings[c++].data();
    }
    return PluginFieldCollection{static_cast<int32_t>(list.size()), list.data()};
  }
};

std::string dump(PluginFieldCollection const* fc) {
  std::string out;
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    PluginField const& f = fc->fields[i];
    out += std::string(f.name) + ":" + std::to_string(static_cast<int>(f.type)) + ":" + std::to_string(f.length) + "=";
    size_t bytes = f.type == PluginFieldType::kCHAR ? 1 : 4;
    out += std::string(static_cast<char const*>(f.data), bytes * static_cast<size_t>(f.length)) + ";";
  }
  return out;
}

IPluginV3* round_trip(IPluginCreatorV3One* c, IPluginV3* plugin) {
  auto* rt = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  std::string first = dump(rt->getFieldsToSerialize());
  IPluginV3* again = c->createPlugin("again", rt->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
  EXPECT(again != nullptr);
  if (again == nullptr) return plugin;
  auto* rt2 = static_cast<IPluginV3OneRuntime*>(again->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  EXPECT(dump(rt2->getFieldsToSerialize()) == first);
  IPluginV3* copy = again->clone();
  EXPECT(copy != nullptr);
  delete again;
  return copy;
}

IPluginV3OneBuild* build_of(IPluginV3* p) {
  return static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
}

DimsExprs dims(std::vector<int64_t> values) {
  DimsExprs d{};
  d.nbDims = static_cast<int32_t>(values.size());
  for (size_t i = 0; i < values.size(); ++i) d.d[i] = make(values[i]);
  return d;
}

std::vector<int64_t> values(DimsExprs const& d) {
  std::vector<int64_t> out;
  for (int32_t i = 0; i < d.nbDims; ++i) out.push_back(value_of(d.d[i]));
  return out;
}

void check_voxelize(bool hard) {
  IPluginCreatorV3One* c = creator("Voxelize");
  EXPECT(c != nullptr);
  if (!c) return;
  Fields f;
  f.f("point_range", {-51.2f, -51.2f, -5.f, 51.2f, 51.2f, 3.f});
  f.f("voxel_size", {0.4f, 0.4f, 0.5f});
  f.i("max_voxels", {16000});
  if (hard) {  // spconv / mmcv hard voxelization: point lists [V, 10, F] in arrival order
    f.i("max_points_per_voxel", {10});
    f.s("reduce", "none");
    f.s("order", "arrival");
  }
  PluginFieldCollection fc = f.fc();
  IPluginV3* p = round_trip(c, c->createPlugin("v", &fc, TensorRTPhase::kBUILD));
  IPluginV3OneBuild* b = build_of(p);
  EXPECT(b->getNbOutputs() == 4);
  DataType in[1] = {DataType::kFLOAT}, out[4];
  EXPECT(b->getOutputDataTypes(out, 4, in, 1) == 0);
  EXPECT(out[0] == DataType::kFLOAT && out[1] == DataType::kINT32 && out[2] == DataType::kINT32 &&
         out[3] == DataType::kINT32);
  DimsExprs inputs[1] = {dims({1000, 4})}, outputs[4];
  Builder builder;
  g_sizes.clear();
  EXPECT(b->getOutputShapes(inputs, 1, nullptr, 0, outputs, 4, builder) == 0);
  EXPECT(g_sizes.size() == 1 && g_sizes[0].index == 2 && g_sizes[0].upper == 1000 && g_sizes[0].opt == 500);
  EXPECT(values(outputs[0]) == (hard ? std::vector<int64_t>{1000, 10, 4} : std::vector<int64_t>{1000, 4}));
  EXPECT(outputs[0].d[0]->isSizeTensor());
  EXPECT(values(outputs[1]) == (std::vector<int64_t>{1000, 4}) && outputs[2].nbDims == 0);
  EXPECT(values(outputs[3]) == (std::vector<int64_t>{1000}) && outputs[3].d[0]->isSizeTensor());
  Fields bad;
  bad.f("point_range", {0.f, 1.f});
  PluginFieldCollection bad_fc = bad.fc();
  EXPECT(c->createPlugin("bad", &bad_fc, TensorRTPhase::kBUILD) == nullptr);
  Fields no_slots;  // reduce "none" needs max_points_per_voxel > 0
  no_slots.f("point_range", {-51.2f, -51.2f, -5.f, 51.2f, 51.2f, 3.f});
  no_slots.f("voxel_size", {0.4f, 0.4f, 0.5f});
  no_slots.i("max_voxels", {16000});
  no_slots.s("reduce", "none");
  PluginFieldCollection no_slots_fc = no_slots.fc();
  EXPECT(c->createPlugin("bad", &no_slots_fc, TensorRTPhase::kBUILD) == nullptr);
  delete p;
}

void check_sparse_conv3d(bool subm) {
  IPluginCreatorV3One* c = creator("SparseConv3d");
  EXPECT(c != nullptr);
  if (!c) return;
  Fields f;
  f.i("spatial_shape", {41, 1440, 1440});
  f.i("kernel_size", {3, 3, 3});
  f.i("stride", {subm ? 1 : 2, subm ? 1 : 2, subm ? 1 : 2});
  f.i("padding", {1, 1, 1});
  f.i("dilation", {1, 1, 1});
  f.i("subm", {subm ? 1 : 0});
  f.s("activation", "relu");
  f.s("algo", subm ? "implicit_gemm" : "gather_gemm_scatter");
  PluginFieldCollection fc = f.fc();
  IPluginV3* p = round_trip(c, c->createPlugin("c", &fc, TensorRTPhase::kBUILD));
  IPluginV3OneBuild* b = build_of(p);
  int32_t const n_out = subm ? 2 : 3;
  EXPECT(b->getNbOutputs() == n_out);
  DataType in[4] = {DataType::kHALF, DataType::kINT32, DataType::kHALF, DataType::kHALF}, out[3];
  EXPECT(b->getOutputDataTypes(out, n_out, in, 4) == 0);
  EXPECT(out[0] == DataType::kHALF && out[1] == DataType::kINT32);
  DimsExprs inputs[4] = {dims({5000, 16}), dims({5000, 4}), dims({32, 3, 3, 3, 16}), dims({32})}, outputs[3];
  Builder builder;
  g_sizes.clear();
  EXPECT(b->getOutputShapes(inputs, 4, nullptr, 0, outputs, n_out, builder) == 0);
  if (subm) {
    EXPECT(g_sizes.empty());
    EXPECT(values(outputs[0]) == (std::vector<int64_t>{5000, 32}));
  } else {
    EXPECT(g_sizes.size() == 1 && g_sizes[0].index == 2 && g_sizes[0].upper == 5000 * 8);
    EXPECT(values(outputs[0]) == (std::vector<int64_t>{40000, 32}) && outputs[2].nbDims == 0);
  }
  EXPECT(values(outputs[1])[1] == 4);
  DynamicPluginTensorDesc io[7]{};
  DataType const types[7] = {DataType::kHALF, DataType::kINT32, DataType::kHALF, DataType::kHALF,
                             DataType::kHALF, DataType::kINT32, DataType::kINT32};
  for (int i = 0; i < 4 + n_out; ++i) io[i].desc.type = types[i], io[i].desc.format = TensorFormat::kLINEAR;
  for (int pos = 0; pos < 4 + n_out; ++pos) EXPECT(b->supportsFormatCombination(pos, io, 4, n_out));
  io[2].desc.type = DataType::kFLOAT;  // weight must follow the features' type
  EXPECT(!b->supportsFormatCombination(2, io, 4, n_out));
  Fields bad;
  bad.i("spatial_shape", {41, 1440, 1440});
  bad.i("kernel_size", {2, 2, 2});
  bad.i("subm", {1});  // submanifold needs odd kernels
  PluginFieldCollection bad_fc = bad.fc();
  EXPECT(c->createPlugin("bad", &bad_fc, TensorRTPhase::kBUILD) == nullptr);
  Fields bad_algo;
  bad_algo.i("spatial_shape", {41, 1440, 1440});
  bad_algo.i("kernel_size", {3, 3, 3});
  bad_algo.s("algo", "fastest");
  PluginFieldCollection bad_algo_fc = bad_algo.fc();
  EXPECT(c->createPlugin("bad", &bad_algo_fc, TensorRTPhase::kBUILD) == nullptr);
  delete p;
}

void check_sparse_inverse_conv3d() {
  IPluginCreatorV3One* c = creator("SparseInverseConv3d");
  EXPECT(c != nullptr);
  if (!c) return;
  Fields f;
  f.i("spatial_shape", {41, 1440, 1440});
  f.i("kernel_size", {3, 3, 3});
  f.i("stride", {2, 2, 2});
  f.i("padding", {1, 1, 1});
  f.s("activation", "relu");
  f.s("algo", "implicit_gemm");
  PluginFieldCollection fc = f.fc();
  IPluginV3* p = round_trip(c, c->createPlugin("i", &fc, TensorRTPhase::kBUILD));
  IPluginV3OneBuild* b = build_of(p);
  EXPECT(b->getNbOutputs() == 1);
  DataType in[5] = {DataType::kHALF, DataType::kINT32, DataType::kINT32, DataType::kHALF, DataType::kHALF}, out[1];
  EXPECT(b->getOutputDataTypes(out, 1, in, 5) == 0 && out[0] == DataType::kHALF);
  DimsExprs inputs[5] = {dims({700, 32}), dims({700, 4}), dims({5000, 4}), dims({16, 3, 3, 3, 32}), dims({16})};
  DimsExprs outputs[1];
  Builder builder;
  g_sizes.clear();
  EXPECT(b->getOutputShapes(inputs, 5, nullptr, 0, outputs, 1, builder) == 0);
  EXPECT(g_sizes.empty());  // M = out_coords' rows: no size tensor
  EXPECT(values(outputs[0]) == (std::vector<int64_t>{5000, 16}));
  DynamicPluginTensorDesc io[6]{};
  for (int i = 0; i < 6; ++i) io[i].desc.type = i < 5 ? in[i] : DataType::kHALF, io[i].desc.format = TensorFormat::kLINEAR;
  for (int pos = 0; pos < 6; ++pos) EXPECT(b->supportsFormatCombination(pos, io, 5, 1));
  io[2].desc.type = DataType::kHALF;  // out_coords must be int32
  EXPECT(!b->supportsFormatCombination(2, io, 5, 1));
  Fields bad;
  bad.i("spatial_shape", {1, 8, 8});
  bad.i("kernel_size", {3, 3, 3});
  bad.i("stride", {2, 2, 2});  // empty coarse grid along z
  PluginFieldCollection bad_fc = bad.fc();
  EXPECT(c->createPlugin("bad", &bad_fc, TensorRTPhase::kBUILD) == nullptr);
  delete p;
}

void check_scatter_dense_and_bev_pool() {
  IPluginCreatorV3One* s = creator("ScatterDense");
  IPluginCreatorV3One* bp = creator("BEVPool");
  EXPECT(s != nullptr && bp != nullptr);
  if (!s || !bp) return;
  Fields f;
  f.i("spatial_shape", {2, 180, 160});
  f.i("batch_size", {1});
  PluginFieldCollection fc = f.fc();
  IPluginV3* p = round_trip(s, s->createPlugin("s", &fc, TensorRTPhase::kBUILD));
  DimsExprs inputs[2] = {dims({777, 128}), dims({777, 4})}, outputs[1];
  Builder builder;
  EXPECT(build_of(p)->getOutputShapes(inputs, 2, nullptr, 0, outputs, 1, builder) == 0);
  EXPECT(values(outputs[0]) == (std::vector<int64_t>{1, 256, 180, 160}));
  delete p;
  Fields g;
  g.i("bev_shape", {1, 360, 360});
  PluginFieldCollection gc = g.fc();
  IPluginV3* q = round_trip(bp, bp->createPlugin("b", &gc, TensorRTPhase::kBUILD));
  DimsExprs bev_in[7] = {dims({6, 118, 32, 88}), dims({6, 32, 88, 80}), dims({9}), dims({9}), dims({9}),
                         dims({3}), dims({3})};
  EXPECT(build_of(q)->getOutputShapes(bev_in, 7, nullptr, 0, outputs, 1, builder) == 0);
  EXPECT(values(outputs[0]) == (std::vector<int64_t>{1, 80, 360, 360}));
  delete q;
}

}  // namespace

int main() {
  EXPECT(registered().size() == 5);  // REGISTER_TENSORRT_PLUGIN ran at load time
  int32_t count = 0;
  IPluginCreatorInterface* const* list = getCreators(count);
  EXPECT(count == 5 && list != nullptr);
  std::vector<std::string> names;
  for (int32_t i = 0; i < count; ++i) {
    auto* c = static_cast<IPluginCreatorV3One*>(list[i]);
    EXPECT(std::strcmp(c->getPluginNamespace(), "sparsefuse") == 0);
    EXPECT(std::strcmp(c->getPluginVersion(), "1") == 0);
    EXPECT(std::strcmp(c->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
    names.emplace_back(c->getPluginName());
  }
  EXPECT(names == (std::vector<std::string>{"Voxelize", "SparseConv3d", "SparseInverseConv3d", "ScatterDense",
                                            "BEVPool"}));
  check_voxelize(false);
  check_voxelize(true);
  check_sparse_conv3d(true);
  check_sparse_conv3d(false);
  check_sparse_inverse_conv3d();
  check_scatter_dense_and_bev_pool();
  if (g_failures == 0) std::printf("OK\n");
  return g_failures == 0 ? 0 : 1;
}
