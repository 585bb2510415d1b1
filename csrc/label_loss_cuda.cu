// CUDA kernels of the ltc_fast loss extension, for the schemas defined in label_loss.cpp. Built only when
// torch has CUDA and nvcc is found (see setup.py and ltc_fast/ops/loss_extension.py). The per-element math
// and input checks are shared with the CPU kernels through label_loss.h.
//
// multi-label: elementwise grid-stride kernels; the summed loss is reduced per block into a partials buffer
// that is then summed (no atomics, so the loss is deterministic).
// single-label: one block per row with an online softmax (running max and rescaled sum per thread), so the
// row is read twice (statistics, then probas) instead of three times.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "label_loss.h"

namespace ltc_fast {
namespace {

using at::Tensor;

constexpr int kThreads = 256;  // a multiple of the warp size; block_reduce relies on it

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};

// Reduce one value per thread over the block; every thread gets the result. `shared` holds 32 values.
template <typename T, typename Op>
__device__ T block_reduce(T value, T identity, Op op, T* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < warps ? shared[lane] : identity;
    for (int offset = 16; offset > 0; offset /= 2) value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
    if (lane == 0) shared[0] = value;
  }
  __syncthreads();
  const T result = shared[0];
  __syncthreads();  // `shared` may be reused by the next reduction
  return result;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Enough blocks to fill the device a few times over; grid-stride loops cover the rest.
int elementwise_blocks(int64_t numel) {
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t fill = static_cast<int64_t>(sms) * 8;
  return static_cast<int>(std::max<int64_t>(1, std::min(ceil_div(numel, kThreads), fill)));
}

template <typename scalar_t, typename acc_t>
__global__ void multi_label_forward_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ y,
                                           const acc_t* __restrict__ pos_weight, const bool* __restrict__ mask,
                                           bool mask_per_label, int64_t n, int64_t numel,
                                           scalar_t* __restrict__ probas, acc_t* __restrict__ elementwise_loss,
                                           acc_t* __restrict__ block_sums) {
  __shared__ acc_t shared[32];
  acc_t sum = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t col = i % n;
    const acc_t xi = static_cast<acc_t>(x[i]);
    const acc_t e = exp_(xi < acc_t(0) ? xi : -xi);
    probas[i] = static_cast<scalar_t>(sigmoid_from(xi, e));
    const bool keep = mask == nullptr || mask[mask_per_label ? col : i];
    const acc_t term = keep ? bce_term(xi, y[i], pos_weight ? pos_weight[col] : acc_t(1), e) : acc_t(0);
    if (elementwise_loss) {
      elementwise_loss[i] = term;
    } else {
      sum += term;
    }
  }
  if (block_sums) {
    sum = block_reduce(sum, acc_t(0), SumOp(), shared);
    if (threadIdx.x == 0) block_sums[blockIdx.x] = sum;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void multi_label_backward_kernel(const acc_t* __restrict__ grad, int64_t grad_stride,
                                            const scalar_t* __restrict__ x, const acc_t* __restrict__ y,
                                            const acc_t* __restrict__ pos_weight, const bool* __restrict__ mask,
                                            bool mask_per_label, int64_t n, int64_t numel,
                                            scalar_t* __restrict__ dlogits) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t col = i % n;
    const acc_t xi = static_cast<acc_t>(x[i]);
    const bool keep = mask == nullptr || mask[mask_per_label ? col : i];
    const acc_t d = keep ? bce_grad(sigmoid_from(xi, exp_(xi < acc_t(0) ? xi : -xi)), y[i],
                                    pos_weight ? pos_weight[col] : acc_t(1)) * grad[i * grad_stride]
                         : acc_t(0);
    dlogits[i] = static_cast<scalar_t>(d);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void single_label_forward_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ targets,
                                            int64_t n, int64_t ignore_index, acc_t eps,
                                            scalar_t* __restrict__ probas, acc_t* __restrict__ stats,
                                            acc_t* __restrict__ row_loss) {
  __shared__ acc_t shared[32];
  const int64_t r = blockIdx.x;
  const scalar_t* row = x + r * n;
  const acc_t neg_inf = -INFINITY;
  // Online softmax: each thread keeps the max of its elements and the sum of exp(x - that max).
  acc_t thread_max = neg_inf, thread_sum = 0, thread_logits = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const acc_t v = static_cast<acc_t>(row[j]);
    thread_logits += v;
    if (v > thread_max) {
      thread_sum = thread_sum * exp_(thread_max - v) + acc_t(1);
      thread_max = v;
    } else if (v != neg_inf) {  // a -inf adds exp(-inf) = 0; computed, it is exp(-inf - -inf) = NaN while
      thread_sum += exp_(v - thread_max);  // the running max is still -inf
    }
  }
  const acc_t row_max = block_reduce(thread_max, neg_inf, MaxOp(), shared);
  const acc_t rescaled = thread_max == neg_inf ? acc_t(0) : thread_sum * exp_(thread_max - row_max);
  const acc_t sum_exp = block_reduce(rescaled, acc_t(0), SumOp(), shared);
  const acc_t sum_logits = block_reduce(thread_logits, acc_t(0), SumOp(), shared);
  const acc_t log_sum = log_(sum_exp);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    probas[r * n + j] = static_cast<scalar_t>(softmax_from(static_cast<acc_t>(row[j]), row_max, log_sum));
  }
  if (threadIdx.x == 0) {
    stats[2 * r] = row_max;
    stats[2 * r + 1] = log_sum;
    const int64_t target = targets[r];
    acc_t loss = 0;
    if (target != ignore_index) {
      // An out-of-range id (reachable only where the Python check is off: under torch.compile) gives the row a
      // NaN loss, and backward NaN gradients, rather than a device assert, which would kill the CUDA context.
      loss = target >= 0 && target < n
                 ? smoothed_ce(row_max, log_sum, static_cast<acc_t>(row[target]),
                               sum_logits / static_cast<acc_t>(n), eps)
                 : acc_t(NAN);
    }
    row_loss[r] = loss;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void single_label_backward_kernel(const acc_t* __restrict__ grad, int64_t grad_stride,
                                             const scalar_t* __restrict__ x, const int64_t* __restrict__ targets,
                                             const acc_t* __restrict__ stats, int64_t n, int64_t numel,
                                             int64_t ignore_index, acc_t eps, scalar_t* __restrict__ dlogits) {
  const acc_t smooth = eps / static_cast<acc_t>(n);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / n, col = i - r * n;
    const int64_t target = targets[r];
    acc_t d = 0;
    if (target != ignore_index) {
      const acc_t target_weight = (col == target ? acc_t(1) - eps : acc_t(0)) + smooth;
      d = target >= 0 && target < n
              ? (softmax_from(static_cast<acc_t>(x[i]), stats[2 * r], stats[2 * r + 1]) - target_weight) *
                    grad[r * grad_stride]
              : acc_t(NAN);  // an out-of-range id: see the forward kernel
    }
    dlogits[i] = static_cast<scalar_t>(d);
  }
}

std::tuple<Tensor, Tensor> multi_label_forward_cuda(const Tensor& logits_in, const Tensor& targets_in,
                                                    const c10::optional<Tensor>& pos_weight_in,
                                                    const c10::optional<Tensor>& label_mask_in, bool elementwise) {
  check_multi_label(logits_in, targets_in, pos_weight_in, label_mask_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const Tensor logits = logits_in.contiguous(), targets = targets_in.contiguous();
  const auto pos_weight = contiguous_or_none(pos_weight_in), label_mask = contiguous_or_none(label_mask_in);
  const auto acc_options = logits.options().dtype(acc_dtype(logits));
  const int64_t n = logits.size(1), numel = logits.numel();
  Tensor probas = at::empty(logits.sizes(), logits.options());
  if (numel == 0) {
    return {elementwise ? at::empty(logits.sizes(), acc_options) : at::zeros({}, acc_options), probas};
  }
  const int blocks = elementwise_blocks(numel);
  Tensor loss = elementwise ? at::empty(logits.sizes(), acc_options) : Tensor();
  Tensor block_sums = elementwise ? Tensor() : at::empty({blocks}, acc_options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "multi_label_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    multi_label_forward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        logits.const_data_ptr<scalar_t>(), targets.const_data_ptr<acc_t>(),
        pos_weight ? pos_weight->const_data_ptr<acc_t>() : nullptr,
        label_mask ? label_mask->const_data_ptr<bool>() : nullptr, label_mask && label_mask->dim() == 1, n, numel,
        probas.mutable_data_ptr<scalar_t>(), elementwise ? loss.mutable_data_ptr<acc_t>() : nullptr,
        elementwise ? nullptr : block_sums.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (!elementwise) loss = block_sums.sum();
  return {loss, probas};
}

Tensor multi_label_backward_cuda(const Tensor& grad_in, const Tensor& logits_in, const Tensor& targets_in,
                                 const c10::optional<Tensor>& pos_weight_in,
                                 const c10::optional<Tensor>& label_mask_in) {
  check_multi_label(logits_in, targets_in, pos_weight_in, label_mask_in);
  check_grad(grad_in, logits_in.sizes(), acc_dtype(logits_in));
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const Tensor logits = logits_in.contiguous(), targets = targets_in.contiguous(), grad = grad_in.contiguous();
  const auto pos_weight = contiguous_or_none(pos_weight_in), label_mask = contiguous_or_none(label_mask_in);
  const int64_t n = logits.size(1), numel = logits.numel();
  Tensor dlogits = at::empty(logits.sizes(), logits.options());
  if (numel == 0) return dlogits;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "multi_label_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    multi_label_backward_kernel<scalar_t, acc_t>
        <<<elementwise_blocks(numel), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            grad.const_data_ptr<acc_t>(), grad.dim() == 0 ? 0 : 1, logits.const_data_ptr<scalar_t>(),
            targets.const_data_ptr<acc_t>(), pos_weight ? pos_weight->const_data_ptr<acc_t>() : nullptr,
            label_mask ? label_mask->const_data_ptr<bool>() : nullptr, label_mask && label_mask->dim() == 1, n,
            numel, dlogits.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dlogits;
}

std::tuple<Tensor, Tensor, Tensor> single_label_forward_cuda(const Tensor& logits_in, const Tensor& targets_in,
                                                             int64_t ignore_index, double label_smoothing,
                                                             bool elementwise) {
  check_single_label(logits_in, targets_in, label_smoothing);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const Tensor logits = logits_in.contiguous(), targets = targets_in.contiguous();
  const int64_t b = logits.size(0), n = logits.size(1);
  const auto acc_options = logits.options().dtype(acc_dtype(logits));
  Tensor probas = at::empty(logits.sizes(), logits.options());
  Tensor stats = at::empty({b, 2}, acc_options);
  Tensor row_loss = at::zeros({b}, acc_options);
  if (b > 0 && n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "single_label_forward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      single_label_forward_kernel<scalar_t, acc_t><<<b, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          logits.const_data_ptr<scalar_t>(), targets.const_data_ptr<int64_t>(), n, ignore_index,
          static_cast<acc_t>(label_smoothing), probas.mutable_data_ptr<scalar_t>(), stats.mutable_data_ptr<acc_t>(),
          row_loss.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {elementwise ? row_loss : row_loss.sum(), probas, stats};
}

Tensor single_label_backward_cuda(const Tensor& grad_in, const Tensor& logits_in, const Tensor& targets_in,
                                  const Tensor& stats_in, int64_t ignore_index, double label_smoothing) {
  check_single_label(logits_in, targets_in, label_smoothing);
  check_softmax_stats(stats_in, logits_in);
  check_grad(grad_in, {logits_in.size(0)}, acc_dtype(logits_in));
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const Tensor logits = logits_in.contiguous(), targets = targets_in.contiguous(), grad = grad_in.contiguous(),
               stats = stats_in.contiguous();
  const int64_t n = logits.size(1), numel = logits.numel();
  Tensor dlogits = at::empty(logits.sizes(), logits.options());
  if (numel == 0) return dlogits;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "single_label_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    single_label_backward_kernel<scalar_t, acc_t>
        <<<elementwise_blocks(numel), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            grad.const_data_ptr<acc_t>(), grad.dim() == 0 ? 0 : 1, logits.const_data_ptr<scalar_t>(),
            targets.const_data_ptr<int64_t>(), stats.const_data_ptr<acc_t>(), n, numel, ignore_index,
            static_cast<acc_t>(label_smoothing), dlogits.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dlogits;
}

}  // namespace
}  // namespace ltc_fast

TORCH_LIBRARY_IMPL(ltc_fast_ext, CUDA, m) {
  m.impl("multi_label_forward", &ltc_fast::multi_label_forward_cuda);
  m.impl("multi_label_backward", &ltc_fast::multi_label_backward_cuda);
  m.impl("single_label_forward", &ltc_fast::single_label_forward_cuda);
  m.impl("single_label_backward", &ltc_fast::single_label_backward_cuda);
}
