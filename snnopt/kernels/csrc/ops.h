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

// Number of set bits in packed (int64 scalar): the ones of the binary input it holds.  CPU only.
at::Tensor count_spikes(const at::Tensor& packed);
}  // namespace cpu

#if defined(SNNOPT_WITH_CUDA)
namespace cuda {
#include "ops_decl.inc"
}  // namespace cuda
#endif

}  // namespace snnopt
