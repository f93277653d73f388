/* Shared C ABI vocabulary of the sparsefuse CUDA kernels (docs/design.md §4, item 5).
 *
 * Every launcher takes raw device pointers and a cudaStream_t and returns an int status:
 * 0 on success, a positive cudaError_t value on a CUDA error, or one of the negative SF_ERR_*
 * codes below. No torch or TensorRT types cross this boundary, so the same launchers serve the
 * Python binding (ctypes) and the TensorRT plugins.
 */
#ifndef SPARSEFUSE_SF_ABI_H
#define SPARSEFUSE_SF_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#define SF_EXTERN_C extern "C"
#else
#define SF_EXTERN_C
#endif

#if defined(_WIN32)
#define SF_API SF_EXTERN_C __declspec(dllexport)
#else
#define SF_API SF_EXTERN_C __attribute__((visibility("default")))
#endif

/* Element types of float tensors. */
#define SF_FLOAT32 0
#define SF_FLOAT16 1

/* Status codes (negative: ours; positive: cudaError_t). */
#define SF_OK 0
#define SF_ERR_INVALID_ARGUMENT (-1)
#define SF_ERR_WORKSPACE_TOO_SMALL (-2)
#define SF_ERR_UNSUPPORTED (-3)

/* Human-readable text of a status code (static storage). */
SF_API const char* sf_status_string(int status);

/* ABI version of the library; bump when a launcher signature changes. */
SF_API int sf_abi_version(void);

#endif /* SPARSEFUSE_SF_ABI_H */
