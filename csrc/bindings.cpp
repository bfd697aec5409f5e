// pybind11 module sodp_fast._cuda_ext. It sees raw device pointers and the caller's stream only, never torch
// types, so the build needs no torch headers and the module works with any CUDA build of torch.
#include <pybind11/pybind11.h>

#include <cstdint>

namespace sodp {
void ddim_step(std::uintptr_t x, std::uintptr_t eps, std::uintptr_t noise, std::uintptr_t coef, int coef_stride,
               std::uintptr_t x_prev, std::uintptr_t logp, int64_t n_rows, int d, float clip, int dtype,
               std::uintptr_t stream);
}

PYBIND11_MODULE(_cuda_ext, m) {
  m.doc() = "sodp_fast fused CUDA kernels (raw pointers + stream; see sodp_fast/ops/_cuda.py)";
  m.def("ddim_step", &sodp::ddim_step, "fused DDIM step + Gaussian log-prob (noise=0: deterministic)",
        pybind11::arg("x"), pybind11::arg("eps"), pybind11::arg("noise"), pybind11::arg("coef"),
        pybind11::arg("coef_stride"), pybind11::arg("x_prev"), pybind11::arg("logp"), pybind11::arg("n_rows"),
        pybind11::arg("d"), pybind11::arg("clip"), pybind11::arg("dtype"), pybind11::arg("stream"));
}
