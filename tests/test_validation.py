"""Bad input raises ValueError (TypeError for non-tensors) naming the argument, what was seen and expected."""
import math

import pytest
import torch

from lossval_fast import ops

X = torch.randn(5, 3)
Y = torch.randn(4, 3)
H = torch.zeros(4)


@pytest.mark.parametrize("call,match", [
    (lambda: ops.pairwise_softmin(X, torch.randn(4, 2), H, 1.0), "same number of features"),
    (lambda: ops.pairwise_softmin(torch.randn(0, 3), Y, H, 1.0), "x must hold at least one point"),
    (lambda: ops.pairwise_softmin(X, torch.randn(0, 3), torch.zeros(0), 1.0), "y must hold at least one point"),
    (lambda: ops.pairwise_softmin(X, Y, H, 0.0), "eps must be > 0"),
    (lambda: ops.pairwise_softmin(X, Y, H, -1.0), "eps must be > 0"),
    (lambda: ops.pairwise_softmin(X, Y, H, math.nan), "eps must be finite"),
    (lambda: ops.pairwise_softmin(X, Y, H, math.inf), "eps must be finite"),
    (lambda: ops.pairwise_softmin(X, Y, H, "1"), "eps must be a positive real number"),
    (lambda: ops.pairwise_softmin(X.half(), Y.half(), H.half(), 1.0), "x must be float32 or float64"),
    (lambda: ops.pairwise_softmin(X.long(), Y, H, 1.0), "x must be float32 or float64"),
    (lambda: ops.pairwise_softmin(X, Y.double(), H, 1.0), "same dtype"),
    (lambda: ops.pairwise_softmin(X, Y, H.double(), 1.0), "h must have dtype torch.float32"),
    (lambda: ops.pairwise_softmin(X, Y, torch.zeros(5), 1.0), r"h must have shape \(4,\)"),
    (lambda: ops.pairwise_softmin(X[0], Y, H, 1.0), "x must be 2-D"),
    (lambda: ops.pairwise_softmin(X, Y, H, 1.0, backend="gpu"), "backend must be one of"),
    (lambda: ops.pairwise_softmin(X, Y, H, 1.0, cost="dense"), "cost must be one of"),
    (lambda: ops.pairwise_softmin(X, Y, H, 1.0, cost=torch.zeros(4, 5)), r"cost must have shape \(5, 4\)"),
    (lambda: ops.pairwise_softmin(X, Y, H, 1.0, cost="stored", memory_budget=10), "more than memory_budget"),
    (lambda: ops.pairwise_softmin(torch.full((5, 3), math.nan), Y, H, 1.0), "x contains 15 NaN or inf"),
    (lambda: ops.pairwise_softmin(X, Y, torch.tensor([0.0, math.nan, 0.0, 0.0]), 1.0), "h contains 1 NaN"),
    (lambda: ops.pairwise_softmin(X, Y, torch.tensor([0.0, math.inf, 0.0, 0.0]), 1.0), r"h contains 1 NaN or \+inf"),
    (lambda: ops.softmin_stored(torch.zeros(5, 4), torch.zeros(3), 1.0), r"h must have shape \(4,\)"),
    (lambda: ops.plan_colsum(X, Y, H, torch.zeros(4), torch.ones(5), 1.0), r"f must have shape \(5,\)"),
    (lambda: ops.plan_colsum(X, Y, H, torch.zeros(5), torch.ones(4), 1.0), r"weight must have shape \(5,\)"),
    (lambda: ops.nearest(X, torch.randn(4, 2)), "same number of features"),
    (lambda: ops.nearest(X, torch.randn(0, 3)), "y must hold at least one point"),
    (lambda: ops.nearest(torch.full((2, 3), math.inf), Y), "x contains 6 NaN or inf"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_non_tensor_raises_type_error():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ops.pairwise_softmin([[0.0]], Y[:, :1], H, 1.0)


def test_minus_inf_bias_is_allowed_as_a_mask():
    h = torch.tensor([0.0, -math.inf, 0.0, -1e5])
    out = ops.pairwise_softmin(X, Y, h, 1.0)
    expected = ops.pairwise_softmin(X, Y[[0, 2]], torch.zeros(2), 1.0)
    assert torch.allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_validate_false_skips_the_finiteness_check():
    out = ops.pairwise_softmin(torch.full((2, 3), math.nan), Y, H, 1.0, validate=False)
    assert out.shape == (2,)


def test_cpp_ops_check_their_inputs_directly():
    with pytest.raises(RuntimeError, match="eps must be a finite positive number"):
        torch.ops.lossval_fast.softmin(X, Y, H, -1.0)
    with pytest.raises(RuntimeError, match="same number of features"):
        torch.ops.lossval_fast.softmin(X, torch.randn(4, 2), H, 1.0)
