// CPU FiLM conv-block epilogue (formula: sodp_fast/ops/film_epilogue.py; per-element math, Mish and its
// derivative included: ../kernel_math.h, shared with the CUDA kernels). float32; h, residual, out, ∂out, ∂h are
// [B, C, T] contiguous, scale, shift [B, C] with any row stride (the U-Net's are halves of one [B, 2C] tensor).
// One work item per (batch, group), whose CG·T values are contiguous: two-pass statistics (mean, then
// Σ(h − mean)²), then flat element loops over the whole group. T is 3 … 12 here, too short for per-channel loops
// to vectorise, so the per-channel parameters are first spread to per-element scratch rows. The backward turns
// ∂x̂ into ∂h in place; ∂gn_weight, ∂gn_bias are summed in double, over T and then over the batch in batch order.
#include <vector>

#include "../kernel_math.h"
#include "parallel.h"

namespace sodp {
namespace {

// dst[cl·T + t] = src[cl] (or `fallback` for an absent input) for the group's cg channels.
void spread(float* dst, const float* src, float fallback, int cg, int t_len) {
  for (int cl = 0; cl < cg; ++cl) {
    const float v = src ? src[cl] : fallback;
    for (int t = 0; t < t_len; ++t) dst[cl * t_len + t] = v;
  }
}

// Per-thread scratch of n floats (grows once; the work items of one call all have the same size).
float* scratch(int64_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// Statistics and output of one group, a [cg, T] slab (scale/shift/res may be null; mean/rstd null: not saved).
SODP_CPU_CLONES void forward_group(const float* h, const float* w, const float* bias, const float* scale,
                                   const float* shift, const float* res, float* out, int cg, int t_len, float eps,
                                   float* mean, float* rstd) {
  const int count = cg * t_len;
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < count; ++i) s += h[i];
  const float m = s / static_cast<float>(count);
  float q = 0.f;
#pragma omp simd reduction(+ : q)
  for (int i = 0; i < count; ++i) q += (h[i] - m) * (h[i] - m);
  const float r = gn_rstd(q, count, eps);
  float *cw = scratch(4 * static_cast<int64_t>(count)), *cb = cw + count, *cs = cb + count, *ct = cs + count;
  spread(cw, w, 1.f, cg, t_len);
  spread(cb, bias, 0.f, cg, t_len);
  spread(cs, scale, 1.f, cg, t_len);
  spread(ct, shift, 0.f, cg, t_len);
  if (res) {
#pragma omp simd
    for (int i = 0; i < count; ++i) out[i] = film_out(gn_xhat(h[i], m, r), cw[i], cb[i], cs[i], ct[i]) + res[i];
  } else {
#pragma omp simd
    for (int i = 0; i < count; ++i) out[i] = film_out(gn_xhat(h[i], m, r), cw[i], cb[i], cs[i], ct[i]);
  }
  if (mean) *mean = m, *rstd = r;
}

// ∂h of one group into dh; per-channel ∂scale, ∂shift (if scale) and this batch's ∂gn_weight, ∂gn_bias partials.
SODP_CPU_CLONES void backward_group(const float* go, const float* h, const float* w, const float* bias,
                                    const float* scale, float m, float r, float* dh, float* dscale, float* dshift,
                                    double* dw, double* db, int cg, int t_len) {
  const int count = cg * t_len;
  float *cw = scratch(5 * static_cast<int64_t>(count)), *cb = cw + count, *cs = cb + count, *dy = cs + count,
        *act = dy + count;
  spread(cw, w, 1.f, cg, t_len);
  spread(cb, bias, 0.f, cg, t_len);
  spread(cs, scale, 1.f, cg, t_len);
  float m1 = 0.f, m2 = 0.f;  // Σ ∂x̂, Σ ∂x̂·x̂ over the group
#pragma omp simd reduction(+ : m1, m2)
  for (int i = 0; i < count; ++i) {
    const float xhat = gn_xhat(h[i], m, r);
    const FilmGrad fg = film_grad(go[i], xhat, cw[i], cb[i], cs[i]);
    dy[i] = fg.dy;
    act[i] = fg.act;
    dh[i] = fg.dy * cw[i];  // ∂x̂ for now
    m1 += dh[i];
    m2 += dh[i] * xhat;
  }
  // Per-channel sums over T in double (the loops are scalar anyway, T being too short to vectorise): ∂gn_bias =
  // Σ dy cancels, dy having both signs.
  for (int cl = 0; cl < cg; ++cl) {
    const int o = cl * t_len;
    double dsc = 0, dsh = 0, dwc = 0, dbc = 0;
    for (int t = o; t < o + t_len; ++t) {
      dsc += static_cast<double>(go[t]) * act[t];
      dsh += go[t];
      dwc += static_cast<double>(dy[t]) * gn_xhat(h[t], m, r);
      dbc += dy[t];
    }
    dw[cl] = dwc, db[cl] = dbc;
    if (scale) dscale[cl] = static_cast<float>(dsc), dshift[cl] = static_cast<float>(dsh);
  }
  m1 /= static_cast<float>(count);
  m2 /= static_cast<float>(count);
#pragma omp simd
  for (int i = 0; i < count; ++i) dh[i] = gn_input_grad(dh[i], gn_xhat(h[i], m, r), m1, m2, r);
}

}  // namespace

void film_epilogue_forward_cpu(std::uintptr_t h, std::uintptr_t w, std::uintptr_t bias, std::uintptr_t scale,
                               int64_t scale_stride, std::uintptr_t shift, int64_t shift_stride, std::uintptr_t res,
                               std::uintptr_t out, std::uintptr_t mean, std::uintptr_t rstd, int64_t batch,
                               int c_total, int t_len, int groups, float eps) {
  const float *hp = cptr<float>(h), *wp = cptr<float>(w), *bp = cptr<float>(bias), *sp = cptr<float>(scale),
              *tp = cptr<float>(shift), *rp = cptr<float>(res);
  float *op = mptr<float>(out), *mp = mptr<float>(mean), *qp = mptr<float>(rstd);
  const int cg = c_total / groups;
  parallel_for(batch * groups, batch * c_total * t_len, [&](int64_t bg) {
    const int64_t b = bg / groups, c0 = (bg % groups) * cg, base = (b * c_total + c0) * t_len;
    forward_group(hp + base, wp + c0, bp + c0, sp ? sp + b * scale_stride + c0 : nullptr,
                  tp ? tp + b * shift_stride + c0 : nullptr, rp ? rp + base : nullptr, op + base, cg, t_len, eps,
                  mp ? mp + bg : nullptr, qp ? qp + bg : nullptr);
  });
}

void film_epilogue_backward_cpu(std::uintptr_t go, std::uintptr_t h, std::uintptr_t w, std::uintptr_t bias,
                                std::uintptr_t scale, int64_t scale_stride, std::uintptr_t mean, std::uintptr_t rstd,
                                std::uintptr_t dh, std::uintptr_t dscale, std::uintptr_t dshift, std::uintptr_t dw,
                                std::uintptr_t db, int64_t batch, int c_total, int t_len, int groups) {
  const float *gp = cptr<float>(go), *hp = cptr<float>(h), *wp = cptr<float>(w), *bp = cptr<float>(bias),
              *sp = cptr<float>(scale), *mp = cptr<float>(mean), *qp = cptr<float>(rstd);
  float *dhp = mptr<float>(dh), *dsp = mptr<float>(dscale), *dtp = mptr<float>(dshift);
  const int cg = c_total / groups;
  std::vector<double> dw_part(batch * c_total), db_part(batch * c_total);
  parallel_for(batch * groups, batch * c_total * t_len, [&](int64_t bg) {
    const int64_t b = bg / groups, c0 = (bg % groups) * cg, base = (b * c_total + c0) * t_len, bc = b * c_total + c0;
    backward_group(gp + base, hp + base, wp + c0, bp + c0, sp ? sp + b * scale_stride + c0 : nullptr, mp[bg], qp[bg],
                   dhp + base, sp ? dsp + bc : nullptr, sp ? dtp + bc : nullptr, dw_part.data() + bc,
                   db_part.data() + bc, cg, t_len);
  });
  std::vector<double> sw(c_total, 0.0), sb(c_total, 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int c = 0; c < c_total; ++c) sw[c] += dw_part[b * c_total + c], sb[c] += db_part[b * c_total + c];
  float *dwp = mptr<float>(dw), *dbp = mptr<float>(db);
  for (int c = 0; c < c_total; ++c) dwp[c] = static_cast<float>(sw[c]), dbp[c] = static_cast<float>(sb[c]);
}

}  // namespace sodp
