// Python bindings of the neuron kernels: each entry point runs the CPU or the CUDA kernel
// according to the device of its first tensor (see ops.h for the conventions).
#include <torch/extension.h>

#include "ops.h"

namespace snnopt {
namespace {

#if defined(SNNOPT_WITH_CUDA)
#define SNNOPT_DISPATCH(name, first, ...) ((first).is_cuda() ? cuda::name(__VA_ARGS__) : cpu::name(__VA_ARGS__))
#else
inline void require_cpu(const at::Tensor& t) {
  TORCH_CHECK(!t.is_cuda(), "the snnopt kernels were built without CUDA; rebuild on a machine with the CUDA toolkit");
}
#define SNNOPT_DISPATCH(name, first, ...) (require_cpu(first), cpu::name(__VA_ARGS__))
#endif

std::vector<at::Tensor> dense_forward(const at::Tensor& x, const at::Tensor& v0, const at::Tensor& i0,
                                      const at::Tensor& b, const at::Tensor& cc, const at::Tensor& alpha,
                                      const at::Tensor& theta, const std::vector<double>& cfg, bool save, bool record) {
  return SNNOPT_DISPATCH(dense_forward, x, x, v0, i0, b, cc, alpha, theta, cfg, save, record);
}

std::vector<at::Tensor> dense_backward(const at::Tensor& g_out, const at::Tensor& g_v, const at::Tensor& g_i,
                                       const at::Tensor& g_vseq, const at::Tensor& h, const at::Tensor& i_seq,
                                       const at::Tensor& v0, const at::Tensor& i0, const at::Tensor& b,
                                       const at::Tensor& alpha, const at::Tensor& theta, const std::vector<double>& cfg,
                                       const std::vector<bool>& needs) {
  return SNNOPT_DISPATCH(dense_backward, h, g_out, g_v, g_i, g_vseq, h, i_seq, v0, i0, b, alpha, theta, cfg, needs);
}

std::vector<at::Tensor> rate_stats(const at::Tensor& x, const at::Tensor& v0, const at::Tensor& i0, const at::Tensor& b,
                                   const at::Tensor& cc, const at::Tensor& alpha, const at::Tensor& theta,
                                   const std::vector<double>& cfg, bool record) {
  return SNNOPT_DISPATCH(rate_stats, x, x, v0, i0, b, cc, alpha, theta, cfg, record);
}

std::vector<at::Tensor> sparse_forward(const at::Tensor& x, const at::Tensor& v0, const at::Tensor& i0,
                                       const at::Tensor& b, const at::Tensor& cc, const at::Tensor& alpha,
                                       const at::Tensor& theta, const std::vector<double>& cfg, double band, bool save,
                                       bool record) {
  return SNNOPT_DISPATCH(sparse_forward, x, x, v0, i0, b, cc, alpha, theta, cfg, band, save, record);
}

std::vector<at::Tensor> sparse_backward(const at::Tensor& g_out, const at::Tensor& g_tap, const at::Tensor& g_v,
                                        const at::Tensor& g_i, const at::Tensor& g_vseq, const at::Tensor& idx,
                                        const at::Tensor& sg, const at::Tensor& gates, const at::Tensor& b,
                                        const at::Tensor& alpha, const std::vector<double>& cfg, int64_t steps,
                                        int64_t states, const std::vector<bool>& needs) {
  return SNNOPT_DISPATCH(sparse_backward, sg, g_out, g_tap, g_v, g_i, g_vseq, idx, sg, gates, b, alpha, cfg, steps,
                         states, needs);
}

std::vector<at::Tensor> pack_spikes(const at::Tensor& x) { return SNNOPT_DISPATCH(pack_spikes, x, x); }

at::Tensor count_spikes(const at::Tensor& packed) {
  TORCH_CHECK(!packed.is_cuda(), "snnopt count_spikes runs on the CPU only");
  return cpu::count_spikes(packed);
}

std::vector<at::Tensor> event_conv2d_backward(const at::Tensor& g, const at::Tensor& packed, const at::Tensor& weight,
                                              int64_t H, int64_t W, const std::vector<int64_t>& stride,
                                              const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
                                              const at::Tensor& x_active, bool compact,
                                              const std::vector<bool>& needs) {
  TORCH_CHECK(!g.is_cuda(), "snnopt event_conv2d_backward runs on the CPU only");
  return cpu::event_conv2d_backward(g, packed, weight, H, W, stride, padding, dilation, x_active, compact, needs);
}

at::Tensor avg_pool2d(const at::Tensor& x, int64_t kh, int64_t kw, int64_t sh, int64_t sw) {
  TORCH_CHECK(!x.is_cuda(), "snnopt avg_pool2d runs on the CPU only");
  return cpu::avg_pool2d(x, kh, kw, sh, sw);
}

at::Tensor avg_pool2d_backward(const at::Tensor& g, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t sh,
                               int64_t sw) {
  TORCH_CHECK(!g.is_cuda(), "snnopt avg_pool2d_backward runs on the CPU only");
  return cpu::avg_pool2d_backward(g, H, W, kh, kw, sh, sw);
}

at::Tensor time_mean_bits(const at::Tensor& packed, int64_t steps, int64_t M, const at::Tensor& like) {
  TORCH_CHECK(!packed.is_cuda() && !like.is_cuda(), "snnopt time_mean_bits runs on the CPU only");
  return cpu::time_mean_bits(packed, steps, M, like);
}

std::vector<at::Tensor> trace_linear_backward(const at::Tensor& g_out, const at::Tensor& g_tap, const at::Tensor& g_v,
                                              const at::Tensor& idx, const at::Tensor& sg, const at::Tensor& packed,
                                              const at::Tensor& weight, const at::Tensor& x_active, bool every_x,
                                              bool compact, int64_t steps, int64_t batch, double beta, double scale,
                                              const std::vector<bool>& needs) {
  TORCH_CHECK(!sg.is_cuda(), "snnopt trace_linear_backward runs on the CPU only");
  return cpu::trace_linear_backward(g_out, g_tap, g_v, idx, sg, packed, weight, x_active, every_x, compact, steps,
                                    batch, beta, scale, needs);
}

at::Tensor unpack_spikes(const at::Tensor& packed, int64_t n, const at::Tensor& like) {
  return SNNOPT_DISPATCH(unpack_spikes, like, packed, n, like);
}

at::Tensor event_linear(const at::Tensor& packed, int64_t rows, const at::Tensor& weight, const at::Tensor& bias) {
  return SNNOPT_DISPATCH(event_linear, weight, packed, rows, weight, bias);
}

std::vector<at::Tensor> event_linear_backward(const at::Tensor& g, const at::Tensor& packed, const at::Tensor& weight,
                                              const at::Tensor& x_active, bool compact,
                                              const std::vector<bool>& needs) {
  return SNNOPT_DISPATCH(event_linear_backward, g, g, packed, weight, x_active, compact, needs);
}

}  // namespace
}  // namespace snnopt

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "snnopt fused neuron and event-driven synapse kernels";
  m.def("dense_forward", &snnopt::dense_forward);
  m.def("dense_backward", &snnopt::dense_backward);
  m.def("rate_stats", &snnopt::rate_stats);
  m.def("sparse_forward", &snnopt::sparse_forward);
  m.def("sparse_backward", &snnopt::sparse_backward);
  m.def("pack_spikes", &snnopt::pack_spikes);
  m.def("count_spikes", &snnopt::count_spikes);
  m.def("time_mean_bits", &snnopt::time_mean_bits);
  m.def("avg_pool2d", &snnopt::avg_pool2d);
  m.def("avg_pool2d_backward", &snnopt::avg_pool2d_backward);
  m.def("trace_linear_backward", &snnopt::trace_linear_backward);
  m.def("unpack_spikes", &snnopt::unpack_spikes);
  m.def("event_linear", &snnopt::event_linear);
  m.def("event_linear_backward", &snnopt::event_linear_backward);
  m.def("event_conv2d_backward", &snnopt::event_conv2d_backward);
}
