// Status strings and ABI version shared by every launcher (sf_abi.h).
#include <cuda_runtime.h>

#include "sf_abi.h"

SF_API const char* sf_status_string(int status) {
  switch (status) {
    case SF_OK:
      return "ok";
    case SF_ERR_INVALID_ARGUMENT:
      return "invalid argument (shape, dtype, capacity or null pointer)";
    case SF_ERR_WORKSPACE_TOO_SMALL:
      return "workspace too small (query the *_workspace_size function)";
    case SF_ERR_UNSUPPORTED:
      return "unsupported configuration (channel count or kernel volume too large)";
    default:
      return status > 0 ? cudaGetErrorString(static_cast<cudaError_t>(status)) : "unknown sparsefuse status";
  }
}

SF_API int sf_abi_version(void) { return 1; }
