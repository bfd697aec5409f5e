// Work split and code generation of the CPU kernels. Every parallel loop runs independent items (rows,
// (batch, group) pairs, fixed chunks), and no result depends on how they are spread over threads, so outputs are
// bitwise the same for any thread count. The OpenMP runtime is the one torch loaded (libgomp.so.1 is resolved to
// torch's copy when torch is imported first), so torch.set_num_threads / OMP_NUM_THREADS govern these loops too.
#pragma once
#include <omp.h>

#include <cstdint>

namespace sodp {

// Floats an op must touch before it forks threads (~50-100 µs of serial work at the 2-5 ns per element these
// kernels take): below it the fork/join, and a second thread that another job may have descheduled, cost more
// than they save. A 1-vs-2-thread sweep on 2 shared cores gave no reliable gain below ~10^4 floats and a
// load-dependent one above; 2^15 keeps every op of the tiny U-Net's rollout up to B = 32 on the calling thread.
constexpr int64_t kParallelWork = 1 << 15;

// Element loops are compiled twice, for AVX2 and for the x86-64 baseline (SSE2), and the loader picks one per
// machine (an ifunc): 8-wide instead of 4-wide loops where the CPU has AVX2, while the wheel still runs on any
// x86-64. Without -mfma nothing is contracted, so both
// clones round every element alike (only the lane order of the simd sums differs).
#if defined(__x86_64__) && defined(__GNUC__)
#define SODP_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SODP_CPU_CLONES
#endif

template <typename F>
void parallel_for(int64_t n, int64_t work, const F& f) {
  if (work < kParallelWork || n < 2 || omp_get_max_threads() == 1) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) f(i);
}

template <typename T> const T* cptr(std::uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <typename T> T* mptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

}  // namespace sodp
