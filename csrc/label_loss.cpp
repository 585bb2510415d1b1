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

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "label_loss.h"

namespace ltc_fast {
namespace {

using at::Tensor;

// Multi-label work is split into fixed chunks of elements (not rows, so B = 1 with a large N still runs in
// parallel); each chunk's partial sum lands in its own slot and the slots are added in order, so the loss
// does not depend on the number of threads.
constexpr int64_t kChunk = 16384;

template <typename scalar_t>
void multi_label_forward_kernel(const Tensor& logits, const Tensor& targets, const Tensor* pos_weight,
                                const Tensor* label_mask, Tensor* elementwise_loss, Tensor& probas, double& total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = logits.size(1), numel = logits.numel();
  const scalar_t* x = logits.const_data_ptr<scalar_t>();
  const acc_t* y = targets.const_data_ptr<acc_t>();
  const acc_t* p = pos_weight ? pos_weight->const_data_ptr<acc_t>() : nullptr;
  const bool* mask = label_mask ? label_mask->const_data_ptr<bool>() : nullptr;
  const bool mask_per_label = label_mask && label_mask->dim() == 1;
  scalar_t* out_probas = probas.mutable_data_ptr<scalar_t>();
  acc_t* out_loss = elementwise_loss ? elementwise_loss->mutable_data_ptr<acc_t>() : nullptr;
  const int64_t chunks = (numel + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = c * kChunk, end = std::min(numel, begin + kChunk);
      int64_t col = begin % n;
      double sum = 0.0;
      for (int64_t i = begin; i < end; ++i) {
        const acc_t xi = static_cast<acc_t>(x[i]);
        const acc_t e = exp_(-std::abs(xi));
        out_probas[i] = static_cast<scalar_t>(sigmoid_from(xi, e));
        const bool keep = mask == nullptr || mask[mask_per_label ? col : i];
        const acc_t term = keep ? bce_term(xi, y[i], p ? p[col] : acc_t(1), e) : acc_t(0);
        if (out_loss) {
          out_loss[i] = term;
        } else {
          sum += term;
        }
        if (++col == n) col = 0;
      }
      partial[c] = sum;
    }
  });
  total = 0.0;
  for (double v : partial) total += v;
}

std::tuple<Tensor, Tensor> multi_label_forward_cpu(const Tensor& logits_in, const Tensor& targets_in,
                                                   const c10::optional<Tensor>& pos_weight_in,
                                                   const c10::optional<Tensor>& label_mask_in, bool elementwise) {
  check_multi_label(logits_in, targets_in, pos_weight_in, label_mask_in);
  const Tensor logits = logits_in.contiguous(), targets = targets_in.contiguous();
  const c10::optional<Tensor> pos_weight =
      pos_weight_in.has_value() ? c10::optional<Tensor>(pos_weight_in->contiguous()) : c10::nullopt;
  const c10::optional<Tensor> label_mask =
      label_mask_in.has_value() ? c10::optional<Tensor>(label_mask_in->contiguous()) : c10::nullopt;
  const auto acc_options = logits.options().dtype(acc_dtype(logits));
  Tensor probas = at::empty(logits.sizes(), logits.options());
  Tensor loss = elementwise ? at::empty(logits.sizes(), acc_options) : at::empty({}, acc_options);
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "multi_label_forward", [&] {
    multi_label_forward_kernel<scalar_t>(logits, targets, pos_weight ? &*pos_weight : nullptr,
                                         label_mask ? &*label_mask : nullptr, elementwise ? &loss : nullptr,
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
  const c10::optional<Tensor> pos_weight =
      pos_weight_in.has_value() ? c10::optional<Tensor>(pos_weight_in->contiguous()) : c10::nullopt;
  const c10::optional<Tensor> label_mask =
      label_mask_in.has_value() ? c10::optional<Tensor>(label_mask_in->contiguous()) : c10::nullopt;
  Tensor dlogits = at::empty(logits.sizes(), logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "multi_label_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t n = logits.size(1), numel = logits.numel();
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    const acc_t* y = targets.const_data_ptr<acc_t>();
    const acc_t* p = pos_weight ? pos_weight->const_data_ptr<acc_t>() : nullptr;
    const bool* mask = label_mask ? label_mask->const_data_ptr<bool>() : nullptr;
    const bool mask_per_label = label_mask && label_mask->dim() == 1;
    const acc_t* g = grad.const_data_ptr<acc_t>();
    const int64_t g_stride = grad.dim() == 0 ? 0 : 1;  // a reduced loss sends one number to every element
    scalar_t* out = dlogits.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, numel, kChunk, [&](int64_t begin, int64_t end) {
      int64_t col = begin % n;
      for (int64_t i = begin; i < end; ++i) {
        const acc_t xi = static_cast<acc_t>(x[i]);
        const bool keep = mask == nullptr || mask[mask_per_label ? col : i];
        const acc_t d = keep ? bce_grad(sigmoid_from(xi, exp_(-std::abs(xi))), y[i], p ? p[col] : acc_t(1)) *
                                   g[i * g_stride]
                             : acc_t(0);
        out[i] = static_cast<scalar_t>(d);
        if (++col == n) col = 0;
      }
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
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = x + r * n;
        acc_t row_max = -std::numeric_limits<acc_t>::infinity();
        for (int64_t j = 0; j < n; ++j) row_max = std::max(row_max, static_cast<acc_t>(row[j]));
        double sum_exp = 0.0, sum_logits = 0.0;  // double: rows reach 10^5 elements
        for (int64_t j = 0; j < n; ++j) {
          const acc_t xj = static_cast<acc_t>(row[j]);
          sum_exp += exp_(xj - row_max);
          sum_logits += xj;
        }
        const acc_t log_sum = static_cast<acc_t>(std::log(sum_exp));
        out_stats[2 * r] = row_max;
        out_stats[2 * r + 1] = log_sum;
        scalar_t* row_probas = out_probas + r * n;
        for (int64_t j = 0; j < n; ++j) {
          row_probas[j] = static_cast<scalar_t>(softmax_from(static_cast<acc_t>(row[j]), row_max, log_sum));
        }
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
        for (int64_t j = 0; j < n; ++j) {
          const acc_t target_weight = (j == t[r] ? acc_t(1) - eps : acc_t(0)) + smooth;
          const acc_t p = softmax_from(static_cast<acc_t>(row[j]), row_max, log_sum);
          out_row[j] = static_cast<scalar_t>((p - target_weight) * gr);
        }
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
