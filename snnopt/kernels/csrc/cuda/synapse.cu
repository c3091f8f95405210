// CUDA kernels of the event-driven synapse (snnopt::cuda, declared in ../ops.h): a Linear
// layer y = x W^T + b whose binary input x ([R, K]) is kept bit-packed (bit k & 7 of byte
// k >> 3 holds the flat element k), as in ../cpu/synapse.cpp.
//
//   forward   one block per (row r, tile of kThreads outputs n): the block lists the row's
//             spikes i from the bits into shared memory, a chunk at a time, then each thread
//             adds W^T[i, n] over the list (W^T = weight.t().contiguous(), so a warp's loads
//             are coalesced).
//   dW        one block per (input feature i, tile of outputs n): the block lists the rows r
//             with x[r, i] = 1, then each thread adds g[r, n]; each dW^T[i, n] has one owner,
//             so there are no float atomics and the result is deterministic.
//   dX        one warp per listed flat index (r, i): <g[r, :], W^T[i, :]>, reduced with
//             warp shuffles.
//
// Spikes (forward) and rows (dW) are added in increasing order starting from the bias (or
// zero), the order of the CPU kernels, so with --fmad=false y and dW equal the CPU results
// bit for bit.  Float and double are dispatched.

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <cub/block/block_scan.cuh>
#include <limits>
#include <vector>

#include "../ops.h"

namespace snnopt {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kBits = 8;                  // bits each thread examines per chunk
constexpr int kChunk = kThreads * kBits;  // bits a block lists per chunk (its shared list's capacity)
constexpr int kMaxPackBlocks = 4096;      // grid of the grid-stride packing kernel
constexpr unsigned kFullMask = 0xffffffffu;

using BlockScan = cub::BlockScan<int, kThreads>;

// ---------------------------------------------------------------------------- device side

__device__ int64_t element() { return blockIdx.x * int64_t(blockDim.x) + threadIdx.x; }

__device__ unsigned bit(const uint8_t* bits, int64_t k) { return (bits[k >> 3] >> (k & 7)) & 1u; }

// Bits k .. k + w - 1 (0 < w <= 8) as the low w bits of the result.
__device__ unsigned window(const uint8_t* bits, int64_t k, int w) {
  const int64_t byte = k >> 3;
  const int shift = static_cast<int>(k & 7);
  unsigned v = unsigned(bits[byte]) >> shift;
  if (shift + w > 8) v |= unsigned(bits[byte + 1]) << (8 - shift);  // only read when those bits exist
  return v & ((1u << w) - 1u);
}

// Appends the positions base + j of the set bits j of every thread's `mask` to `list`, in
// thread order (so in increasing position when thread t's positions precede thread t + 1's);
// returns the length of the list.  Block-wide: every thread calls it, and the caller
// synchronises before `list` or `scan` is written again.
__device__ int compact(unsigned mask, int base, int* list, BlockScan::TempStorage& scan) {
  int pos, total;
  BlockScan(scan).ExclusiveSum(__popc(mask), pos, total);
  while (mask) {
    const int j = __ffs(mask) - 1;
    list[pos++] = base + j;
    mask &= mask - 1;
  }
  __syncthreads();
  return total;
}

// Packing: warp w handles the elements [32 w, 32 w + 32) (grid-stride), whose ballot of
// x == 1 is the little-endian 32-bit word of bytes 4 w .. 4 w + 3; lanes 0-3 store those
// bytes, so every byte of `packed` is written exactly once.  state[0] += number of ones,
// state[1] = 1 when an element is neither 0 nor 1 (NaN included).
template <typename T>
__global__ void pack_kernel(const T* x, int64_t n, uint8_t* packed, unsigned long long* state) {
  __shared__ unsigned long long block_ones;
  if (threadIdx.x == 0) block_ones = 0;
  __syncthreads();
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t bytes = (n + 7) >> 3;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;  // a multiple of 32
  unsigned long long ones = 0;
  bool odd = false;
  for (int64_t base = element() - lane; base < n; base += stride) {  // uniform across the warp
    const int64_t k = base + lane;
    const T s = k < n ? x[k] : T(0);
    const bool one = s == T(1);
    odd |= !(one || s == T(0));
    const unsigned word = __ballot_sync(kFullMask, one);
    const int64_t byte = (base >> 3) + lane;
    if (lane < 4 && byte < bytes) packed[byte] = static_cast<uint8_t>(word >> (8 * lane));
    ones += __popc(word);
  }
  if (lane == 0 && ones) atomicAdd(&block_ones, ones);
  const int any_odd = __syncthreads_or(odd);  // also orders the shared adds before the read
  if (threadIdx.x == 0) {
    if (block_ones) atomicAdd(state, block_ones);
    if (any_odd) state[1] = 1;
  }
}

// count = -1 if x was not binary, else its number of ones.
__global__ void pack_count_kernel(const unsigned long long* state, int64_t* count) {
  *count = state[1] ? int64_t(-1) : static_cast<int64_t>(state[0]);
}

template <typename T>
__global__ void unpack_kernel(const uint8_t* bits, int64_t n, T* x) {
  const int64_t k = element();
  if (k >= n) return;
  x[k] = T(bit(bits, k));
}

// y[r, n] = bias[n] + sum over the spikes i of row r, in increasing i, of wt[i, n].
// Grid (R, tiles of N); blockDim.x == kThreads.
template <typename T>
__global__ void event_linear_kernel(const uint8_t* bits, const T* wt, const T* bias, int64_t K, int64_t N, T* y) {
  __shared__ int list[kChunk];
  __shared__ BlockScan::TempStorage scan;
  const int64_t r = blockIdx.x;
  const int64_t n = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  const bool owner = n < N;
  T acc = owner && bias ? bias[n] : T(0);
  const int64_t row = r * K;
  for (int64_t c0 = 0; c0 < K; c0 += kChunk) {
    // Thread t examines the positions c0 + 8 t .. c0 + 8 t + 7 of the row.
    const int first = kBits * threadIdx.x;
    const int64_t p = c0 + first;
    const unsigned mask = p < K ? window(bits, row + p, K - p < kBits ? static_cast<int>(K - p) : kBits) : 0u;
    const int total = compact(mask, first, list, scan);
    if (owner) {
      const T* w = wt + c0 * N + n;
      for (int s = 0; s < total; ++s) acc = acc + w[list[s] * N];
    }
    __syncthreads();  // the list and the scan storage are rewritten by the next chunk
  }
  if (owner) y[r * N + n] = acc;
}

// dW^T[i, n] = sum over the rows r with x[r, i] = 1, in increasing r, of g[r, n].
// Grid (K, tiles of N); blockDim.x == kThreads.
template <typename T>
__global__ void event_linear_dw_kernel(const uint8_t* bits, const T* g, int64_t R, int64_t K, int64_t N, T* dwt) {
  __shared__ int list[kChunk];
  __shared__ BlockScan::TempStorage scan;
  const int64_t i = blockIdx.x;
  const int64_t n = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  const bool owner = n < N;
  T acc = T(0);
  for (int64_t c0 = 0; c0 < R; c0 += kChunk) {
    // Thread t examines the rows c0 + 8 t .. c0 + 8 t + 7 at column i.
    const int first = kBits * threadIdx.x;
    unsigned mask = 0;
#pragma unroll
    for (int j = 0; j < kBits; ++j) {
      const int64_t r = c0 + first + j;
      if (r < R) mask |= bit(bits, r * K + i) << j;
    }
    const int total = compact(mask, first, list, scan);
    if (owner) {
      const T* gc = g + c0 * N + n;
      for (int s = 0; s < total; ++s) acc = acc + gc[list[s] * N];
    }
    __syncthreads();
  }
  if (owner) dwt[i * N + n] = acc;
}

// dx[k] = <g[r, :], wt[i, :]> for each listed k = r K + i: one warp per entry.
template <typename T>
__global__ void event_linear_dx_kernel(const int32_t* active, int64_t nnz, const T* g, const T* wt, int64_t K,
                                       int64_t N, int64_t numel, bool compact, T* dx) {
  const int64_t a = element() / kWarp;  // uniform across the warp
  if (a >= nnz) return;
  const int lane = threadIdx.x & (kWarp - 1);
  const int64_t k = active[a];
  CUDA_KERNEL_ASSERT(k >= 0 && k < numel);
  const T* gr = g + (k / K) * N;
  const T* wi = wt + (k % K) * N;
  T acc = T(0);
  for (int64_t c = lane; c < N; c += kWarp) acc = acc + gr[c] * wi[c];
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) acc = acc + __shfl_down_sync(kFullMask, acc, off);
  if (lane == 0) dx[compact ? a : k] = acc;
}

// ---------------------------------------------------------------------------- host side

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

unsigned int blocks(int64_t n, int64_t per_block = kThreads) {
  return static_cast<unsigned int>((n + per_block - 1) / per_block);
}

// Tiles of kThreads outputs (gridDim.y).
unsigned int tiles(int64_t N, const char* name) {
  const int64_t t = (N + kThreads - 1) / kThreads;
  TORCH_CHECK(t <= 65535, "snnopt.cuda.", name, ": ", N, " outputs are too many for one grid");
  return static_cast<unsigned int>(t);
}

void check_packed(const at::Tensor& packed, const at::Tensor& like, int64_t bits, const char* name) {
  TORCH_CHECK(packed.device() == like.device(), "snnopt.cuda.", name, ": packed is on ", packed.device(), ", expected ",
              like.device());
  TORCH_CHECK(packed.scalar_type() == at::kByte, "snnopt.cuda.", name, ": packed must be uint8, got ",
              packed.scalar_type());
  TORCH_CHECK(packed.is_contiguous(), "snnopt.cuda.", name, ": packed must be contiguous");
  TORCH_CHECK(packed.numel() * 8 >= bits, "snnopt.cuda.", name, ": ", packed.numel(), " packed bytes for ", bits,
              " inputs");
}

void check_weight(const at::Tensor& weight, const char* name) {
  TORCH_CHECK(weight.is_cuda() && weight.dim() == 2, "snnopt.cuda.", name, ": weight must be a 2-d CUDA tensor");
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble, "snnopt.cuda.", name,
              ": weight must be float32 or float64, got ", weight.scalar_type());
}

}  // namespace

// Unlike the CPU kernel, which returns an empty `packed` for a non-binary x, this returns
// the packed bits always and leaves the verdict on the device: count (0-dim int64) is the
// number of ones, or -1 when x is not binary.  No host synchronisation happens here; the
// caller reads the count (its one sync) and drops `packed` when it is -1.
std::vector<at::Tensor> pack_spikes(const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "snnopt.cuda.pack_spikes: x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const int64_t n = xc.numel();
  const auto opts = xc.options();
  at::Tensor packed = at::empty({(n + 7) / 8}, opts.dtype(at::kByte));
  at::Tensor count = at::empty({}, opts.dtype(at::kLong));
  at::Tensor state = at::zeros({2}, opts.dtype(at::kLong));  // {ones, not binary}
  auto* sp = reinterpret_cast<unsigned long long*>(state.mutable_data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "snnopt_cuda_pack_spikes", [&] {
    if (n > 0) {
      const unsigned int grid = static_cast<unsigned int>(std::min<int64_t>(blocks(n), kMaxPackBlocks));
      pack_kernel<scalar_t>
          <<<grid, kThreads, 0, stream()>>>(xc.const_data_ptr<scalar_t>(), n, packed.mutable_data_ptr<uint8_t>(), sp);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  pack_count_kernel<<<1, 1, 0, stream()>>>(sp, count.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {packed, count};
}

at::Tensor unpack_spikes(const at::Tensor& packed, int64_t n, const at::Tensor& like) {
  TORCH_CHECK(like.is_cuda(), "snnopt.cuda.unpack_spikes: like must be a CUDA tensor");
  TORCH_CHECK(n >= 0, "snnopt.cuda.unpack_spikes: n must be >= 0, got ", n);
  const c10::cuda::CUDAGuard guard(like.device());
  check_packed(packed, like, n, "unpack_spikes");
  at::Tensor x = at::empty({n}, like.options());
  if (n == 0) return x;
  AT_DISPATCH_FLOATING_TYPES(like.scalar_type(), "snnopt_cuda_unpack_spikes", [&] {
    unpack_kernel<scalar_t>
        <<<blocks(n), kThreads, 0, stream()>>>(packed.const_data_ptr<uint8_t>(), n, x.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return x;
}

at::Tensor event_linear(const at::Tensor& packed, int64_t rows, const at::Tensor& weight, const at::Tensor& bias) {
  check_weight(weight, "event_linear");
  const c10::cuda::CUDAGuard guard(weight.device());
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(rows >= 0, "snnopt.cuda.event_linear: rows must be >= 0, got ", rows);
  check_packed(packed, weight, rows * K, "event_linear");
  const bool with_bias = bias.defined() && bias.numel() > 0;
  if (with_bias) {
    TORCH_CHECK(bias.device() == weight.device() && bias.scalar_type() == weight.scalar_type() && bias.numel() == N,
                "snnopt.cuda.event_linear: bias must hold ", N, " values of weight's dtype and device");
  }
  at::Tensor y = at::empty({rows, N}, weight.options());
  if (rows == 0 || N == 0) return y;
  const at::Tensor wt = weight.t().contiguous();  // [K, N]: the weights leaving input i, contiguous
  const at::Tensor bc = with_bias ? bias.contiguous() : at::Tensor();
  TORCH_CHECK(rows <= std::numeric_limits<int32_t>::max(), "snnopt.cuda.event_linear: too many rows (", rows, ")");
  const dim3 grid(static_cast<unsigned int>(rows), tiles(N, "event_linear"));
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "snnopt_cuda_event_linear", [&] {
    using T = scalar_t;
    event_linear_kernel<T><<<grid, kThreads, 0, stream()>>>(packed.const_data_ptr<uint8_t>(), wt.const_data_ptr<T>(),
                                                            with_bias ? bc.const_data_ptr<T>() : nullptr, K, N,
                                                            y.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::vector<at::Tensor> event_linear_backward(const at::Tensor& g, const at::Tensor& packed, const at::Tensor& weight,
                                              const at::Tensor& x_active, bool compact,
                                              const std::vector<bool>& needs) {
  TORCH_CHECK(needs.size() == 3, "snnopt: needs must hold 3 flags (x, weight, bias)");
  check_weight(weight, "event_linear_backward");
  const c10::cuda::CUDAGuard guard(g.device());
  TORCH_CHECK(g.dim() == 2 && g.device() == weight.device() && g.scalar_type() == weight.scalar_type(),
              "snnopt.cuda.event_linear_backward: g must be [R, N] with weight's dtype and device");
  const int64_t R = g.size(0), N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(g.size(1) == N, "snnopt.cuda.event_linear_backward: g has ", g.size(1), " columns, weight ", N,
              " outputs");
  const bool need_x = needs[0], need_w = needs[1], need_b = needs[2];
  const at::Tensor gc = g.contiguous();
  const at::Tensor empty = gc.new_empty({0});
  at::Tensor dX = empty, dW = empty, db = need_b ? gc.sum(0) : empty;
  if (need_w) {
    check_packed(packed, gc, R * K, "event_linear_backward");
    at::Tensor dwt = at::empty({K, N}, gc.options());
    if (K > 0 && N > 0) {
      TORCH_CHECK(K <= std::numeric_limits<int32_t>::max(), "snnopt.cuda.event_linear_backward: too many inputs (", K,
                  ")");
      const dim3 grid(static_cast<unsigned int>(K), tiles(N, "event_linear_backward"));
      AT_DISPATCH_FLOATING_TYPES(gc.scalar_type(), "snnopt_cuda_event_linear_dw", [&] {
        using T = scalar_t;
        event_linear_dw_kernel<T><<<grid, kThreads, 0, stream()>>>(
            packed.const_data_ptr<uint8_t>(), gc.const_data_ptr<T>(), R, K, N, dwt.mutable_data_ptr<T>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    dW = dwt.t().contiguous();
  }
  if (need_x) {
    TORCH_CHECK(x_active.device() == gc.device() && x_active.scalar_type() == at::kInt,
                "snnopt.cuda.event_linear_backward: x_active must be int32 on ", gc.device());
    const at::Tensor ac = x_active.contiguous();
    const int64_t nnz = ac.numel();
    dX = compact ? at::empty({nnz}, gc.options()) : at::zeros({R, K}, gc.options());
    if (N > 0 && nnz > 0) {
      const at::Tensor wt = weight.t().contiguous();  // [K, N]: row i is column i of W
      AT_DISPATCH_FLOATING_TYPES(gc.scalar_type(), "snnopt_cuda_event_linear_dx", [&] {
        using T = scalar_t;
        event_linear_dx_kernel<T><<<blocks(nnz, kThreads / kWarp), kThreads, 0, stream()>>>(
            ac.const_data_ptr<int32_t>(), nnz, gc.const_data_ptr<T>(), wt.const_data_ptr<T>(), K, N, R * K, compact,
            dX.mutable_data_ptr<T>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  }
  return {dX, dW, db};
}

}  // namespace cuda
}  // namespace snnopt
