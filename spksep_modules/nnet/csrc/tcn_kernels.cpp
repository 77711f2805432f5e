// Fused CPU kernels for the TCN's element-wise layers (float32, [batch, C, frames],
// contiguous): PReLU + gLN and the dilated depthwise conv, forward and backward.
//
// Why: the PyTorch spelling of these layers (spksep_modules/nnet/cpu_kernels.py) makes
// 6-20 passes over each activation; every pass here works on one channel row at a time
// (frames floats, in L1/L2), so an activation is read once or twice and written once.
// Same maths as the PyTorch spelling; tests compare the two (tests/nnet/test_native.py).
// Float sums go through `omp simd` reductions (several partial sums, as a vectorised
// reduction does), channel and batch totals in double.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

inline float prelu(float v, float alpha) { return std::max(v, 0.0f) + alpha * std::min(v, 0.0f); }

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              name, ": expected a contiguous float32 CPU tensor");
}

}  // namespace

// PReLU then gLN over (C, frames): returns {y, mean [batch] (float64), rstd [batch]}.
// The mean is kept in double and subtracted as two floats (hi + lo): where the mean is
// large against the spread (a DC offset), one float mean would shift every output.
std::vector<at::Tensor> prelu_gln_forward(const at::Tensor& x, double alpha_d,
                                          const at::Tensor& gamma, const at::Tensor& beta,
                                          double eps) {
  check(x, "x");
  const int64_t N = x.size(0), C = x.size(1), T = x.size(2);
  const float alpha = static_cast<float>(alpha_d);
  auto y = at::empty_like(x);
  auto mean = at::empty({N}, x.options().dtype(at::kDouble));
  auto rstd = at::empty({N}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const auto g = gamma.contiguous(), b = beta.contiguous();
  const float* gp = g.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  // Per row: the mean (sums taken about the row's first value, so a large offset costs no
  // precision) and the sum of squared deviations; rows combine exactly (Chan et al.).
  std::vector<double> row_mean(N * C), row_m2(N * C);
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    const float a = alpha;  // a local: a captured reference could alias the stores
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = xp + r * T;
      const float v0 = prelu(xr[0], a);
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t t = 0; t < T; ++t) s += prelu(xr[t], a) - v0;
      const double m = v0 + static_cast<double>(s) / T;
      const float mf = static_cast<float>(m);
      float q = 0.0f;
#pragma omp simd reduction(+ : q)
      for (int64_t t = 0; t < T; ++t) {
        const float d = prelu(xr[t], a) - mf;
        q += d * d;
      }
      row_mean[r] = m;
      row_m2[r] = std::max(0.0, q - T * (m - mf) * (m - mf));  // about m, not mf
    }
  });
  double* mp = mean.data_ptr<double>();
  float* rp = rstd.data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    double mu = 0.0;
    for (int64_t c = 0; c < C; ++c) mu += row_mean[n * C + c];
    mu /= static_cast<double>(C);
    double m2 = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      const double d = row_mean[n * C + c] - mu;
      m2 += row_m2[n * C + c] + static_cast<double>(T) * d * d;
    }
    const float var = static_cast<float>(m2 / static_cast<double>(C * T));
    mp[n] = mu;
    rp[n] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(var) + eps));
  }
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    const float a = alpha;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / C, c = r % C;
      const float scale = gp[c] * rp[n], shift = bp[c];
      const float m_hi = static_cast<float>(mp[n]), m_lo = static_cast<float>(mp[n] - m_hi);
      const float* xr = xp + r * T;
      float* __restrict__ yr = yp + r * T;
#pragma omp simd
      for (int64_t t = 0; t < T; ++t) yr[t] = (prelu(xr[t], a) - m_hi - m_lo) * scale + shift;
    }
  });
  return {y, mean, rstd};
}

// Backward of prelu_gln_forward: {dx, grad_alpha [1], grad_gamma [C], grad_beta [C]}.
std::vector<at::Tensor> prelu_gln_backward(const at::Tensor& x, const at::Tensor& grad,
                                           double alpha_d, const at::Tensor& gamma,
                                           const at::Tensor& mean, const at::Tensor& rstd) {
  check(x, "x");
  check(grad, "grad");
  const int64_t N = x.size(0), C = x.size(1), T = x.size(2);
  const float alpha = static_cast<float>(alpha_d);
  const float* xp = x.data_ptr<float>();
  const float* dp = grad.data_ptr<float>();
  const auto gm = gamma.contiguous();
  const float* gp = gm.data_ptr<float>();
  const double* mp = mean.data_ptr<double>();
  const float* rp = rstd.data_ptr<float>();
  auto dx = at::empty_like(x);
  float* op = dx.data_ptr<float>();
  // Row sums: sum_t g and sum_t g * (y - mean), y the PReLU output.
  std::vector<double> s_g(N * C), s_gy(N * C), g_alpha(N * C);
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    const float a = alpha;  // a local: a captured reference could alias the stores
    for (int64_t r = begin; r < end; ++r) {
      const float m_hi = static_cast<float>(mp[r / C]);
      const float m_lo = static_cast<float>(mp[r / C] - m_hi);
      const float* xr = xp + r * T;
      const float* gr = dp + r * T;
      float sg = 0.0f, sgy = 0.0f;
#pragma omp simd reduction(+ : sg, sgy)
      for (int64_t t = 0; t < T; ++t) {
        sg += gr[t];
        sgy += gr[t] * (prelu(xr[t], a) - m_hi - m_lo);
      }
      s_g[r] = sg;
      s_gy[r] = sgy;
    }
  });
  // Per example, with xhat = (y - mean) * rstd and means over (C, frames):
  // dy = rstd * (gamma g - mean(gamma g) - xhat mean(gamma g xhat)) = k1[c] g + k2 (y - mean) + k3.
  std::vector<float> k2(N), k3(N);
  for (int64_t n = 0; n < N; ++n) {
    double gg = 0.0, ggx = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      gg += s_g[n * C + c] * gp[c];
      ggx += s_gy[n * C + c] * rp[n] * gp[c];
    }
    const double count = static_cast<double>(C * T);
    k2[n] = static_cast<float>(-static_cast<double>(rp[n]) * rp[n] * (ggx / count));
    k3[n] = static_cast<float>(-static_cast<double>(rp[n]) * (gg / count));
  }
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    const float a = alpha;  // a local: a captured reference could alias the stores
    std::vector<float> dy_row(T);  // one row of dy, in cache
    float* __restrict__ dy = dy_row.data();
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / C, c = r % C;
      const float k1 = gp[c] * rp[n], kk2 = k2[n], kk3 = k3[n];
      const float m_hi = static_cast<float>(mp[n]), m_lo = static_cast<float>(mp[n] - m_hi);
      const float* xr = xp + r * T;
      const float* gr = dp + r * T;
      float* __restrict__ orow = op + r * T;
#pragma omp simd
      for (int64_t t = 0; t < T; ++t)
        dy[t] = k1 * gr[t] + kk2 * (prelu(xr[t], a) - m_hi - m_lo) + kk3;
      // PReLU's backward on the row (in cache): d alpha sums dy * x where x <= 0, and dx is
      // dy times the slope (1 or alpha). Separate loops: each one vectorises.
      float ga = 0.0f;
#pragma omp simd reduction(+ : ga)
      for (int64_t t = 0; t < T; ++t) {
        const float v = xr[t];
        ga += dy[t] * std::min(v, 0.0f);
      }
#pragma omp simd
      for (int64_t t = 0; t < T; ++t) orow[t] = xr[t] > 0.0f ? dy[t] : a * dy[t];
      g_alpha[r] = ga;
    }
  });
  auto grad_alpha = at::empty({1}, x.options());
  auto grad_gamma = at::empty({C}, x.options());
  auto grad_beta = at::empty({C}, x.options());
  double total_alpha = 0.0;
  for (int64_t r = 0; r < N * C; ++r) total_alpha += g_alpha[r];
  grad_alpha.data_ptr<float>()[0] = static_cast<float>(total_alpha);
  for (int64_t c = 0; c < C; ++c) {
    double gam = 0.0, bet = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      gam += s_gy[n * C + c] * rp[n];
      bet += s_g[n * C + c];
    }
    grad_gamma.data_ptr<float>()[c] = static_cast<float>(gam);
    grad_beta.data_ptr<float>()[c] = static_cast<float>(bet);
  }
  return {dx, grad_alpha, grad_gamma, grad_beta};
}

// Dilated depthwise conv with 'same' zero padding: weight [C, P] (P odd), bias [C] or empty.
at::Tensor depthwise_forward(const at::Tensor& x, const at::Tensor& weight,
                             const at::Tensor& bias, int64_t dilation) {
  check(x, "x");
  const int64_t N = x.size(0), C = x.size(1), T = x.size(2);
  const auto w = weight.contiguous();
  const int64_t P = w.size(1), half = (P - 1) / 2;
  const float* wp = w.data_ptr<float>();
  const bool has_bias = bias.numel() > 0;
  const auto bb = has_bias ? bias.contiguous() : bias;
  const float* bp = has_bias ? bb.data_ptr<float>() : nullptr;
  auto y = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = r % C;
      const float* xr = xp + r * T;
      float* yr = yp + r * T;
      const float wc = wp[c * P + half], b0 = has_bias ? bp[c] : 0.0f;
#pragma omp simd
      for (int64_t t = 0; t < T; ++t) yr[t] = wc * xr[t] + b0;
      for (int64_t k = 0; k < P; ++k) {
        const int64_t off = (k - half) * dilation;
        if (k == half || std::abs(off) >= T) continue;
        const float wk = wp[c * P + k];
        const int64_t lo = std::max<int64_t>(0, -off), hi = std::min<int64_t>(T, T - off);
#pragma omp simd
        for (int64_t t = lo; t < hi; ++t) yr[t] += wk * xr[t + off];
      }
    }
  });
  return y;
}

// Backward of depthwise_forward: {dx, grad_weight [C, P], grad_bias [C] (empty without bias)}.
std::vector<at::Tensor> depthwise_backward(const at::Tensor& x, const at::Tensor& grad,
                                           const at::Tensor& weight, int64_t dilation,
                                           bool has_bias) {
  check(x, "x");
  check(grad, "grad");
  const int64_t N = x.size(0), C = x.size(1), T = x.size(2);
  const auto w = weight.contiguous();
  const int64_t P = w.size(1), half = (P - 1) / 2;
  const float* wp = w.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const float* gp = grad.data_ptr<float>();
  auto dx = at::empty_like(x);
  float* dp = dx.data_ptr<float>();
  std::vector<double> row_w(N * C * P, 0.0), row_b(N * C, 0.0);
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = r % C;
      const float* xr = xp + r * T;
      const float* gr = gp + r * T;
      float* dr = dp + r * T;
      const float wc = wp[c * P + half];
      float sb = 0.0f;
#pragma omp simd reduction(+ : sb)
      for (int64_t t = 0; t < T; ++t) {
        dr[t] = wc * gr[t];
        sb += gr[t];
      }
      row_b[r] = sb;
      for (int64_t k = 0; k < P; ++k) {
        const int64_t off = (k - half) * dilation;
        if (std::abs(off) >= T) continue;
        const int64_t lo = std::max<int64_t>(0, -off), hi = std::min<int64_t>(T, T - off);
        // y[t] read x[t + off]: the tap's gradient pairs g[t] with x[t + off], and
        // x[t + off] gets w * g[t] back.
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t t = lo; t < hi; ++t) s += gr[t] * xr[t + off];
        row_w[r * P + k] = s;
        if (k == half) continue;
        const float wk = wp[c * P + k];
#pragma omp simd
        for (int64_t t = lo; t < hi; ++t) dr[t + off] += wk * gr[t];
      }
    }
  });
  auto grad_w = at::empty({C, P}, x.options());
  float* gw = grad_w.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < P; ++k) {
      double s = 0.0;
      for (int64_t n = 0; n < N; ++n) s += row_w[(n * C + c) * P + k];
      gw[c * P + k] = static_cast<float>(s);
    }
  auto grad_b = at::empty({has_bias ? C : 0}, x.options());
  if (has_bias) {
    for (int64_t c = 0; c < C; ++c) {
      double s = 0.0;
      for (int64_t n = 0; n < N; ++n) s += row_b[n * C + c];
      grad_b.data_ptr<float>()[c] = static_cast<float>(s);
    }
  }
  return {dx, grad_w, grad_b};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("prelu_gln_forward", &prelu_gln_forward, "PReLU + gLN forward");
  m.def("prelu_gln_backward", &prelu_gln_backward, "PReLU + gLN backward");
  m.def("depthwise_forward", &depthwise_forward, "dilated depthwise conv forward");
  m.def("depthwise_backward", &depthwise_backward, "dilated depthwise conv backward");
}
