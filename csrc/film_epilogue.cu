// FiLM conv-block epilogue kernels (formula: sodp_fast/ops/film_epilogue.py; per-element math, Mish and its
// derivative included: kernel_math.h, shared with the CPU build). h, residual, out, ∂out, ∂h are [B, C, T]
// contiguous (storage type T: fp32 or bf16); gn weight/bias, scale/shift and every per-channel output are fp32.
//   forward:  one block per (batch, group): the group's CG·T values are contiguous, so the block walks them with
//             unit stride for the two-pass statistics (mean, then Σ(h − mean)²) and for the output pass, and
//             saves mean, rstd per group for the backward.
//   backward: one block per (batch, group); one warp per channel reduces ∂scale, ∂shift and this batch's
//             partials of ∂gn_weight, ∂gn_bias over T (shuffles: deterministic, no atomics), every thread also
//             accumulates the group sums of ∂x̂ and ∂x̂·x̂, then a second pass writes ∂h. Nothing but mean/rstd
//             is saved: x̂, Mish and ∂x̂ are recomputed from h.
#include "common.cuh"
#include "kernel_math.h"

namespace sodp {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the block, returned to every thread. Ends with a barrier so `smem` can be reused.
__device__ float block_sum(float v, float* smem) {
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
  __syncthreads();
  float tot = 0.f;
  for (int w = 0; w < kWarps; ++w) tot += smem[w];
  __syncthreads();
  return tot;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) film_fwd_kernel(
    const T* __restrict__ h, const float* __restrict__ w, const float* __restrict__ bias,
    const float* __restrict__ scale, const float* __restrict__ shift, const T* __restrict__ res,
    T* __restrict__ out, float* __restrict__ mean_out, float* __restrict__ rstd_out, int c_total, int t_len,
    int groups, float eps) {
  __shared__ float smem[kWarps];
  const int64_t bg = blockIdx.x, b = bg / groups;
  const int cg = c_total / groups, c0 = static_cast<int>(bg % groups) * cg, count = cg * t_len;
  const int64_t base = (b * c_total + c0) * t_len;
  float s = 0.f;
  for (int i = threadIdx.x; i < count; i += kThreads) s += load(h + base + i);
  const float mean = block_sum(s, smem) / static_cast<float>(count);
  float q = 0.f;
  for (int i = threadIdx.x; i < count; i += kThreads) {
    const float dv = load(h + base + i) - mean;
    q += dv * dv;
  }
  const float rstd = gn_rstd(block_sum(q, smem), count, eps);
  for (int i = threadIdx.x; i < count; i += kThreads) {
    const int c = c0 + i / t_len;
    const float sc = scale ? scale[b * c_total + c] : 1.f, sh = shift ? shift[b * c_total + c] : 0.f;
    float v = film_out(gn_xhat(load(h + base + i), mean, rstd), w[c], bias[c], sc, sh);
    if (res) v += load(res + base + i);
    store(out + base + i, v);
  }
  if (threadIdx.x == 0) {
    mean_out[bg] = mean;
    rstd_out[bg] = rstd;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) film_bwd_kernel(
    const T* __restrict__ go, const T* __restrict__ h, const float* __restrict__ w, const float* __restrict__ bias,
    const float* __restrict__ scale, const float* __restrict__ mean_in, const float* __restrict__ rstd_in,
    T* __restrict__ dh, float* __restrict__ dscale, float* __restrict__ dshift, float* __restrict__ dw_part,
    float* __restrict__ db_part, int c_total, int t_len, int groups) {
  __shared__ float smem[kWarps];
  const int64_t bg = blockIdx.x, b = bg / groups;
  const int cg = c_total / groups, c0 = static_cast<int>(bg % groups) * cg, count = cg * t_len;
  const int64_t base = (b * c_total + c0) * t_len;
  const float mean = mean_in[bg], rstd = rstd_in[bg];
  const int lane = threadIdx.x & 31;
  float m1 = 0.f, m2 = 0.f;  // this thread's share of Σ ∂x̂ and Σ ∂x̂·x̂
  for (int cl = threadIdx.x >> 5; cl < cg; cl += kWarps) {
    const int c = c0 + cl;
    const float wc = w[c], bc = bias[c], sc = scale ? scale[b * c_total + c] : 1.f;
    float dsc = 0.f, dsh = 0.f, dwc = 0.f, dbc = 0.f;
    for (int t = lane; t < t_len; t += 32) {
      const int64_t i = base + static_cast<int64_t>(cl) * t_len + t;
      const float g = load(go + i), xhat = gn_xhat(load(h + i), mean, rstd);
      const FilmGrad fg = film_grad(g, xhat, wc, bc, sc);
      dsc += g * fg.act;
      dsh += g;
      dwc += fg.dy * xhat;
      dbc += fg.dy;
      m1 += fg.dy * wc;
      m2 += fg.dy * wc * xhat;
    }
    dwc = warp_sum(dwc);
    dbc = warp_sum(dbc);
    if (scale) {
      dsc = warp_sum(dsc);
      dsh = warp_sum(dsh);
    }
    if (lane == 0) {
      dw_part[b * c_total + c] = dwc;
      db_part[b * c_total + c] = dbc;
      if (scale) {
        dscale[b * c_total + c] = dsc;
        dshift[b * c_total + c] = dsh;
      }
    }
  }
  const float inv_count = 1.f / static_cast<float>(count);
  m1 = block_sum(m1, smem) * inv_count;
  m2 = block_sum(m2, smem) * inv_count;
  for (int i = threadIdx.x; i < count; i += kThreads) {
    const int c = c0 + i / t_len;
    const float xhat = gn_xhat(load(h + base + i), mean, rstd);
    const float sc = scale ? scale[b * c_total + c] : 1.f;
    const float dxhat = film_grad(load(go + base + i), xhat, w[c], bias[c], sc).dy * w[c];
    store(dh + base + i, gn_input_grad(dxhat, xhat, m1, m2, rstd));
  }
}

void check_shape(const char* op, int64_t batch, int c_total, int t_len, int groups) {
  if (groups <= 0 || c_total % groups) throw std::invalid_argument(std::string(op) + ": C must split into groups");
  if (batch * groups > 0x7fffffff || t_len <= 0) throw std::invalid_argument(std::string(op) + ": bad shape");
}

template <typename T> const T* cptr(std::uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <typename T> T* mptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

}  // namespace

void film_epilogue_forward(std::uintptr_t h, std::uintptr_t w, std::uintptr_t bias, std::uintptr_t scale,
                           std::uintptr_t shift, std::uintptr_t res, std::uintptr_t out, std::uintptr_t mean,
                           std::uintptr_t rstd, int64_t batch, int c_total, int t_len, int groups, float eps,
                           int dtype, std::uintptr_t stream) {
  require_device();
  check_shape("film_epilogue_forward", batch, c_total, t_len, groups);
  if (batch == 0) return;
  const unsigned blocks = static_cast<unsigned>(batch * groups);
  cudaStream_t s = as_stream(stream);
  if (dtype == kFloat32)
    film_fwd_kernel<float><<<blocks, kThreads, 0, s>>>(cptr<float>(h), cptr<float>(w), cptr<float>(bias),
                                                       cptr<float>(scale), cptr<float>(shift), cptr<float>(res),
                                                       mptr<float>(out), mptr<float>(mean), mptr<float>(rstd),
                                                       c_total, t_len, groups, eps);
  else if (dtype == kBFloat16)
    film_fwd_kernel<__nv_bfloat16><<<blocks, kThreads, 0, s>>>(
        cptr<__nv_bfloat16>(h), cptr<float>(w), cptr<float>(bias), cptr<float>(scale), cptr<float>(shift),
        cptr<__nv_bfloat16>(res), mptr<__nv_bfloat16>(out), mptr<float>(mean), mptr<float>(rstd), c_total, t_len,
        groups, eps);
  else
    throw bad_dtype("film_epilogue_forward", dtype);
  SODP_CHECK_LAUNCH();
}

void film_epilogue_backward(std::uintptr_t go, std::uintptr_t h, std::uintptr_t w, std::uintptr_t bias,
                            std::uintptr_t scale, std::uintptr_t mean, std::uintptr_t rstd, std::uintptr_t dh,
                            std::uintptr_t dscale, std::uintptr_t dshift, std::uintptr_t dw_part,
                            std::uintptr_t db_part, int64_t batch, int c_total, int t_len, int groups, int dtype,
                            std::uintptr_t stream) {
  require_device();
  check_shape("film_epilogue_backward", batch, c_total, t_len, groups);
  if (batch == 0) return;
  const unsigned blocks = static_cast<unsigned>(batch * groups);
  cudaStream_t s = as_stream(stream);
  if (dtype == kFloat32)
    film_bwd_kernel<float><<<blocks, kThreads, 0, s>>>(
        cptr<float>(go), cptr<float>(h), cptr<float>(w), cptr<float>(bias), cptr<float>(scale), cptr<float>(mean),
        cptr<float>(rstd), mptr<float>(dh), mptr<float>(dscale), mptr<float>(dshift), mptr<float>(dw_part),
        mptr<float>(db_part), c_total, t_len, groups);
  else if (dtype == kBFloat16)
    film_bwd_kernel<__nv_bfloat16><<<blocks, kThreads, 0, s>>>(
        cptr<__nv_bfloat16>(go), cptr<__nv_bfloat16>(h), cptr<float>(w), cptr<float>(bias), cptr<float>(scale),
        cptr<float>(mean), cptr<float>(rstd), mptr<__nv_bfloat16>(dh), mptr<float>(dscale), mptr<float>(dshift),
        mptr<float>(dw_part), mptr<float>(db_part), c_total, t_len, groups);
  else
    throw bad_dtype("film_epilogue_backward", dtype);
  SODP_CHECK_LAUNCH();
}

}  // namespace sodp
