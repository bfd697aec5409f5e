// Fused DDIM sampling step + Gaussian log-prob of the transition (formula: sodp_fast/ops/ddim_step.py).
// One warp per row of D = Tp*A latent elements: each lane walks the row with stride 32, so a row is read once
// (x, eps, noise) and written once (x_prev), and the log-prob is a warp-shuffle reduction with no shared memory.
#include <cuda_bf16.h>

#include "common.cuh"

namespace sodp {
namespace {

template <typename T> __device__ __forceinline__ float load(const T* p) { return static_cast<float>(*p); }
template <> __device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
template <typename T> __device__ __forceinline__ void store(T* p, float v) { *p = static_cast<T>(v); }
template <> __device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

constexpr int kWarpsPerBlock = 8;
constexpr float kHalfLog2Pi = 0.91893853320467274f;

template <typename T>
__global__ void ddim_step_kernel(const T* __restrict__ x, const T* __restrict__ eps, const T* __restrict__ noise,
                                 const float* __restrict__ coef, int coef_stride, T* __restrict__ x_prev,
                                 float* __restrict__ logp, int64_t n_rows, int d, float clip) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= n_rows) return;
  const float* c = coef + row * coef_stride;
  const float c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3], c4 = c[4], c5 = c[5];
  const int64_t base = row * d;
  float sq = 0.f;
  for (int j = lane; j < d; j += 32) {
    const float xv = load(x + base + j);
    float x0 = (xv - c1 * load(eps + base + j)) * c0;
    if (clip > 0.f) x0 = fminf(fmaxf(x0, -clip), clip);
    const float eps_c = (xv - c5 * x0) / c1;
    const float mean = c2 * x0 + c3 * eps_c;
    const float z = noise ? load(noise + base + j) : 0.f;
    const float out = mean + c4 * z;
    store(x_prev + base + j, out);
    const float zr = (load(x_prev + base + j) - mean) / c4;  // of the stored (possibly rounded) value
    sq += zr * zr;
  }
  for (int off = 16; off > 0; off >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, off);
  if (lane == 0) logp[row] = -0.5f * sq - d * (logf(c4) + kHalfLog2Pi);
}

template <typename T>
void launch(std::uintptr_t x, std::uintptr_t eps, std::uintptr_t noise, std::uintptr_t coef, int coef_stride,
            std::uintptr_t x_prev, std::uintptr_t logp, int64_t n_rows, int d, float clip, cudaStream_t stream) {
  const int64_t blocks = (n_rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  ddim_step_kernel<T><<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(
      reinterpret_cast<const T*>(x), reinterpret_cast<const T*>(eps), reinterpret_cast<const T*>(noise),
      reinterpret_cast<const float*>(coef), coef_stride, reinterpret_cast<T*>(x_prev),
      reinterpret_cast<float*>(logp), n_rows, d, clip);
  SODP_CHECK_LAUNCH();
}

}  // namespace

void ddim_step(std::uintptr_t x, std::uintptr_t eps, std::uintptr_t noise, std::uintptr_t coef, int coef_stride,
               std::uintptr_t x_prev, std::uintptr_t logp, int64_t n_rows, int d, float clip, int dtype,
               std::uintptr_t stream) {
  require_device();
  if (n_rows == 0) return;
  if (dtype == kFloat32)
    launch<float>(x, eps, noise, coef, coef_stride, x_prev, logp, n_rows, d, clip, as_stream(stream));
  else if (dtype == kBFloat16)
    launch<__nv_bfloat16>(x, eps, noise, coef, coef_stride, x_prev, logp, n_rows, d, clip, as_stream(stream));
  else
    throw std::invalid_argument("ddim_step: unsupported dtype code " + std::to_string(dtype));
}

}  // namespace sodp
