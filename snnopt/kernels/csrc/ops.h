// Host entry points of the fused neuron kernels and the event-driven synapse:
// snnopt::cpu (cpu/scan.cpp, cpu/synapse.cpp, cpu/trace.cpp, cpu/pool.cpp) and snnopt::cuda (cuda/scan.cu,
// cuda/synapse.cu, built when SNNOPT_WITH_CUDA) have the same signatures and give the
// same results.
//
// Layout: x and every sequence are [T, M] contiguous (M = batch x features), states [M];
// parameter arrays (b = beta or 1, cc = (1 - b) v_rest, alpha, theta) hold M values, one
// per element, or a single value for every element, already in x's dtype.  An absent
// tensor is an empty one.  Parameter gradients come back per element ([M]) for the caller
// to reduce.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace snnopt {
namespace cpu {
#include "ops_decl.inc"

// Number of set bits in packed (int64 scalar): the ones of the binary input it holds.  CPU only.
at::Tensor count_spikes(const at::Tensor& packed);

// {dX, dW, db} of a Conv2d with groups 1 (stride, padding, dilation: two values each) on the
// binary x [R, C, H, W] bit-packed, given g = dL/dy [R, O, Ho, Wo] (needs = (x, weight, bias)):
// dW by the input spikes, dX only at the flat indices x_active (int32, into [R, C, H, W];
// possibly none): as [R, C, H, W], zero elsewhere, or, if compact, one value per listed
// index in x_active's order (cpu/synapse.cpp).  CPU only.
std::vector<at::Tensor> event_conv2d_backward(const at::Tensor& g, const at::Tensor& packed, const at::Tensor& weight,
                                              int64_t H, int64_t W, const std::vector<int64_t>& stride,
                                              const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation,
                                              const at::Tensor& x_active, bool compact, const std::vector<bool>& needs);

// mean_t x[t, m] ([M], like's dtype) of the binary x [steps, M] whose bits are packed: the
// ones of each element counted over time, divided by steps (the value of x.mean(0)).  CPU only.
at::Tensor time_mean_bits(const at::Tensor& packed, int64_t steps, int64_t M, const at::Tensor& like);

// {dX, dW [N, K], db [N], dL/dv0 [M]} (needs = (x, weight, bias, v0)) of a Linear -> LIF/IF
// layer in sparse mode with one decay beta and no reset gate, through traces
// (cpu/trace.cpp), from the active set (idx, sg), dL/ds there (g_out [T, M] read at idx,
// M = batch x N, plus g_tap, one value per entry of idx; either may be empty) and dL/dv_T
// g_v ([M] or empty), for `steps` steps of `batch` samples.  dW from the input x [T, batch, K] bit-packed; dX [T x
// batch, K] at the flat indices x_active (int32, into [T x batch, K]), zero elsewhere, or everywhere if every_x, or, if
// compact, one value per index of x_active.  CPU only.
std::vector<at::Tensor> trace_linear_backward(const at::Tensor& g_out, const at::Tensor& g_tap, const at::Tensor& g_v,
                                              const at::Tensor& idx, const at::Tensor& sg, const at::Tensor& packed,
                                              const at::Tensor& weight, const at::Tensor& x_active, bool every_x,
                                              bool compact, int64_t steps, int64_t batch, double beta, double scale,
                                              const std::vector<bool>& needs);

// Average pooling without padding (window kh x kw, strides sh, sw) of every plane of x
// [..., H, W] (contiguous or not), bit for bit PyTorch's CPU avg_pool2d, and its input
// gradient [..., H, W] from g [..., Ho, Wo] (cpu/pool.cpp).  CPU only.
at::Tensor avg_pool2d(const at::Tensor& x, int64_t kh, int64_t kw, int64_t sh, int64_t sw);
at::Tensor avg_pool2d_backward(const at::Tensor& g, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t sh,
                               int64_t sw);
}  // namespace cpu

#if defined(SNNOPT_WITH_CUDA)
namespace cuda {
#include "ops_decl.inc"
}  // namespace cuda
#endif

}  // namespace snnopt
