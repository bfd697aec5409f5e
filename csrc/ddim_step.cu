// Fused DDIM transition kernels (formula: sodp_fast/ops/ddim_step.py; per-element math: kernel_math.h, shared
// with the CPU build):
//   ddim_step            sampling: x_prev = mean + c4·z and the log-prob of the stored x_prev
//   ddim_logprob         PPO path: log-prob of a stored transition x → x_prev under ε̂
//   ddim_logprob_backward          its gradient w.r.t. ε̂
// One warp per row of D = Tp*A latent elements: each lane walks the row with stride 32, so a row is read once
// and written once, and the row's log-prob is a warp-shuffle reduction with no shared memory. Coefficients are
// per row (coef_stride 6) or shared (coef_stride 0), so one launch serves rows at different denoising steps.
#include "common.cuh"
#include "kernel_math.h"

namespace sodp {
namespace {

constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <typename T>
__global__ void ddim_step_kernel(const T* __restrict__ x, const T* __restrict__ eps, const T* __restrict__ noise,
                                 const float* __restrict__ coef, int coef_stride, T* __restrict__ x_prev,
                                 float* __restrict__ logp, int64_t n_rows, int d, float clip) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= n_rows) return;  // whole warps exit together: the shuffles below see full warps
  const DdimCoef c = ddim_coef(coef + row * coef_stride);
  const int64_t base = row * d;
  float sq = 0.f;
  for (int j = lane; j < d; j += 32) {
    const float mean = ddim_mean(load(x + base + j), load(eps + base + j), c, clip).mean;
    const float z = noise ? load(noise + base + j) : 0.f;
    store(x_prev + base + j, mean + c.c4 * z);
    const float zr = ddim_z(load(x_prev + base + j), mean, c.c4);  // of the stored (possibly rounded) value
    sq += zr * zr;
  }
  sq = warp_sum(sq);
  if (lane == 0) logp[row] = ddim_row_logprob(sq, d, c.c4);
}

template <typename T>
__global__ void ddim_logprob_kernel(const T* __restrict__ x, const T* __restrict__ eps,
                                    const T* __restrict__ x_prev, const float* __restrict__ coef, int coef_stride,
                                    float* __restrict__ logp, int64_t n_rows, int d, float clip) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= n_rows) return;
  const DdimCoef c = ddim_coef(coef + row * coef_stride);
  const int64_t base = row * d;
  float sq = 0.f;
  for (int j = lane; j < d; j += 32) {
    const float mean = ddim_mean(load(x + base + j), load(eps + base + j), c, clip).mean;
    const float zr = ddim_z(load(x_prev + base + j), mean, c.c4);
    sq += zr * zr;
  }
  sq = warp_sum(sq);
  if (lane == 0) logp[row] = ddim_row_logprob(sq, d, c.c4);
}

template <typename T>
__global__ void ddim_logprob_bwd_kernel(const T* __restrict__ x, const T* __restrict__ eps,
                                        const T* __restrict__ x_prev, const float* __restrict__ coef,
                                        int coef_stride, const float* __restrict__ grad_logp,
                                        T* __restrict__ grad_eps, int64_t n_rows, int d, float clip) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= n_rows) return;
  const DdimCoef c = ddim_coef(coef + row * coef_stride);
  const float k = ddim_grad_factor(c, grad_logp[row]);
  const int64_t base = row * d;
  for (int j = lane; j < d; j += 32) {
    store(grad_eps + base + j, ddim_grad(ddim_mean(load(x + base + j), load(eps + base + j), c, clip),
                                         load(x_prev + base + j), k));
  }
}

unsigned blocks_for(int64_t n_rows) {
  const int64_t blocks = (n_rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 0x7fffffff) throw std::invalid_argument("ddim kernels: too many rows for one launch");
  return static_cast<unsigned>(blocks);
}

template <typename T> const T* cptr(std::uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <typename T> T* mptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

template <typename T>
void launch_step(std::uintptr_t x, std::uintptr_t eps, std::uintptr_t noise, std::uintptr_t coef, int coef_stride,
                 std::uintptr_t x_prev, std::uintptr_t logp, int64_t n_rows, int d, float clip, cudaStream_t s) {
  ddim_step_kernel<T><<<blocks_for(n_rows), kWarpsPerBlock * 32, 0, s>>>(
      cptr<T>(x), cptr<T>(eps), cptr<T>(noise), cptr<float>(coef), coef_stride, mptr<T>(x_prev),
      mptr<float>(logp), n_rows, d, clip);
  SODP_CHECK_LAUNCH();
}

template <typename T>
void launch_logprob(std::uintptr_t x, std::uintptr_t eps, std::uintptr_t x_prev, std::uintptr_t coef,
                    int coef_stride, std::uintptr_t logp, int64_t n_rows, int d, float clip, cudaStream_t s) {
  ddim_logprob_kernel<T><<<blocks_for(n_rows), kWarpsPerBlock * 32, 0, s>>>(
      cptr<T>(x), cptr<T>(eps), cptr<T>(x_prev), cptr<float>(coef), coef_stride, mptr<float>(logp), n_rows, d,
      clip);
  SODP_CHECK_LAUNCH();
}

template <typename T>
void launch_logprob_bwd(std::uintptr_t x, std::uintptr_t eps, std::uintptr_t x_prev, std::uintptr_t coef,
                        int coef_stride, std::uintptr_t grad_logp, std::uintptr_t grad_eps, int64_t n_rows, int d,
                        float clip, cudaStream_t s) {
  ddim_logprob_bwd_kernel<T><<<blocks_for(n_rows), kWarpsPerBlock * 32, 0, s>>>(
      cptr<T>(x), cptr<T>(eps), cptr<T>(x_prev), cptr<float>(coef), coef_stride, cptr<float>(grad_logp),
      mptr<T>(grad_eps), n_rows, d, clip);
  SODP_CHECK_LAUNCH();
}

}  // namespace

void ddim_step(std::uintptr_t x, std::uintptr_t eps, std::uintptr_t noise, std::uintptr_t coef, int coef_stride,
               std::uintptr_t x_prev, std::uintptr_t logp, int64_t n_rows, int d, float clip, int dtype,
               std::uintptr_t stream) {
  require_device();
  if (n_rows == 0) return;
  if (dtype == kFloat32)
    launch_step<float>(x, eps, noise, coef, coef_stride, x_prev, logp, n_rows, d, clip, as_stream(stream));
  else if (dtype == kBFloat16)
    launch_step<__nv_bfloat16>(x, eps, noise, coef, coef_stride, x_prev, logp, n_rows, d, clip, as_stream(stream));
  else
    throw bad_dtype("ddim_step", dtype);
}

void ddim_logprob(std::uintptr_t x, std::uintptr_t eps, std::uintptr_t x_prev, std::uintptr_t coef,
                  int coef_stride, std::uintptr_t logp, int64_t n_rows, int d, float clip, int dtype,
                  std::uintptr_t stream) {
  require_device();
  if (n_rows == 0) return;
  if (dtype == kFloat32)
    launch_logprob<float>(x, eps, x_prev, coef, coef_stride, logp, n_rows, d, clip, as_stream(stream));
  else if (dtype == kBFloat16)
    launch_logprob<__nv_bfloat16>(x, eps, x_prev, coef, coef_stride, logp, n_rows, d, clip, as_stream(stream));
  else
    throw bad_dtype("ddim_logprob", dtype);
}

void ddim_logprob_backward(std::uintptr_t x, std::uintptr_t eps, std::uintptr_t x_prev, std::uintptr_t coef,
                           int coef_stride, std::uintptr_t grad_logp, std::uintptr_t grad_eps, int64_t n_rows, int d,
                           float clip, int dtype, std::uintptr_t stream) {
  require_device();
  if (n_rows == 0) return;
  if (dtype == kFloat32)
    launch_logprob_bwd<float>(x, eps, x_prev, coef, coef_stride, grad_logp, grad_eps, n_rows, d, clip,
                              as_stream(stream));
  else if (dtype == kBFloat16)
    launch_logprob_bwd<__nv_bfloat16>(x, eps, x_prev, coef, coef_stride, grad_logp, grad_eps, n_rows, d, clip,
                                      as_stream(stream));
  else
    throw bad_dtype("ddim_logprob_backward", dtype);
}

}  // namespace sodp
