// Batched PPO ratio/clip loss over N (chain × denoising-step) rows (formula: sodp_fast/ops/ppo_loss.py; per-row
// math, including the expm1 form of the ratio: kernel_math.h, shared with the CPU build).
//   forward:  out[0..2] = mean loss, clip fraction, approx-KL (k3), in one launch: every block reduces its
//             grid-stride share into a partial triple, and the last block to finish (atomic ticket) adds the
//             partials in block order, so the result is deterministic and needs no second launch or host sync.
//   backward: d loss / d new_logp, elementwise, scaled by the upstream gradient read from device memory.
#include "common.cuh"
#include "kernel_math.h"

namespace sodp {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 256;  // partial triples the last block adds; blocks grid-stride beyond that

using Terms = PpoTerms;

__device__ __forceinline__ Terms operator+(Terms a, Terms b) {
  return {a.loss + b.loss, a.clipped + b.clipped, a.kl + b.kl};
}

__device__ __forceinline__ Terms warp_sum(Terms t) {
  for (int off = 16; off > 0; off >>= 1)
    t = t + Terms{__shfl_xor_sync(0xffffffffu, t.loss, off), __shfl_xor_sync(0xffffffffu, t.clipped, off),
                  __shfl_xor_sync(0xffffffffu, t.kl, off)};
  return t;
}

// Sum over the block; the result is valid in thread 0. Ends with a barrier so `smem` can be reused.
__device__ Terms block_sum(Terms t, Terms* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  t = warp_sum(t);
  if (lane == 0) smem[warp] = t;
  __syncthreads();
  if (warp == 0) {
    t = lane < kThreads / 32 ? smem[lane] : Terms{0.f, 0.f, 0.f};
    t = warp_sum(t);
  }
  __syncthreads();
  return t;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ppo_fwd_kernel(const T* __restrict__ new_logp,
                                                           const T* __restrict__ old_logp,
                                                           const T* __restrict__ adv, int64_t n, float clip_eps,
                                                           float* __restrict__ partial,
                                                           unsigned* __restrict__ ticket, float* __restrict__ out) {
  __shared__ Terms smem[kThreads / 32];
  __shared__ bool is_last;
  Terms acc{0.f, 0.f, 0.f};
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    acc = acc + ppo_terms(load(new_logp + i), load(old_logp + i), load(adv + i), clip_eps);
  }
  acc = block_sum(acc, smem);
  if (threadIdx.x == 0) {
    partial[3 * blockIdx.x] = acc.loss;
    partial[3 * blockIdx.x + 1] = acc.clipped;
    partial[3 * blockIdx.x + 2] = acc.kl;
    __threadfence();  // publish the partial device-wide before taking a ticket
    is_last = atomicAdd(ticket, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return;
  // __ldcg reads through L2, so no stale L1 line of another block's partial can be seen
  Terms tot{0.f, 0.f, 0.f};
  for (unsigned b = threadIdx.x; b < gridDim.x; b += kThreads)
    tot = tot + Terms{__ldcg(partial + 3 * b), __ldcg(partial + 3 * b + 1), __ldcg(partial + 3 * b + 2)};
  tot = block_sum(tot, smem);
  if (threadIdx.x == 0) {
    const float inv_n = 1.f / static_cast<float>(n);
    out[0] = tot.loss * inv_n;
    out[1] = tot.clipped * inv_n;
    out[2] = tot.kl * inv_n;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ppo_bwd_kernel(const T* __restrict__ new_logp,
                                                           const T* __restrict__ old_logp,
                                                           const T* __restrict__ adv,
                                                           const float* __restrict__ grad_loss, int64_t n,
                                                           float clip_eps, T* __restrict__ grad_new) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  store(grad_new + i, ppo_grad(load(new_logp + i), load(old_logp + i), load(adv + i), clip_eps,
                               *grad_loss / static_cast<float>(n)));
}

template <typename T>
void launch_fwd(std::uintptr_t new_logp, std::uintptr_t old_logp, std::uintptr_t adv, int64_t n, float clip_eps,
                std::uintptr_t workspace, std::uintptr_t out, cudaStream_t s) {
  const int64_t want = (n + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(want < kMaxBlocks ? want : kMaxBlocks);
  float* partial = reinterpret_cast<float*>(workspace);
  unsigned* ticket = reinterpret_cast<unsigned*>(partial + 3 * kMaxBlocks);
  SODP_CUDA_CHECK(cudaMemsetAsync(ticket, 0, sizeof(unsigned), s));  // a memset node under graph capture
  ppo_fwd_kernel<T><<<blocks, kThreads, 0, s>>>(reinterpret_cast<const T*>(new_logp),
                                                reinterpret_cast<const T*>(old_logp),
                                                reinterpret_cast<const T*>(adv), n, clip_eps, partial, ticket,
                                                reinterpret_cast<float*>(out));
  SODP_CHECK_LAUNCH();
}

template <typename T>
void launch_bwd(std::uintptr_t new_logp, std::uintptr_t old_logp, std::uintptr_t adv, std::uintptr_t grad_loss,
                int64_t n, float clip_eps, std::uintptr_t grad_new, cudaStream_t s) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffff) throw std::invalid_argument("ppo_loss_backward: too many rows for one launch");
  ppo_bwd_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(
      reinterpret_cast<const T*>(new_logp), reinterpret_cast<const T*>(old_logp), reinterpret_cast<const T*>(adv),
      reinterpret_cast<const float*>(grad_loss), n, clip_eps, reinterpret_cast<T*>(grad_new));
  SODP_CHECK_LAUNCH();
}

}  // namespace

// float32 words the forward needs as scratch: kMaxBlocks partial triples, then one ticket counter.
int ppo_workspace_floats() { return 3 * kMaxBlocks + 1; }

void ppo_loss_forward(std::uintptr_t new_logp, std::uintptr_t old_logp, std::uintptr_t adv, int64_t n,
                      float clip_eps, std::uintptr_t workspace, std::uintptr_t out, int dtype, std::uintptr_t stream) {
  require_device();
  if (n <= 0) throw std::invalid_argument("ppo_loss_forward: needs at least one row");
  if (dtype == kFloat32)
    launch_fwd<float>(new_logp, old_logp, adv, n, clip_eps, workspace, out, as_stream(stream));
  else if (dtype == kBFloat16)
    launch_fwd<__nv_bfloat16>(new_logp, old_logp, adv, n, clip_eps, workspace, out, as_stream(stream));
  else
    throw bad_dtype("ppo_loss_forward", dtype);
}

void ppo_loss_backward(std::uintptr_t new_logp, std::uintptr_t old_logp, std::uintptr_t adv,
                       std::uintptr_t grad_loss, int64_t n, float clip_eps, std::uintptr_t grad_new, int dtype,
                       std::uintptr_t stream) {
  require_device();
  if (n <= 0) return;
  if (dtype == kFloat32)
    launch_bwd<float>(new_logp, old_logp, adv, grad_loss, n, clip_eps, grad_new, as_stream(stream));
  else if (dtype == kBFloat16)
    launch_bwd<__nv_bfloat16>(new_logp, old_logp, adv, grad_loss, n, clip_eps, grad_new, as_stream(stream));
  else
    throw bad_dtype("ppo_loss_backward", dtype);
}

}  // namespace sodp
