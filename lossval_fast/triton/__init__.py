"""Triton backend of the pairwise primitive: softmin, softmin_barycenter, plan_colsum, nearest, softmin_stored.

Each op is a ``torch.library.triton_op`` named ``lossval_fast::<name>_triton`` (torch.compile traces into it and
sees the kernel launches), with the same semantics as the C++ op ``lossval_fast::<name>``. float32 and float64.
On CPU the kernels run only under the Triton interpreter: set ``TRITON_INTERPRET=1`` before importing this
package (tests do; it is slow, for small shapes only).
"""
import threading
import types

_LOCK = threading.Lock()
_OPS: types.SimpleNamespace | None = None


def ops() -> types.SimpleNamespace:
    """The Triton op set (softmin, softmin_barycenter, plan_colsum, nearest, softmin_stored), with autograd for
    softmin and softmin_stored registered on first use."""
    global _OPS
    with _LOCK:
        if _OPS is None:
            from .. import op_autograd
            from .nearest import nearest
            from .plan import plan_colsum
            from .softmin import softmin, softmin_barycenter
            from .stored import softmin_stored

            table = {"softmin": softmin, "softmin_barycenter": softmin_barycenter, "plan_colsum": plan_colsum,
                     "nearest": nearest, "softmin_stored": softmin_stored}
            # op objects, not names: triton_op derives the fake kernels itself
            op_autograd.register(table)
            _OPS = types.SimpleNamespace(**table)
    return _OPS


_WEIGHTED_LOSS_OPS: types.SimpleNamespace | None = None


def weighted_loss_ops() -> types.SimpleNamespace:
    """The Triton fused weighted losses (weighted_cross_entropy, weighted_mse: ``lossval_fast::<name>_triton``),
    with their autograd registered on first use."""
    global _WEIGHTED_LOSS_OPS
    with _LOCK:
        if _WEIGHTED_LOSS_OPS is None:
            from .weighted_loss import weighted_cross_entropy, weighted_mse

            _WEIGHTED_LOSS_OPS = types.SimpleNamespace(weighted_cross_entropy=weighted_cross_entropy,
                                                       weighted_mse=weighted_mse)
    return _WEIGHTED_LOSS_OPS


__all__ = ["ops", "weighted_loss_ops"]
