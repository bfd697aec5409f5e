// pybind11 module sodp_fast._cpu_ext: the CPU kernels of every fused op. Like the CUDA extension it sees raw
// pointers and sizes only, never torch types (no torch headers, no torch C++ toolchain); dtypes (float32),
// devices and layouts are checked by the Python wrapper (sodp_fast/ops/_cpp.py and the op modules).
#include <pybind11/pybind11.h>

#include <cstdint>

namespace sodp {
void ddim_step_cpu(std::uintptr_t x, int64_t sx, std::uintptr_t eps, int64_t se, std::uintptr_t noise, int64_t sz,
                   std::uintptr_t coef, int coef_stride, std::uintptr_t x_prev, std::uintptr_t logp, int64_t n_rows,
                   int d, float clip);
void ddim_logprob_cpu(std::uintptr_t x, int64_t sx, std::uintptr_t eps, int64_t se, std::uintptr_t x_prev,
                      int64_t sp, std::uintptr_t coef, int coef_stride, std::uintptr_t logp, int64_t n_rows, int d,
                      float clip);
void ddim_logprob_backward_cpu(std::uintptr_t x, int64_t sx, std::uintptr_t eps, int64_t se, std::uintptr_t x_prev,
                               int64_t sp, std::uintptr_t coef, int coef_stride, std::uintptr_t grad_logp,
                               std::uintptr_t grad_eps, int64_t n_rows, int d, float clip);
void ppo_loss_forward_cpu(std::uintptr_t new_logp, std::uintptr_t old_logp, std::uintptr_t adv, int64_t n,
                          float clip_eps, std::uintptr_t out);
void ppo_loss_backward_cpu(std::uintptr_t new_logp, std::uintptr_t old_logp, std::uintptr_t adv, float grad_loss,
                           int64_t n, float clip_eps, std::uintptr_t grad_new);
void film_epilogue_forward_cpu(std::uintptr_t h, std::uintptr_t w, std::uintptr_t bias, std::uintptr_t scale,
                               int64_t scale_stride, std::uintptr_t shift, int64_t shift_stride, std::uintptr_t res,
                               std::uintptr_t out, std::uintptr_t mean, std::uintptr_t rstd, int64_t batch,
                               int c_total, int t_len, int groups, float eps);
void film_epilogue_backward_cpu(std::uintptr_t go, std::uintptr_t h, std::uintptr_t w, std::uintptr_t bias,
                                std::uintptr_t scale, int64_t scale_stride, std::uintptr_t mean, std::uintptr_t rstd,
                                std::uintptr_t dh, std::uintptr_t dscale, std::uintptr_t dshift, std::uintptr_t dw,
                                std::uintptr_t db, int64_t batch, int c_total, int t_len, int groups);
}  // namespace sodp

namespace py = pybind11;

PYBIND11_MODULE(_cpu_ext, m) {
  m.doc() = "sodp_fast fused CPU kernels (float32, raw pointers; see sodp_fast/ops/_cpp.py)";
  m.def("ddim_step", &sodp::ddim_step_cpu, "fused DDIM step + Gaussian log-prob (noise=0: deterministic)",
        py::arg("x"), py::arg("sx"), py::arg("eps"), py::arg("se"), py::arg("noise"), py::arg("sz"), py::arg("coef"),
        py::arg("coef_stride"), py::arg("x_prev"), py::arg("logp"), py::arg("n_rows"), py::arg("d"),
        py::arg("clip"));
  m.def("ddim_logprob", &sodp::ddim_logprob_cpu, "log-prob of stored DDIM transitions x -> x_prev under eps",
        py::arg("x"), py::arg("sx"), py::arg("eps"), py::arg("se"), py::arg("x_prev"), py::arg("sp"),
        py::arg("coef"), py::arg("coef_stride"), py::arg("logp"), py::arg("n_rows"), py::arg("d"), py::arg("clip"));
  m.def("ddim_logprob_backward", &sodp::ddim_logprob_backward_cpu, "d logp / d eps of ddim_logprob",
        py::arg("x"), py::arg("sx"), py::arg("eps"), py::arg("se"), py::arg("x_prev"), py::arg("sp"),
        py::arg("coef"), py::arg("coef_stride"), py::arg("grad_logp"), py::arg("grad_eps"), py::arg("n_rows"),
        py::arg("d"), py::arg("clip"));
  m.def("ppo_loss_forward", &sodp::ppo_loss_forward_cpu, "PPO clip loss: out[3] = (loss, clip_frac, approx_kl)",
        py::arg("new_logp"), py::arg("old_logp"), py::arg("adv"), py::arg("n"), py::arg("clip_eps"), py::arg("out"));
  m.def("ppo_loss_backward", &sodp::ppo_loss_backward_cpu, "d loss / d new_logp of ppo_loss_forward",
        py::arg("new_logp"), py::arg("old_logp"), py::arg("adv"), py::arg("grad_loss"), py::arg("n"),
        py::arg("clip_eps"), py::arg("grad_new"));
  m.def("film_epilogue_forward", &sodp::film_epilogue_forward_cpu,
        "GroupNorm -> Mish -> FiLM -> + residual; saves per-group mean, rstd (scale/shift/res/mean/rstd may be 0)",
        py::arg("h"), py::arg("w"), py::arg("bias"), py::arg("scale"), py::arg("scale_stride"), py::arg("shift"),
        py::arg("shift_stride"), py::arg("res"), py::arg("out"), py::arg("mean"), py::arg("rstd"), py::arg("batch"),
        py::arg("c"), py::arg("t"), py::arg("groups"), py::arg("eps"));
  m.def("film_epilogue_backward", &sodp::film_epilogue_backward_cpu,
        "d h, d scale, d shift, d gn_weight, d gn_bias (scale may be 0: no FiLM)", py::arg("grad_out"), py::arg("h"),
        py::arg("w"), py::arg("bias"), py::arg("scale"), py::arg("scale_stride"), py::arg("mean"), py::arg("rstd"),
        py::arg("dh"), py::arg("dscale"), py::arg("dshift"), py::arg("dw"), py::arg("db"), py::arg("batch"),
        py::arg("c"), py::arg("t"), py::arg("groups"));
}
