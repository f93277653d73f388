// Dynamic-loading entry points of libsparsefuse_trt_plugins.so (TensorRT >= 10.0):
// IPluginRegistry::loadLibrary (trtexec --dynamicPlugins, IBuilderConfig plugins to serialize)
// calls getCreators / setLoggerFinder. Static registration (REGISTER_TENSORRT_PLUGIN, used by
// trtexec --staticPlugins, a plain dlopen / ctypes.CDLL from Python and our TensorRT backend)
// sits next to each plugin in plugins/<op>/plugin.cpp.
#include "trt_common.h"

extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder*) {}

extern "C" __attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators) {
  using namespace sparsefuse::trt;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {
      voxelize_creator(), sparse_conv3d_creator(), sparse_inverse_conv3d_creator(), scatter_dense_creator(),
      bev_pool_creator()};
  nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
  return creators;
}
