// Shared by the CPU (label_loss.cpp) and CUDA (label_loss_cuda.cu) kernels of the loss extension: the
// per-element math (host and device) and the input checks. The Python side (ltc_fast/ops/label_loss.py)
// validates user input with clear ValueErrors first; these checks only guard the ops against direct misuse.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <math.h>

namespace ltc_fast {

// Overloads so the templated math picks the float or double libm function on host and device alike.
C10_HOST_DEVICE inline float exp_(float v) { return ::expf(v); }
C10_HOST_DEVICE inline double exp_(double v) { return ::exp(v); }
C10_HOST_DEVICE inline float log_(float v) { return ::logf(v); }
C10_HOST_DEVICE inline double log_(double v) { return ::log(v); }
C10_HOST_DEVICE inline float log1p_(float v) { return ::log1pf(v); }
C10_HOST_DEVICE inline double log1p_(double v) { return ::log1p(v); }

// One element of BCE-with-logits. `e` = exp(-|x|), shared by the loss and the sigmoid so each element costs
// one exp. With pos_weight p the loss is (1 - y) x + (1 + (p - 1) y) softplus(-x), and
// softplus(-x) = log1p(exp(-|x|)) + max(-x, 0) never overflows, whatever the finite logit.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t bce_term(acc_t x, acc_t y, acc_t p, acc_t e) {
  const acc_t softplus_neg = log1p_(e) + (x < acc_t(0) ? -x : acc_t(0));
  return (acc_t(1) - y) * x + (acc_t(1) + (p - acc_t(1)) * y) * softplus_neg;
}

// sigmoid(x) from e = exp(-|x|), without overflow for either sign.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t sigmoid_from(acc_t x, acc_t e) {
  const acc_t inv = acc_t(1) / (acc_t(1) + e);
  return x >= acc_t(0) ? inv : e * inv;
}

// d bce_term / dx = (1 + (p - 1) y) sigmoid(x) - p y  (= sigmoid(x) - y without pos_weight).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t bce_grad(acc_t sigmoid, acc_t y, acc_t p) {
  return (acc_t(1) + (p - acc_t(1)) * y) * sigmoid - p * y;
}

// Softmax cross-entropy of one row with label smoothing eps: (1 - eps) (lse - x_target) + eps (lse - mean x),
// torch's definition. With lse = row_max + log_sum (log_sum = log sum exp(x - row_max)) each difference is
// formed as (row_max - x) + log_sum: no cancellation between large logits, and each term is >= 0.
// Without smoothing the second term is left out, not multiplied by 0: a -inf logit makes mean_logit -inf, and
// 0 * inf would turn torch's finite loss into NaN.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t smoothed_ce(acc_t row_max, acc_t log_sum, acc_t target_logit, acc_t mean_logit,
                                         acc_t eps) {
  const acc_t nll = (row_max - target_logit) + log_sum;
  if (eps == acc_t(0)) return nll;
  return (acc_t(1) - eps) * nll + eps * ((row_max - mean_logit) + log_sum);
}

// softmax(x) from the row statistics, as exp((x - row_max) - log_sum): accurate where x - lse would lose the
// digits of a large row_max.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t softmax_from(acc_t x, acc_t row_max, acc_t log_sum) {
  return exp_((x - row_max) - log_sum);
}

// The accumulation type of a logits dtype: double for double, float for float, half and bfloat16.
inline at::ScalarType acc_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// An optional input made contiguous, for the kernels' raw pointers.
inline c10::optional<at::Tensor> contiguous_or_none(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? c10::optional<at::Tensor>(t->contiguous()) : c10::nullopt;
}

inline void check_logits(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2, "ltc_fast_ext: logits must be [B, N], got ", logits.sizes());
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "ltc_fast_ext: logits must be floating point, got ",
              logits.scalar_type());
}

// Multi-label inputs: targets [B, N] and optional pos_weight [N] in the accumulation dtype, optional
// label_mask bool [B, N] or [N], all on the logits' device.
inline void check_multi_label(const at::Tensor& logits, const at::Tensor& targets,
                              const c10::optional<at::Tensor>& pos_weight,
                              const c10::optional<at::Tensor>& label_mask) {
  check_logits(logits);
  const auto acc = acc_dtype(logits);
  TORCH_CHECK(targets.sizes() == logits.sizes() && targets.scalar_type() == acc,
              "ltc_fast_ext: targets must be ", acc, " ", logits.sizes(), ", got ", targets.scalar_type(), " ",
              targets.sizes());
  TORCH_CHECK(targets.device() == logits.device(), "ltc_fast_ext: targets on ", targets.device(),
              ", logits on ", logits.device());
  if (pos_weight.has_value()) {
    TORCH_CHECK(pos_weight->dim() == 1 && pos_weight->size(0) == logits.size(1) &&
                    pos_weight->scalar_type() == acc && pos_weight->device() == logits.device(),
                "ltc_fast_ext: pos_weight must be ", acc, " [N] on the logits' device");
  }
  if (label_mask.has_value()) {
    const auto& m = *label_mask;
    const bool shape_ok = (m.dim() == 1 && m.size(0) == logits.size(1)) || m.sizes() == logits.sizes();
    TORCH_CHECK(shape_ok && m.scalar_type() == at::kBool && m.device() == logits.device(),
                "ltc_fast_ext: label_mask must be bool [N] or [B, N] on the logits' device");
  }
}

// Single-label inputs: class ids int64 [B] on the logits' device, label smoothing in [0, 1).
inline void check_single_label(const at::Tensor& logits, const at::Tensor& targets, double label_smoothing) {
  check_logits(logits);
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0) && targets.scalar_type() == at::kLong &&
                  targets.device() == logits.device(),
              "ltc_fast_ext: targets must be int64 [B] on the logits' device");
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing < 1.0, "ltc_fast_ext: label_smoothing must be in [0, 1)");
}

// The per-row softmax statistics of single_label_forward: [B, 2] (row max, log sum exp(x - max)).
inline void check_softmax_stats(const at::Tensor& stats, const at::Tensor& logits) {
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == logits.size(0) && stats.size(1) == 2 &&
                  stats.scalar_type() == acc_dtype(logits) && stats.device() == logits.device(),
              "ltc_fast_ext: softmax_stats must be ", acc_dtype(logits), " [B, 2] on the logits' device");
}

// The gradient flowing into a loss is a 0-d tensor (reduced loss) or has the loss's shape ('none').
inline void check_grad(const at::Tensor& grad, at::IntArrayRef loss_shape, at::ScalarType acc) {
  TORCH_CHECK(grad.dim() == 0 || grad.sizes() == loss_shape, "ltc_fast_ext: grad must be 0-d or ", loss_shape,
              ", got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == acc, "ltc_fast_ext: grad must be ", acc, ", got ", grad.scalar_type());
}

}  // namespace ltc_fast
