// Per-element math of every fused op, shared by the CUDA kernels (csrc/*.cu, nvcc) and the CPU kernels
// (csrc/cpu/*.cpp, g++): one definition, so the two builds compute the same float32 expressions and a fix lands
// in both. Only <math.h>'s float functions are used; they exist on the host and, under nvcc, on the device.
// Formulas and tolerances: the docstrings of sodp_fast/ops/{ddim_step,ppo_loss,film_epilogue}.py.
#pragma once
#include <math.h>
#include <string.h>

#ifdef __CUDACC__
#define SODP_HD __host__ __device__
#else
#define SODP_HD
#endif

namespace sodp {

// ---- DDIM step + Gaussian log-prob --------------------------------------------------------------------------
constexpr float kHalfLog2Pi = 0.91893853320467274f;

struct DdimCoef {
  float c0, c1, c2, c3, c4, c5;
};

SODP_HD inline DdimCoef ddim_coef(const float* c) { return {c[0], c[1], c[2], c[3], c[4], c[5]}; }

// x̂0 before the clamp, with x − c1·ε̂ rounded once. A good ε̂ makes x ≈ c1·ε̂ early in the chain, and c0 ≈ 2e3 at
// the first step magnifies the two roundings of the plain float32 form to ~1e-4 in x̂0: that much relative error in
// the mean, and clamp decisions flipped for x̂0 within 1e-4 of ±clip (∂log p/∂ε̂, good ε̂, clip 1, 200 seeded
// [33, 48] draws, off the clamp edge: ‖err‖/‖ref‖ ≤ 1.1e-5 for PyTorch float32, ≤ 1.7e-7 here). fmaf on the GPU; double on the CPU, where c1·ε̂ is exact and the loop vectorises
// without FMA hardware (the same float but for double-rounding ties, ~2⁻²⁹ of inputs).
SODP_HD inline float ddim_x0(float x, float eps, const DdimCoef& c) {
#ifdef __CUDA_ARCH__
  return fmaf(-c.c1, eps, x) * c.c0;
#else
  return static_cast<float>(static_cast<double>(x) - static_cast<double>(c.c1) * eps) * c.c0;
#endif
}

// Mean of p(x_prev | x_t) for one element; clip <= 0 disables the x̂0 clamp. `inside` says whether x̂0 was in the
// clip box (its gradient passes; the bounds count as inside and NaN does not, as in torch.clamp's backward).
// Inside the box ε̃ = ε̂ exactly (c0·c5 = 1), so ε̂ is used as is: recomputing it from a large x̂0 (c0 ≈ 2e3 at the
// first step) would cancel ~4 digits. The clamp's selects let a NaN x̂0 through, as torch.clamp does. Written as
// selects the CPU loops vectorise, returned by value (a bool through a pointer blocks that).
struct DdimMean {
  float mean;
  bool inside;
};

SODP_HD inline DdimMean ddim_mean(float x, float eps, const DdimCoef& c, float clip) {
  const float lim = clip > 0.f ? clip : INFINITY;
  const float x0_raw = ddim_x0(x, eps, c);
  const bool inside = x0_raw >= -lim && x0_raw <= lim;
  const float x0 = x0_raw < -lim ? -lim : (x0_raw > lim ? lim : x0_raw);
  const float eps_c = inside ? eps : (x - c.c5 * x0) / c.c1;
  return {c.c2 * x0 + c.c3 * eps_c, inside};
}

// Standardised residual of a stored x_prev: the row's log-prob is ddim_row_logprob(Σ z², ...).
SODP_HD inline float ddim_z(float x_prev, float mean, float c4) { return (x_prev - mean) / c4; }

SODP_HD inline float ddim_row_logprob(float sum_z2, int d, float c4) {
  return -0.5f * sum_z2 - static_cast<float>(d) * (logf(c4) + kHalfLog2Pi);
}

// ∂log p/∂ε̂_j = k·(x_prev_j − mean_j) inside the clip box, 0 outside, with k this factor of the row's upstream
// gradient g: inside the box mean = c2·x̂0 + c3·ε̂ and x̂0 = (x − c1·ε̂)·c0, so ∂mean/∂ε̂ = c3 − c2·c1·c0, and
// ∂log p/∂mean = (x_prev − mean)/c4².
SODP_HD inline float ddim_grad_factor(const DdimCoef& c, float g) {
  return g * (c.c3 - c.c2 * c.c1 * c.c0) / (c.c4 * c.c4);
}

// The select is on the factor, so x_prev is read unconditionally (a load under a condition blocks vectorisation).
SODP_HD inline float ddim_grad(const DdimMean& m, float x_prev, float k) {
  return (m.inside ? k : 0.f) * (x_prev - m.mean);
}

// ---- PPO ratio/clip loss --------------------------------------------------------------------------------------
struct PpoTerms {
  float loss, clipped, kl;
};

// One row's loss term, clipped flag and k3 term. ρ = 1 + expm1(new − old): at the small log-ratios PPO lives at,
// ρ − 1 keeps float32 relative accuracy and (ρ − 1) − log ρ ≈ log²ρ/2 errs 1/|log ρ| times less than with
// exp(·) − 1, which would cancel catastrophically.
SODP_HD inline PpoTerms ppo_terms(float new_logp, float old_logp, float adv, float clip_eps) {
  const float log_ratio = new_logp - old_logp;
  const float rm1 = expm1f(log_ratio);
  const float ratio = 1.f + rm1;
  const float clipped = fminf(fmaxf(ratio, 1.f - clip_eps), 1.f + clip_eps);
  return {fmaxf(-adv * ratio, -adv * clipped), fabsf(rm1) > clip_eps ? 1.f : 0.f, rm1 - log_ratio};
}

// ∂loss/∂new for one row, g_over_n = upstream gradient / N. The clipped term is strictly the max only outside
// the band on the side the advantage pushes towards; there the gradient is 0, elsewhere that of −A·ρ/N.
SODP_HD inline float ppo_grad(float new_logp, float old_logp, float adv, float clip_eps, float g_over_n) {
  const float ratio = 1.f + expm1f(new_logp - old_logp);
  const bool frozen = (adv > 0.f && ratio > 1.f + clip_eps) || (adv < 0.f && ratio < 1.f - clip_eps);
  return frozen ? 0.f : -adv * ratio * g_over_n;
}

// ---- e^x -------------------------------------------------------------------------------------------------------
// e^x in float32 without a libm call, table or branch, so CPU loops around it vectorise (glibc's expf does not,
// and it bounds the FiLM kernels): Cody–Waite reduction x = k·ln 2 + r, |r| ≤ ln 2/2, Cephes' degree-6
// polynomial (relative error ≤ 2e-7 over the float range), then 2^k applied as two exponent-field factors so that
// results down in the subnormal range round gradually, as expf's do. NaN propagates (the clamps are selects).
SODP_HD inline float pow2i(int k) {  // 2^k for k in [-126, 127] (an unsigned shift: defined for any k)
  const unsigned bits = static_cast<unsigned>(k + 127) << 23;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

SODP_HD inline float exp_f32(float x) {
  x = x < -104.f ? -104.f : (x > 88.73f ? 88.73f : x);  // e^-104 is below the smallest subnormal
  const float kf = (x * 1.44269504f + 12582912.f) - 12582912.f;  // round(x / ln 2): 1.5·2^23 drops the fraction
  const float r = (x - kf * 0.693359375f) - kf * -2.12194440e-4f;  // ln 2 in two parts: kf·hi is exact
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const int k = static_cast<int>(kf), k1 = k >> 1;
  return p * pow2i(k1) * pow2i(k - k1);
}

// ---- FiLM conv-block epilogue: GroupNorm → Mish → FiLM → + residual ----------------------------------------------
// Mish(y) = y·tanh(softplus(y)) with tanh(log(1 + e)) = n/(n + 2), n = e(e + 2), e = exp(y) capped at e²⁰ (where
// n/(n + 2) is 1 in float32): no tanh or log1p, exact to rounding on both tails.
struct MishParts {
  float t;      // tanh(softplus(y))
  float dmish;  // d Mish / dy
};

// d Mish/dy = t + y·sech²(softplus(y))·σ(y), sech² = (1 − t)(1 + t) with 1 − t = 2/(n + 2): no 1 − t² cancellation
// as t → 1.
SODP_HD inline MishParts mish_parts(float y) {
  const float e = exp_f32(y < 20.f ? y : 20.f);
  const float n = e * (e + 2.f);
  const float t = n / (n + 2.f);
  return {t, t + y * (2.f / (n + 2.f)) * (1.f + t) * (e / (1.f + e))};
}

SODP_HD inline float mish(float y) {
  const float e = exp_f32(y < 20.f ? y : 20.f);
  const float n = e * (e + 2.f);
  return y * (n / (n + 2.f));
}

// 1/std of a group from Σ(h − mean)² over its `count` elements (two-pass statistics: no E[h²] − mean² cancellation).
SODP_HD inline float gn_rstd(float sum_sq_dev, int count, float eps) {
  return 1.f / sqrtf(sum_sq_dev / static_cast<float>(count) + eps);
}

SODP_HD inline float gn_xhat(float h, float mean, float rstd) { return (h - mean) * rstd; }

// Output before the residual add; without FiLM pass scale = 1, shift = 0 (exact).
SODP_HD inline float film_out(float xhat, float w, float b, float scale, float shift) {
  return mish(xhat * w + b) * scale + shift;
}

struct FilmGrad {
  float dy;   // ∂L/∂y, y = x̂·w + b the Mish input: Σ dy·x̂ and Σ dy are ∂gn_weight, ∂gn_bias; dy·w is ∂L/∂x̂
  float act;  // Mish(y): Σ go·act is ∂scale (and Σ go is ∂shift)
};

SODP_HD inline FilmGrad film_grad(float go, float xhat, float w, float b, float scale) {
  const float y = xhat * w + b;
  const MishParts m = mish_parts(y);
  return {go * scale * m.dmish, y * m.t};
}

// GroupNorm input gradient: ∂h = rstd·(∂x̂ − mean(∂x̂) − x̂·mean(∂x̂·x̂)), the means over the group.
SODP_HD inline float gn_input_grad(float dxhat, float xhat, float mean_dxhat, float mean_dxhat_xhat, float rstd) {
  return (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * rstd;
}

}  // namespace sodp
