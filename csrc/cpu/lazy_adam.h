// Adam over LossVal's weight vector, applied lazily (csrc/cpu/lazy_adam_cpu.cpp).
//
// Every step, Adam moves every weight: a point outside the batch has a zero gradient, but its momentum still
// moves it (m <- b1 m, v <- b2 v, w <- w - lr_t m / (sqrt(v) / c2_t + eps)). Run densely that is O(n) work per
// step and O(n^2 / batch) per epoch: at 1,000,000 points the weight vector's Adam is ~0.5-1 ms of a ~6 ms step,
// and at 10,000,000 points it would dominate. A point's zero-gradient updates depend only on its own state and on
// the step numbers, so they are deferred: each entry keeps the step `last` its (w, m, v) belong to, and is brought
// forward when it is next needed (its batch, a checkpoint's end, the fit's end).
//
// Bringing an entry from step t0 to t1 runs the zero-gradient updates one by one while they can still move w:
// they shrink like r^j with r = b1 / sqrt(b2) (0.9005 for Adam's defaults), so after K steps (r^K < 2^-(digits
// + 12) / 250: below the last bit of the working dtype, bias corrections and eps included) the rest of w's
// updates are dropped and m, v take the remaining decay in one multiplication (b^R in double, one rounding). An
// entry whose m is exactly 0 (every entry before its first batch) is not moved at all: its updates are exactly 0.
// The result is a function of (state, t0, t1) only, so every caller that brings an entry to the same step gets
// the same bits (the chunked step's divergences computed ahead, the model step, the ranks).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace lvf {
namespace cpu {

struct AdamHyper {
  double lr, beta1, beta2, eps;
};

// Rows idx of (w, m, v) (entries current at last[idx]) brought to step target[r] (one target for all rows when
// target has one element); with grad, the zero-gradient updates go to target - 1 and the step target applies
// grad[r]. write: store the new state and last = target; else leave the state and only return w at the targets.
// Returns w of the rows, shaped like idx.
at::Tensor lazy_adam_rows(const at::Tensor& w, const at::Tensor& m, const at::Tensor& v, const at::Tensor& last,
                          const at::Tensor& idx, const at::Tensor& target, const std::optional<at::Tensor>& grad,
                          const AdamHyper& hyper, bool write);

}  // namespace cpu
}  // namespace lvf
