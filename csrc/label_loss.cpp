// The ltc_fast loss extension: op schemas (torch.library) and CPU kernels.
//
// Four ops over [B, N] logits, each one pass over the logits:
//   multi_label_forward   BCE-with-logits (+ pos_weight, label mask) and sigmoid probas
//   multi_label_backward  dlogits, recomputing the sigmoid from the logits in the accumulation dtype
//   single_label_forward  softmax cross-entropy (+ ignore_index, label smoothing), softmax probas and the
//                         per-row statistics [B, 2] (max, log sum exp(x - max)) that backward needs
//   single_label_backward dlogits from the logits and those statistics
// A forward returns the summed loss (0-d) or, with elementwise=true, the per-element / per-row loss; the
// Python side divides for 'mean'. Losses and accumulations are float32 (float64 for float64 logits).
// CUDA kernels for the same schemas live in label_loss_cuda.cu, built only where CUDA is available.

// ATen's Vectorized<T> picks its instruction set from CPU_CAPABILITY_* macros that torch's own build sets per
// kernel file. The build adds -mavx2 -mfma -mf16c where the building CPU has them
// (ltc_fast.ops.loss_extension.cpu_build_flags); declare the matching capability before any ATen header so
// Vectorized<float> is 8 AVX2 lanes calling torch's SLEEF exp (1 ulp). Elsewhere it is ATen's portable
// fallback (libm per lane): the same contracts, slower.
#if defined(__AVX2__) && defined(__FMA__) && !defined(CPU_CAPABILITY)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "label_loss.h"

namespace ltc_fast {
namespace {

using at::Tensor;

// ------------------------------------------------------------------------------------------ vector helpers
// Each kernel runs its inner loop on whole vectors of the accumulation type (at::vec::Vectorized<acc_t>) and
// finishes the last (size % lanes) elements with the scalar helpers of label_loss.h, which stay the reference
// for the per-element math (the CUDA kernels use them too): sigmoid_from_vec, bce_term_vec and bce_grad_vec
// below are their lane-wise twins, with the ternaries as blendv / maximum.
template <typename acc_t>
using Vec = at::vec::Vectorized<acc_t>;

// Logits / outputs may be half or bfloat16 while the math runs in float: convert one vector's worth through a
// small buffer (the compiler turns these loops into the ISA's conversion instructions).
template <typename acc_t, typename scalar_t>
inline Vec<acc_t> load_acc(const scalar_t* src) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    return Vec<acc_t>::loadu(src);
  } else {
    acc_t buf[Vec<acc_t>::size()];
    for (int64_t k = 0; k < Vec<acc_t>::size(); ++k) buf[k] = static_cast<acc_t>(src[k]);
    return Vec<acc_t>::loadu(buf);
  }
}

template <typename acc_t, typename scalar_t>
inline void store_as(scalar_t* dst, const Vec<acc_t>& v) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    v.store(dst);
  } else {
    acc_t buf[Vec<acc_t>::size()];
    v.store(buf);
    for (int64_t k = 0; k < Vec<acc_t>::size(); ++k) dst[k] = static_cast<scalar_t>(buf[k]);
  }
}

// A lane mask (all bits set where keep[k]) from one vector's worth of bools, for blendv.
template <typename acc_t>
inline Vec<acc_t> keep_mask(const bool* keep) {
  acc_t buf[Vec<acc_t>::size()];
  for (int64_t k = 0; k < Vec<acc_t>::size(); ++k) buf[k] = keep[k] ? acc_t(1) : acc_t(0);
  return Vec<acc_t>::loadu(buf) != Vec<acc_t>(acc_t(0));
}

// Per-lane sums: a vector of acc_t partial sums over a short block of vectors, flushed into per-lane doubles
// (the long sums keep double accuracy over 10^5+ terms without a float -> double conversion per vector).
// Lane k always receives the same elements for a given shape, blocks end at the same places, and total()
// adds the lanes in order, so a sum does not depend on the thread count.
template <typename acc_t>
struct LaneSums {
  static constexpr int64_t kLanes = Vec<acc_t>::size();
  static constexpr int kBlock = 16;  // vectors per acc_t partial sum
  Vec<acc_t> block = Vec<acc_t>(acc_t(0));
  int in_block = 0;
  double lanes[kLanes] = {};
  double tail = 0.0;  // the scalar remainder

  void add(const Vec<acc_t>& v) {
    block = block + v;
    if (++in_block == kBlock) flush();
  }
  void flush() {
    acc_t buf[kLanes];
    block.store(buf);
    for (int64_t k = 0; k < kLanes; ++k) lanes[k] += buf[k];
    block = Vec<acc_t>(acc_t(0));
    in_block = 0;
  }
  double total() {
    flush();
    double sum = 0.0;
    for (int64_t k = 0; k < kLanes; ++k) sum += lanes[k];
    return sum + tail;
  }
};

// log1p(e) for e in [0, 1] (e = exp(-|x|) in the BCE), in plain vector arithmetic: SLEEF's general log1p costs
// about ten exps. log1p(e) = 2 atanh(s) with s = e / (2 + e) in [0, 1/3] (no cancellation: e >= 0), and
// atanh(s) = s (1 + s^2/3 + s^4/5 + ...) is cut where the next term is below half an ulp of acc_t
// (s^2 <= 1/9): after s^14 for float, s^32 for double. A few ulp, like the libm call of the scalar tail.
template <typename acc_t>
inline Vec<acc_t> log1p_unit(const Vec<acc_t>& e) {
  constexpr int kTerms = std::is_same_v<acc_t, float> ? 8 : 17;
  const Vec<acc_t> s = e / (Vec<acc_t>(acc_t(2)) + e);
  const Vec<acc_t> s2 = s * s;
  Vec<acc_t> series(acc_t(1) / acc_t(2 * kTerms - 1));
  for (int k = kTerms - 2; k >= 0; --k) {
    series = at::vec::fmadd(series, s2, Vec<acc_t>(acc_t(1) / acc_t(2 * k + 1)));
  }
  return Vec<acc_t>(acc_t(2)) * s * series;
}

// Lane-wise sigmoid_from: 1 / (1 + e) for x >= 0, e / (1 + e) below.
template <typename acc_t>
inline Vec<acc_t> sigmoid_from_vec(const Vec<acc_t>& x, const Vec<acc_t>& e) {
  const Vec<acc_t> inv = Vec<acc_t>(acc_t(1)) / (Vec<acc_t>(acc_t(1)) + e);
  return Vec<acc_t>::blendv(e * inv, inv, x >= Vec<acc_t>(acc_t(0)));
}

// Lane-wise bce_term: softplus(-x) = log1p(e) + max(-x, 0) never overflows.
template <typename acc_t>
inline Vec<acc_t> bce_term_vec(const Vec<acc_t>& x, const Vec<acc_t>& y, const Vec<acc_t>& p,
                               const Vec<acc_t>& e) {
  const Vec<acc_t> one(acc_t(1));
  const Vec<acc_t> softplus_neg = log1p_unit(e) + at::vec::maximum(x.neg(), Vec<acc_t>(acc_t(0)));
  return (one - y) * x + (one + (p - one) * y) * softplus_neg;
}

// Lane-wise bce_grad: (1 + (p - 1) y) sigmoid(x) - p y.
template <typename acc_t>
inline Vec<acc_t> bce_grad_vec(const Vec<acc_t>& sigmoid, const Vec<acc_t>& y, const Vec<acc_t>& p) {
  const Vec<acc_t> one(acc_t(1));
  return (one + (p - one) * y) * sigmoid - p * y;
}

// The multi-label kernels walk a flat range of elements that may cross rows; within one row the label index
// (for pos_weight and a per-label mask) is contiguous, so they work span by span: [i, i + len) with label
// index col .. col + len - 1, never past the end of a row.
template <typename F>
inline void for_each_row_span(int64_t begin, int64_t end, int64_t n, F&& span) {
  int64_t col = begin % n;
  for (int64_t i = begin; i < end;) {
    const int64_t len = std::min(end - i, n - col);
    span(i, col, len);
    i += len;
    col = 0;
  }
}

// Where a span's inputs start: pos_weight and a per-label mask follow the label index, the rest the element.
template <typename acc_t>
struct MultiLabelInputs {
  const acc_t* y;
  const acc_t* p;  // nullptr: no pos_weight
  const bool* mask;  // nullptr: no mask
  bool mask_per_label;

  const acc_t* pos_weight_at(int64_t col) const { return p ? p + col : nullptr; }
  const bool* mask_at(int64_t i, int64_t col) const { return mask ? mask + (mask_per_label ? col : i) : nullptr; }
};

// The pointers of contiguous multi-label inputs (see check_multi_label).
template <typename acc_t>
MultiLabelInputs<acc_t> multi_label_inputs(const Tensor& targets, const c10::optional<Tensor>& pos_weight,
                                           const c10::optional<Tensor>& label_mask) {
  return {targets.const_data_ptr<acc_t>(), pos_weight ? pos_weight->const_data_ptr<acc_t>() : nullptr,
          label_mask ? label_mask->const_data_ptr<bool>() : nullptr, label_mask && label_mask->dim() == 1};
}

// Multi-label work is split into fixed chunks of elements (not rows, so B = 1 with a large N still runs in
// parallel); each chunk's partial sum lands in its own slot and the slots are added in order, so the loss
// does not depend on the number of threads.
constexpr int64_t kChunk = 16384;

// Forward over one span: probas, and either the per-element loss (out_loss) or its sum (sums).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void multi_label_forward_span(const scalar_t* x, const acc_t* y, const acc_t* p, const bool* keep, int64_t len,
                              scalar_t* out_probas, acc_t* out_loss, LaneSums<acc_t>& sums) {
  constexpr int64_t lanes = Vec<acc_t>::size();
  const Vec<acc_t> zero(acc_t(0)), no_weight(acc_t(1));
  int64_t j = 0;
  for (; j + lanes <= len; j += lanes) {
    const Vec<acc_t> xv = load_acc<acc_t>(x + j);
    const Vec<acc_t> e = xv.abs().neg().exp();  // one exp per element, shared by loss and sigmoid
    store_as<acc_t>(out_probas + j, sigmoid_from_vec(xv, e));
    Vec<acc_t> term = bce_term_vec(xv, Vec<acc_t>::loadu(y + j), p ? Vec<acc_t>::loadu(p + j) : no_weight, e);
    if (keep) term = Vec<acc_t>::blendv(zero, term, keep_mask<acc_t>(keep + j));
    if (out_loss) {
      term.store(out_loss + j);
    } else {
      sums.add(term);
    }
  }
  for (; j < len; ++j) {  // scalar tail
    const acc_t xj = static_cast<acc_t>(x[j]);
    const acc_t e = exp_(-std::abs(xj));
    out_probas[j] = static_cast<scalar_t>(sigmoid_from(xj, e));
    const acc_t term = (keep == nullptr || keep[j]) ? bce_term(xj, y[j], p ? p[j] : acc_t(1), e) : acc_t(0);
    if (out_loss) {
      out_loss[j] = term;
    } else {
      sums.tail += term;
    }
  }
}

template <typename scalar_t>
void multi_label_forward_kernel(const Tensor& logits, const Tensor& targets, const c10::optional<Tensor>& pos_weight,
                                const c10::optional<Tensor>& label_mask, Tensor* elementwise_loss, Tensor& probas,
                                double& total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = logits.size(1), numel = logits.numel();
  const scalar_t* x = logits.const_data_ptr<scalar_t>();
  const auto in = multi_label_inputs<acc_t>(targets, pos_weight, label_mask);
  scalar_t* out_probas = probas.mutable_data_ptr<scalar_t>();
  acc_t* out_loss = elementwise_loss ? elementwise_loss->mutable_data_ptr<acc_t>() : nullptr;
  const int64_t chunks = (numel + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = c * kChunk, end = std::min(numel, begin + kChunk);
      LaneSums<acc_t> sums;
      for_each_row_span(begin, end, n, [&](int64_t i, int64_t col, int64_t len) {
        multi_label_forward_span(x + i, in.y + i, in.pos_weight_at(col), in.mask_at(i, col), len,
                                 out_probas + i, out_loss ? out_loss + i : nullptr, sums);
      });
      partial[c] = sums.total();
    }
  });
  total = 0.0;
  for (double v : partial) total += v;
}

// Backward over one span: dlogits = bce_grad * grad (0 where masked). g_stride 0: one grad for every element.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void multi_label_backward_span(const scalar_t* x, const acc_t* y, const acc_t* p, const bool* keep, const acc_t* g,
                               int64_t g_stride, int64_t len, scalar_t* out) {
  constexpr int64_t lanes = Vec<acc_t>::size();
  const Vec<acc_t> zero(acc_t(0)), no_weight(acc_t(1));
  int64_t j = 0;
  for (; j + lanes <= len; j += lanes) {
    const Vec<acc_t> xv = load_acc<acc_t>(x + j);
    const Vec<acc_t> sigmoid = sigmoid_from_vec(xv, xv.abs().neg().exp());
    const Vec<acc_t> gv = g_stride ? Vec<acc_t>::loadu(g + j) : Vec<acc_t>(g[0]);
    Vec<acc_t> d = bce_grad_vec(sigmoid, Vec<acc_t>::loadu(y + j), p ? Vec<acc_t>::loadu(p + j) : no_weight) * gv;
    if (keep) d = Vec<acc_t>::blendv(zero, d, keep_mask<acc_t>(keep + j));
    store_as<acc_t>(out + j, d);
  }
  for (; j < len; ++j) {  // scalar tail
    const acc_t xj = static_cast<acc_t>(x[j]);
    const bool kept = keep == nullptr || keep[j];
    const acc_t d = kept ? bce_grad(sigmoid_from(xj, exp_(-std::abs(xj))), y[j], p ? p[j] : acc_t(1)) *
                               g[j * g_stride]
                         : acc_t(0);
    out[j] = static_cast<scalar_t>(d);
  }
}

// Row maximum and sum of the logits (for label smoothing), vector lanes then the tail; max is exact, and the
// sum goes to double lanes (rows reach 10^5 elements).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void row_max_and_sum(const scalar_t* row, int64_t n, acc_t& row_max, double& sum_logits) {
  constexpr int64_t lanes = Vec<acc_t>::size();
  Vec<acc_t> vmax(-std::numeric_limits<acc_t>::infinity());
  LaneSums<acc_t> sums;
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes) {
    const Vec<acc_t> xv = load_acc<acc_t>(row + j);
    vmax = at::vec::maximum(vmax, xv);
    sums.add(xv);
  }
  acc_t lane_max[lanes];
  vmax.store(lane_max);
  row_max = -std::numeric_limits<acc_t>::infinity();
  for (int64_t k = 0; k < lanes; ++k) row_max = std::max(row_max, lane_max[k]);
  for (; j < n; ++j) {
    const acc_t xj = static_cast<acc_t>(row[j]);
    row_max = std::max(row_max, xj);
    sums.tail += xj;
  }
  sum_logits = sums.total();
}

// exps[j] = exp(row[j] - row_max) (each in (0, 1], no overflow); returns their sum, in double lanes.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
double shifted_exps(const scalar_t* row, int64_t n, acc_t row_max, acc_t* exps) {
  constexpr int64_t lanes = Vec<acc_t>::size();
  const Vec<acc_t> vmax(row_max);
  LaneSums<acc_t> sums;
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes) {
    const Vec<acc_t> e = (load_acc<acc_t>(row + j) - vmax).exp();
    e.store(exps + j);
    sums.add(e);
  }
  for (; j < n; ++j) {
    exps[j] = exp_(static_cast<acc_t>(row[j]) - row_max);
    sums.tail += exps[j];
  }
  return sums.total();
}

// Where a row's shifted exps go: straight into its probas when those hold acc_t, else into a float buffer
// (half / bfloat16 would round them before the division).
template <typename scalar_t, typename acc_t>
acc_t* exps_destination(scalar_t* row_probas, std::vector<acc_t>& buffer, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return row_probas;
  } else {
    buffer.resize(n);
    return buffer.data();
  }
}

// out[j] = exps[j] * inv_sum: the softmax from the shifted exps, one multiply instead of a second exp. `out`
// may be `exps` itself (float / double logits).
template <typename scalar_t, typename acc_t>
void scale_row(const acc_t* exps, int64_t n, acc_t inv_sum, scalar_t* out) {
  constexpr int64_t lanes = Vec<acc_t>::size();
  const Vec<acc_t> vinv(inv_sum);
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes) store_as<acc_t>(out + j, Vec<acc_t>::loadu(exps + j) * vinv);
  for (; j < n; ++j) out[j] = static_cast<scalar_t>(exps[j] * inv_sum);
}

// out[j] = (softmax_from(row[j]) - weight) * scale over a row: the single-label backward, with the smoothing
// weight and the row's grad.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void softmax_row(const scalar_t* row, int64_t n, acc_t row_max, acc_t log_sum, acc_t weight, acc_t scale,
                 scalar_t* out) {
  constexpr int64_t lanes = Vec<acc_t>::size();
  const Vec<acc_t> vmax(row_max), vlog_sum(log_sum), vweight(weight), vscale(scale);
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes) {
    // exp((x - row_max) - log_sum), as softmax_from: the subtraction order keeps a large row_max's digits.
    const Vec<acc_t> p = ((load_acc<acc_t>(row + j) - vmax) - vlog_sum).exp();
    store_as<acc_t>(out + j, (p - vweight) * vscale);
  }
  for (; j < n; ++j) {
    out[j] = static_cast<scalar_t>((softmax_from(static_cast<acc_t>(row[j]), row_max, log_sum) - weight) * scale);
  }
}

std::tuple<Tensor, Tensor> multi_label_forward_cpu(const Tensor& logits_in, const Tensor& targets_in,
                                                   const c10::optional<Tensor>& pos_weight_in,
                                                   const c10::optional<Tensor>& label_mask_in, bool elementwise) {
  check_multi_label(logits_in, targets_in, pos_weight_in, label_mask_in);
  const Tensor logits = logits_in.contiguous(), targets = targets_in.contiguous();
  const auto pos_weight = contiguous_or_none(pos_weight_in), label_mask = contiguous_or_none(label_mask_in);
  const auto acc_options = logits.options().dtype(acc_dtype(logits));
  Tensor probas = at::empty(logits.sizes(), logits.options());
  Tensor loss = elementwise ? at::empty(logits.sizes(), acc_options) : at::empty({}, acc_options);
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "multi_label_forward", [&] {
    multi_label_forward_kernel<scalar_t>(logits, targets, pos_weight, label_mask, elementwise ? &loss : nullptr,
                                         probas, total);
  });
  if (!elementwise) loss.fill_(total);
  return {loss, probas};
}

Tensor multi_label_backward_cpu(const Tensor& grad_in, const Tensor& logits_in, const Tensor& targets_in,
                                const c10::optional<Tensor>& pos_weight_in,
                                const c10::optional<Tensor>& label_mask_in) {
  check_multi_label(logits_in, targets_in, pos_weight_in, label_mask_in);
  check_grad(grad_in, logits_in.sizes(), acc_dtype(logits_in));
  const Tensor logits = logits_in.contiguous(), targets = targets_in.contiguous(), grad = grad_in.contiguous();
  const auto pos_weight = contiguous_or_none(pos_weight_in), label_mask = contiguous_or_none(label_mask_in);
  Tensor dlogits = at::empty(logits.sizes(), logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "multi_label_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t n = logits.size(1), numel = logits.numel();
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    const auto in = multi_label_inputs<acc_t>(targets, pos_weight, label_mask);
    const acc_t* g = grad.const_data_ptr<acc_t>();
    const int64_t g_stride = grad.dim() == 0 ? 0 : 1;  // a reduced loss sends one number to every element
    scalar_t* out = dlogits.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, numel, kChunk, [&](int64_t begin, int64_t end) {
      for_each_row_span(begin, end, n, [&](int64_t i, int64_t col, int64_t len) {
        multi_label_backward_span(x + i, in.y + i, in.pos_weight_at(col), in.mask_at(i, col), g + i * g_stride,
                                  g_stride, len, out + i);
      });
    });
  });
  return dlogits;
}

void check_class_ids(const Tensor& targets, int64_t num_classes, int64_t ignore_index) {
  const int64_t* t = targets.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < targets.numel(); ++r) {
    TORCH_CHECK(t[r] == ignore_index || (t[r] >= 0 && t[r] < num_classes), "ltc_fast_ext: class id ", t[r],
                " at row ", r, " is outside [0, ", num_classes, ") and is not ignore_index ", ignore_index);
  }
}

std::tuple<Tensor, Tensor, Tensor> single_label_forward_cpu(const Tensor& logits_in, const Tensor& targets_in,
                                                            int64_t ignore_index, double label_smoothing,
                                                            bool elementwise) {
  check_single_label(logits_in, targets_in, label_smoothing);
  const Tensor logits = logits_in.contiguous(), targets = targets_in.contiguous();
  const int64_t b = logits.size(0), n = logits.size(1);
  check_class_ids(targets, n, ignore_index);
  const auto acc_options = logits.options().dtype(acc_dtype(logits));
  Tensor probas = at::empty(logits.sizes(), logits.options());
  Tensor stats = at::empty({b, 2}, acc_options);
  Tensor row_loss = at::empty({b}, acc_options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "single_label_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    const int64_t* t = targets.const_data_ptr<int64_t>();
    scalar_t* out_probas = probas.mutable_data_ptr<scalar_t>();
    acc_t* out_stats = stats.mutable_data_ptr<acc_t>();
    acc_t* out_loss = row_loss.mutable_data_ptr<acc_t>();
    const acc_t eps = static_cast<acc_t>(label_smoothing);
    at::parallel_for(0, b, std::max<int64_t>(1, kChunk / std::max<int64_t>(n, 1)), [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> exps_buffer;  // per task: half / bfloat16 rows only
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = x + r * n;
        acc_t row_max;
        double sum_logits;
        row_max_and_sum(row, n, row_max, sum_logits);
        scalar_t* row_probas = out_probas + r * n;
        acc_t* exps = exps_destination(row_probas, exps_buffer, n);
        const double sum_exp = shifted_exps(row, n, row_max, exps);
        scale_row(exps, n, static_cast<acc_t>(1.0 / sum_exp), row_probas);
        const acc_t log_sum = static_cast<acc_t>(std::log(sum_exp));
        out_stats[2 * r] = row_max;
        out_stats[2 * r + 1] = log_sum;
        out_loss[r] = t[r] == ignore_index ? acc_t(0)
                                           : smoothed_ce(row_max, log_sum, static_cast<acc_t>(row[t[r]]),
                                                         static_cast<acc_t>(sum_logits / n), eps);
      }
    });
  });
  if (elementwise) return {row_loss, probas, stats};
  // Rows are added in order (deterministic), in double.
  return {row_loss.sum(at::kDouble).to(row_loss.scalar_type()), probas, stats};
}

Tensor single_label_backward_cpu(const Tensor& grad_in, const Tensor& logits_in, const Tensor& targets_in,
                                 const Tensor& stats_in, int64_t ignore_index, double label_smoothing) {
  check_single_label(logits_in, targets_in, label_smoothing);
  check_softmax_stats(stats_in, logits_in);
  check_grad(grad_in, {logits_in.size(0)}, acc_dtype(logits_in));
  const Tensor logits = logits_in.contiguous(), targets = targets_in.contiguous(), grad = grad_in.contiguous(),
               stats = stats_in.contiguous();
  const int64_t b = logits.size(0), n = logits.size(1);
  Tensor dlogits = at::empty(logits.sizes(), logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "single_label_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    const int64_t* t = targets.const_data_ptr<int64_t>();
    const acc_t* row_stats = stats.const_data_ptr<acc_t>();
    const acc_t* g = grad.const_data_ptr<acc_t>();
    const int64_t g_stride = grad.dim() == 0 ? 0 : 1;
    scalar_t* out = dlogits.mutable_data_ptr<scalar_t>();
    const acc_t eps = static_cast<acc_t>(label_smoothing);
    const acc_t smooth = eps / static_cast<acc_t>(n);
    at::parallel_for(0, b, std::max<int64_t>(1, kChunk / std::max<int64_t>(n, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        scalar_t* out_row = out + r * n;
        if (t[r] == ignore_index) {
          std::fill(out_row, out_row + n, scalar_t(0));
          continue;
        }
        const scalar_t* row = x + r * n;
        const acc_t gr = g[r * g_stride], row_max = row_stats[2 * r], log_sum = row_stats[2 * r + 1];
        // Every class gets (p - eps / N) * grad; the target's weight has 1 - eps more, so it is redone alone.
        softmax_row(row, n, row_max, log_sum, smooth, gr, out_row);
        const acc_t target_weight = (acc_t(1) - eps) + smooth;
        out_row[t[r]] = static_cast<scalar_t>(
            (softmax_from(static_cast<acc_t>(row[t[r]]), row_max, log_sum) - target_weight) * gr);
      }
    });
  });
  return dlogits;
}

}  // namespace
}  // namespace ltc_fast

TORCH_LIBRARY(ltc_fast_ext, m) {
  m.def("multi_label_forward(Tensor logits, Tensor targets, Tensor? pos_weight, Tensor? label_mask, "
        "bool elementwise) -> (Tensor loss, Tensor probas)");
  m.def("multi_label_backward(Tensor grad, Tensor logits, Tensor targets, Tensor? pos_weight, "
        "Tensor? label_mask) -> Tensor");
  m.def("single_label_forward(Tensor logits, Tensor targets, int ignore_index, float label_smoothing, "
        "bool elementwise) -> (Tensor loss, Tensor probas, Tensor softmax_stats)");
  m.def("single_label_backward(Tensor grad, Tensor logits, Tensor targets, Tensor softmax_stats, "
        "int ignore_index, "
        "float label_smoothing) -> Tensor");
}

TORCH_LIBRARY_IMPL(ltc_fast_ext, CPU, m) {
  m.impl("multi_label_forward", &ltc_fast::multi_label_forward_cpu);
  m.impl("multi_label_backward", &ltc_fast::multi_label_backward_cpu);
  m.impl("single_label_forward", &ltc_fast::single_label_forward_cpu);
  m.impl("single_label_backward", &ltc_fast::single_label_backward_cpu);
}

// Importing the built module (prebuilt by setup.py or JIT-compiled) runs the registrations above; it needs no
// Python-visible contents, so a bare module init replaces pybind11.
#define LTC_FAST_STR_(x) #x
#define LTC_FAST_STR(x) LTC_FAST_STR_(x)
#define LTC_FAST_CONCAT_(a, b) a##b
#define LTC_FAST_CONCAT(a, b) LTC_FAST_CONCAT_(a, b)

extern "C" PyObject* LTC_FAST_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, LTC_FAST_STR(TORCH_EXTENSION_NAME),
                                          "ltc_fast loss extension: registers the torch.ops.ltc_fast_ext ops",
                                          -1, nullptr};
  return PyModule_Create(&module_def);
}
