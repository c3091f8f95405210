// CPU kernels of average pooling without padding (a window of kh x kw, strides sh, sw) on
// x [..., H, W], every plane [H, W] on its own:
//
//   forward   y[p, q]  = 0 + (sum_{i < kh, j < kw} x[p sh + i, q sw + j]) / (kh kw)
//   backward  dx[u, v] = sum over the windows (p, q) holding (u, v), in (p, q) order, of
//                        g[p, q] / (kh kw), starting from 0
//
// the window summed row by row from 0, and the gradient added window by window, in the order
// of PyTorch's own CPU kernels, so that the results are bit for bit theirs.  Planes are
// split over the threads; a 2 x 2 window is unrolled.
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../ops.h"

namespace snnopt {
namespace cpu {
namespace {

// One plane's forward; KH = KW = 0: the window's size at run time (kh, kw).
template <typename T, int KH, int KW>
void pool_plane(const T* x, T* y, int64_t W, int64_t Ho, int64_t Wo, int64_t kh, int64_t kw, int64_t sh, int64_t sw) {
  const int64_t h = KH ? KH : kh, w = KW ? KW : kw;
  const T area = T(h * w);
  for (int64_t p = 0; p < Ho; ++p) {
    const T* rows = x + p * sh * W;
    T* out = y + p * Wo;
    for (int64_t q = 0; q < Wo; ++q) {
      T sum = T(0);
      for (int64_t i = 0; i < h; ++i)
        for (int64_t j = 0; j < w; ++j) sum += rows[i * W + q * sw + j];
      out[q] = T(0) + sum / area;
    }
  }
}

// One plane's input gradient (dx zeroed by the caller).
template <typename T, int KH, int KW>
void unpool_plane(const T* g, T* dx, int64_t W, int64_t Ho, int64_t Wo, int64_t kh, int64_t kw, int64_t sh,
                  int64_t sw) {
  const int64_t h = KH ? KH : kh, w = KW ? KW : kw;
  const T area = T(h * w);
  for (int64_t p = 0; p < Ho; ++p) {
    T* rows = dx + p * sh * W;
    const T* in = g + p * Wo;
    for (int64_t q = 0; q < Wo; ++q) {
      const T delta = in[q] / area;
      for (int64_t i = 0; i < h; ++i)
        for (int64_t j = 0; j < w; ++j) rows[i * W + q * sw + j] += delta;
    }
  }
}

// The planes split over the threads: f(K, c0, c1) for the planes [c0, c1), K a
// std::integral_constant holding 2 for a 2 x 2 window (unrolled), else 0 (sizes at run time).
template <class F>
void over_planes(int64_t planes, int64_t kh, int64_t kw, F&& f) {
  at::parallel_for(0, planes, 1, [&](int64_t c0, int64_t c1) {
    if (kh == 2 && kw == 2)
      f(std::integral_constant<int, 2>{}, c0, c1);
    else
      f(std::integral_constant<int, 0>{}, c0, c1);
  });
}

// The sizes of t with planes of h x w.
std::vector<int64_t> with_planes(const at::Tensor& t, int64_t h, int64_t w) {
  auto sizes = t.sizes().vec();
  sizes[sizes.size() - 2] = h, sizes[sizes.size() - 1] = w;
  return sizes;
}

void check_window(int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t sh, int64_t sw, const char* name) {
  TORCH_CHECK(kh > 0 && kw > 0 && sh > 0 && sw > 0 && kh <= H && kw <= W, "snnopt ", name, ": a ", kh, " x ", kw,
              " window with strides ", sh, ", ", sw, " does not fit planes of ", H, " x ", W);
}

}  // namespace

at::Tensor avg_pool2d(const at::Tensor& x, int64_t kh, int64_t kw, int64_t sh, int64_t sw) {
  TORCH_CHECK(x.dim() >= 3, "snnopt avg_pool2d: expected [..., H, W] with at least one plane, got ", x.sizes());
  const int64_t H = x.size(-2), W = x.size(-1);
  check_window(H, W, kh, kw, sh, sw, "avg_pool2d");
  const int64_t Ho = (H - kh) / sh + 1, Wo = (W - kw) / sw + 1, planes = x.numel() / std::max<int64_t>(H * W, 1);
  const auto xc = x.contiguous();
  auto y = at::empty(with_planes(x, Ho, Wo), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "snnopt_avg_pool2d", [&] {
    using T = scalar_t;
    const T* xp = xc.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    over_planes(planes, kh, kw, [&](auto k, int64_t c0, int64_t c1) {
      constexpr int K = decltype(k)::value;
      for (int64_t c = c0; c < c1; ++c)
        pool_plane<T, K, K>(xp + c * H * W, yp + c * Ho * Wo, W, Ho, Wo, kh, kw, sh, sw);
    });
  });
  return y;
}

at::Tensor avg_pool2d_backward(const at::Tensor& g, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t sh,
                               int64_t sw) {
  TORCH_CHECK(g.dim() >= 3, "snnopt avg_pool2d_backward: expected [..., Ho, Wo], got ", g.sizes());
  check_window(H, W, kh, kw, sh, sw, "avg_pool2d_backward");
  const int64_t Ho = (H - kh) / sh + 1, Wo = (W - kw) / sw + 1;
  TORCH_CHECK(g.size(-2) == Ho && g.size(-1) == Wo, "snnopt avg_pool2d_backward: the gradient has planes of ",
              g.size(-2), " x ", g.size(-1), ", the pooling gives ", Ho, " x ", Wo);
  const int64_t planes = g.numel() / std::max<int64_t>(Ho * Wo, 1);
  const auto gc = g.contiguous();
  auto dx = at::zeros(with_planes(g, H, W), g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "snnopt_avg_pool2d_backward", [&] {
    using T = scalar_t;
    const T* gp = gc.data_ptr<T>();
    T* dp = dx.data_ptr<T>();
    over_planes(planes, kh, kw, [&](auto k, int64_t c0, int64_t c1) {
      constexpr int K = decltype(k)::value;
      for (int64_t c = c0; c < c1; ++c)
        unpool_plane<T, K, K>(gp + c * Ho * Wo, dp + c * H * W, W, Ho, Wo, kh, kw, sh, sw);
    });
  });
  return dx;
}

}  // namespace cpu
}  // namespace snnopt
