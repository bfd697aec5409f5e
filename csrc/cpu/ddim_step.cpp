// CPU DDIM transition kernels (formula: sodp_fast/ops/ddim_step.py; per-element math: ../kernel_math.h, shared
// with the CUDA kernels). float32 rows of D = Tp·A elements: the inputs x, ε̂, noise, x_prev may have any row
// stride (unit stride along a row), outputs are contiguous. One row is one work item; its inner loop vectorises
// (the row loops are functions of plain values: a loop reading captured references does not).
#include "../kernel_math.h"
#include "parallel.h"

namespace sodp {
namespace {

// A template so the noise-free loop has no per-element branch.
template <bool kNoise>
SODP_CPU_CLONES float step_row(const float* x, const float* eps, const float* noise, DdimCoef c, float clip,
                               float* out, int d) {
  float sq = 0.f;
#pragma omp simd reduction(+ : sq)
  for (int j = 0; j < d; ++j) {
    const float mean = ddim_mean(x[j], eps[j], c, clip).mean;
    out[j] = kNoise ? mean + c.c4 * noise[j] : mean;
    const float z = ddim_z(out[j], mean, c.c4);  // of the stored value, as on the GPU
    sq += z * z;
  }
  return ddim_row_logprob(sq, d, c.c4);
}

SODP_CPU_CLONES float logprob_row(const float* x, const float* eps, const float* x_prev, DdimCoef c, float clip,
                                  int d) {
  float sq = 0.f;
#pragma omp simd reduction(+ : sq)
  for (int j = 0; j < d; ++j) {
    const float z = ddim_z(x_prev[j], ddim_mean(x[j], eps[j], c, clip).mean, c.c4);
    sq += z * z;
  }
  return ddim_row_logprob(sq, d, c.c4);
}

SODP_CPU_CLONES void grad_row(const float* x, const float* eps, const float* x_prev, DdimCoef c, float clip, float g,
                              float* out, int d) {
  const float k = ddim_grad_factor(c, g);
#pragma omp simd
  for (int j = 0; j < d; ++j) {
    out[j] = ddim_grad(ddim_mean(x[j], eps[j], c, clip), x_prev[j], k);
  }
}

}  // namespace

void ddim_step_cpu(std::uintptr_t x, int64_t sx, std::uintptr_t eps, int64_t se, std::uintptr_t noise, int64_t sz,
                   std::uintptr_t coef, int coef_stride, std::uintptr_t x_prev, std::uintptr_t logp, int64_t n_rows,
                   int d, float clip) {
  const float *xp = cptr<float>(x), *ep = cptr<float>(eps), *zp = cptr<float>(noise), *cp = cptr<float>(coef);
  float *out = mptr<float>(x_prev), *lp = mptr<float>(logp);
  parallel_for(n_rows, n_rows * d, [&](int64_t r) {
    const DdimCoef c = ddim_coef(cp + r * coef_stride);
    lp[r] = zp ? step_row<true>(xp + r * sx, ep + r * se, zp + r * sz, c, clip, out + r * d, d)
               : step_row<false>(xp + r * sx, ep + r * se, nullptr, c, clip, out + r * d, d);
  });
}

void ddim_logprob_cpu(std::uintptr_t x, int64_t sx, std::uintptr_t eps, int64_t se, std::uintptr_t x_prev,
                      int64_t sp, std::uintptr_t coef, int coef_stride, std::uintptr_t logp, int64_t n_rows, int d,
                      float clip) {
  const float *xp = cptr<float>(x), *ep = cptr<float>(eps), *pp = cptr<float>(x_prev), *cp = cptr<float>(coef);
  float* lp = mptr<float>(logp);
  parallel_for(n_rows, n_rows * d, [&](int64_t r) {
    lp[r] = logprob_row(xp + r * sx, ep + r * se, pp + r * sp, ddim_coef(cp + r * coef_stride), clip, d);
  });
}

void ddim_logprob_backward_cpu(std::uintptr_t x, int64_t sx, std::uintptr_t eps, int64_t se, std::uintptr_t x_prev,
                               int64_t sp, std::uintptr_t coef, int coef_stride, std::uintptr_t grad_logp,
                               std::uintptr_t grad_eps, int64_t n_rows, int d, float clip) {
  const float *xp = cptr<float>(x), *ep = cptr<float>(eps), *pp = cptr<float>(x_prev), *cp = cptr<float>(coef);
  const float* gp = cptr<float>(grad_logp);
  float* out = mptr<float>(grad_eps);
  parallel_for(n_rows, n_rows * d, [&](int64_t r) {
    grad_row(xp + r * sx, ep + r * se, pp + r * sp, ddim_coef(cp + r * coef_stride), clip, gp[r], out + r * d, d);
  });
}

}  // namespace sodp
