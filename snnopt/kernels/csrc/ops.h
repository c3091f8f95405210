// Host entry points of the fused neuron kernels and the event-driven synapse:
// snnopt::cpu (cpu/scan.cpp, cpu/synapse.cpp) and snnopt::cuda (cuda/scan.cu,
// cuda/synapse.cu, built when SNNOPT_WITH_CUDA) have the same signatures and give the
// same results.
//
// Layout: x and every sequence are [T, M] contiguous (M = batch x features), states [M];
// parameter arrays (b = beta or 1, cc = (1 - b) v_rest, alpha, theta) hold M values,
// one per element, already in x's dtype.  An absent tensor is an empty one.  Parameter gradients come back per element
// ([M]) for the caller to reduce.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace snnopt {
namespace cpu {
#include "ops_decl.inc"

// dW [N, K] and db [N] (empty unless need_b) of the Linear of a fused Linear + LIF region
// from the active set alone, for a decay b shared by all neurons and no reset gate.  idx:
// the active flat indices into [steps, batch, N], sorted; g: dL/dI there (dL/ds f' scale);
// packed: the input bits [steps, batch, K].  With the input trace E_t = b E_{t-1} + x_t,
//   dW = sum over active (t, r, j) of g E_t[r, :] in row j,   db[j] = sum g c_t,  c_t = b c_{t-1} + 1,
// which is sum_t delta_t^T x_t for delta_t = g_t + b delta_{t+1}.  CPU only.
std::vector<at::Tensor> active_linear_weight_grad(const at::Tensor& idx, const at::Tensor& g, const at::Tensor& packed,
                                                  int64_t steps, int64_t batch, int64_t N, int64_t K, double beta,
                                                  bool need_b);
}  // namespace cpu

#if defined(SNNOPT_WITH_CUDA)
namespace cuda {
#include "ops_decl.inc"
}  // namespace cuda
#endif

}  // namespace snnopt
