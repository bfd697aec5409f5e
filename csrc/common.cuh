// Error checking shared by every kernel file: a failed CUDA call becomes a C++ exception that pybind11
// turns into a Python RuntimeError naming the call, file and line.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cstdint>
#include <stdexcept>
#include <string>

#define SODP_CUDA_CHECK(expr)                                                                          \
  do {                                                                                                 \
    cudaError_t err_ = (expr);                                                                         \
    if (err_ != cudaSuccess) {                                                                         \
      throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorName(err_) + " (" +            \
                               cudaGetErrorString(err_) + ") at " + __FILE__ + ":" +                   \
                               std::to_string(__LINE__) + " in " #expr);                               \
    }                                                                                                  \
  } while (0)

// After a launch: catches bad configurations at once (asynchronous faults surface at the next sync).
#define SODP_CHECK_LAUNCH() SODP_CUDA_CHECK(cudaGetLastError())

namespace sodp {

enum DType : int { kFloat32 = 0, kBFloat16 = 1 };

// Raise a clear error before touching any pointer when no usable device exists (e.g. a CPU-only machine).
inline void require_device() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    throw std::runtime_error(std::string("sodp_fast CUDA extension: no usable CUDA device (") +
                             (err != cudaSuccess ? cudaGetErrorName(err) : "0 devices") + ")");
  }
}

inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// Storage type T <-> float32 compute type: every kernel reads fp32 or bf16 and accumulates in fp32.
template <typename T> __device__ __forceinline__ float load(const T* p) { return static_cast<float>(*p); }
template <> __device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
template <typename T> __device__ __forceinline__ void store(T* p, float v) { *p = static_cast<T>(v); }
template <> __device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

inline std::invalid_argument bad_dtype(const char* op, int dtype) {
  return std::invalid_argument(std::string(op) + ": unsupported dtype code " + std::to_string(dtype));
}

}  // namespace sodp
