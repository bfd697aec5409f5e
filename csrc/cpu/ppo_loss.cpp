// CPU PPO ratio/clip loss (formula: sodp_fast/ops/ppo_loss.py; per-row math: ../kernel_math.h, shared with the
// CUDA kernels). Rows are summed in fixed chunks of kChunk, each chunk in double, and the chunk sums in order:
// the same result for any thread count. A chunk (~50 µs of expm1f) is worth a thread of its own.
#include <stdexcept>
#include <vector>

#include "../kernel_math.h"
#include "parallel.h"

namespace sodp {
namespace {
constexpr int64_t kChunk = 4096;
}

void ppo_loss_forward_cpu(std::uintptr_t new_logp, std::uintptr_t old_logp, std::uintptr_t adv, int64_t n,
                          float clip_eps, std::uintptr_t out) {
  if (n <= 0) throw std::invalid_argument("ppo_loss_forward: needs at least one row");
  const float *np = cptr<float>(new_logp), *op = cptr<float>(old_logp), *ap = cptr<float>(adv);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(3 * chunks);
  parallel_for(chunks, chunks > 1 ? kParallelWork : 0, [&](int64_t k) {
    double loss = 0, clipped = 0, kl = 0;
    const int64_t end = n < (k + 1) * kChunk ? n : (k + 1) * kChunk;
    for (int64_t i = k * kChunk; i < end; ++i) {
      const PpoTerms t = ppo_terms(np[i], op[i], ap[i], clip_eps);
      loss += t.loss;
      clipped += t.clipped;
      kl += t.kl;
    }
    part[3 * k] = loss, part[3 * k + 1] = clipped, part[3 * k + 2] = kl;
  });
  double tot[3] = {0, 0, 0};
  for (int64_t k = 0; k < chunks; ++k)
    for (int j = 0; j < 3; ++j) tot[j] += part[3 * k + j];
  float* o = mptr<float>(out);
  for (int j = 0; j < 3; ++j) o[j] = static_cast<float>(tot[j] / static_cast<double>(n));
}

void ppo_loss_backward_cpu(std::uintptr_t new_logp, std::uintptr_t old_logp, std::uintptr_t adv, float grad_loss,
                           int64_t n, float clip_eps, std::uintptr_t grad_new) {
  const float *np = cptr<float>(new_logp), *op = cptr<float>(old_logp), *ap = cptr<float>(adv);
  float* g = mptr<float>(grad_new);
  const float g_over_n = grad_loss / static_cast<float>(n);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  parallel_for(chunks, chunks > 1 ? kParallelWork : 0, [&](int64_t k) {
    const int64_t end = n < (k + 1) * kChunk ? n : (k + 1) * kChunk;
    for (int64_t i = k * kChunk; i < end; ++i) g[i] = ppo_grad(np[i], op[i], ap[i], clip_eps, g_over_n);
  });
}

}  // namespace sodp
