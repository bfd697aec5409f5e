// pybind11 module sodp_fast._cuda_ext. It sees raw device pointers and the caller's stream only, never torch
// types, so the build needs no torch headers and the module works with any CUDA build of torch. Shapes, dtypes
// and contiguity are checked by the Python launchers (sodp_fast/ops/ddim_step.py, ppo_loss.py, film_epilogue.py);
// C++ exceptions (CUDA errors, no device, bad dtype code) become Python RuntimeError / ValueError.
#include <pybind11/pybind11.h>

#include <cstdint>

namespace sodp {
void ddim_step(std::uintptr_t x, std::uintptr_t eps, std::uintptr_t noise, std::uintptr_t coef, int coef_stride,
               std::uintptr_t x_prev, std::uintptr_t logp, int64_t n_rows, int d, float clip, int dtype,
               std::uintptr_t stream);
void ddim_logprob(std::uintptr_t x, std::uintptr_t eps, std::uintptr_t x_prev, std::uintptr_t coef,
                  int coef_stride, std::uintptr_t logp, int64_t n_rows, int d, float clip, int dtype,
                  std::uintptr_t stream);
void ddim_logprob_backward(std::uintptr_t x, std::uintptr_t eps, std::uintptr_t x_prev, std::uintptr_t coef,
                           int coef_stride, std::uintptr_t grad_logp, std::uintptr_t grad_eps, int64_t n_rows, int d,
                           float clip, int dtype, std::uintptr_t stream);
int ppo_workspace_floats();
void ppo_loss_forward(std::uintptr_t new_logp, std::uintptr_t old_logp, std::uintptr_t adv, int64_t n,
                      float clip_eps, std::uintptr_t workspace, std::uintptr_t out, int dtype, std::uintptr_t stream);
void ppo_loss_backward(std::uintptr_t new_logp, std::uintptr_t old_logp, std::uintptr_t adv,
                       std::uintptr_t grad_loss, int64_t n, float clip_eps, std::uintptr_t grad_new, int dtype,
                       std::uintptr_t stream);
void film_epilogue_forward(std::uintptr_t h, std::uintptr_t w, std::uintptr_t bias, std::uintptr_t scale,
                           std::uintptr_t shift, std::uintptr_t res, std::uintptr_t out, std::uintptr_t mean,
                           std::uintptr_t rstd, int64_t batch, int c_total, int t_len, int groups, float eps,
                           int dtype, std::uintptr_t stream);
void film_epilogue_backward(std::uintptr_t go, std::uintptr_t h, std::uintptr_t w, std::uintptr_t bias,
                            std::uintptr_t scale, std::uintptr_t mean, std::uintptr_t rstd, std::uintptr_t dh,
                            std::uintptr_t dscale, std::uintptr_t dshift, std::uintptr_t dw_part,
                            std::uintptr_t db_part, int64_t batch, int c_total, int t_len, int groups, int dtype,
                            std::uintptr_t stream);
}  // namespace sodp

namespace py = pybind11;

PYBIND11_MODULE(_cuda_ext, m) {
  m.doc() = "sodp_fast fused CUDA kernels (raw pointers + stream; launchers in sodp_fast/ops/)";
  m.def("ddim_step", &sodp::ddim_step, "fused DDIM step + Gaussian log-prob (noise=0: deterministic)",
        py::arg("x"), py::arg("eps"), py::arg("noise"), py::arg("coef"), py::arg("coef_stride"), py::arg("x_prev"),
        py::arg("logp"), py::arg("n_rows"), py::arg("d"), py::arg("clip"), py::arg("dtype"), py::arg("stream"));
  m.def("ddim_logprob", &sodp::ddim_logprob, "log-prob of stored DDIM transitions x -> x_prev under eps",
        py::arg("x"), py::arg("eps"), py::arg("x_prev"), py::arg("coef"), py::arg("coef_stride"), py::arg("logp"),
        py::arg("n_rows"), py::arg("d"), py::arg("clip"), py::arg("dtype"), py::arg("stream"));
  m.def("ddim_logprob_backward", &sodp::ddim_logprob_backward, "d logp / d eps of ddim_logprob",
        py::arg("x"), py::arg("eps"), py::arg("x_prev"), py::arg("coef"), py::arg("coef_stride"),
        py::arg("grad_logp"), py::arg("grad_eps"), py::arg("n_rows"), py::arg("d"), py::arg("clip"),
        py::arg("dtype"), py::arg("stream"));
  m.def("ppo_workspace_floats", &sodp::ppo_workspace_floats, "float32 scratch words ppo_loss_forward needs");
  m.def("ppo_loss_forward", &sodp::ppo_loss_forward, "PPO clip loss: out[3] = (loss, clip_frac, approx_kl)",
        py::arg("new_logp"), py::arg("old_logp"), py::arg("adv"), py::arg("n"), py::arg("clip_eps"),
        py::arg("workspace"), py::arg("out"), py::arg("dtype"), py::arg("stream"));
  m.def("ppo_loss_backward", &sodp::ppo_loss_backward, "d loss / d new_logp of ppo_loss_forward",
        py::arg("new_logp"), py::arg("old_logp"), py::arg("adv"), py::arg("grad_loss"), py::arg("n"),
        py::arg("clip_eps"), py::arg("grad_new"), py::arg("dtype"), py::arg("stream"));
  m.def("film_epilogue_forward", &sodp::film_epilogue_forward,
        "GroupNorm -> Mish -> FiLM -> + residual; saves per-group mean, rstd (scale/shift/res may be 0)",
        py::arg("h"), py::arg("w"), py::arg("bias"), py::arg("scale"), py::arg("shift"), py::arg("res"),
        py::arg("out"), py::arg("mean"), py::arg("rstd"), py::arg("batch"), py::arg("c"), py::arg("t"),
        py::arg("groups"), py::arg("eps"), py::arg("dtype"), py::arg("stream"));
  m.def("film_epilogue_backward", &sodp::film_epilogue_backward,
        "d h, d scale, d shift and per-batch partials [B, C] of d gn_weight, d gn_bias",
        py::arg("grad_out"), py::arg("h"), py::arg("w"), py::arg("bias"), py::arg("scale"), py::arg("mean"),
        py::arg("rstd"), py::arg("dh"), py::arg("dscale"), py::arg("dshift"), py::arg("dw_part"), py::arg("db_part"),
        py::arg("batch"), py::arg("c"), py::arg("t"), py::arg("groups"), py::arg("dtype"), py::arg("stream"));
}
