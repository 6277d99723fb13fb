"""EcoVal (Tarun et al., KDD 2024, arXiv 2402.09288) in the formulation of docs/ecoval.md: value clusters of
similar points with leave-cluster-out (LCO) and pair-removal trainings, then hand each cluster's value to its
members and add each point's own (intrinsic) part.

    U(S)   learner trained on the clusters S, scored on the validation set (expected accuracy / R^2 by default)
    a_i  = U(N) - U(N\\{i})                       lco_
    e_ij = U(N) - U(N\\{i,j}) - a_i - a_j         interactions_
    V_i  = a_i + lam * 1/2 sum_j e_ij             (Variant A; Variant B fits a Cobb-Douglas g = log A + sum b_i s_i)
    phi_k = V~_c(k) / n_c(k) + (w / n) * delta_k  (V~: V shrunk by its standard error over the validation points;
                                                   delta_k <= 0: the held-out evidence against k's label)

All R (1 + p + |P|) subset models are trained as
one batched model for the built-in learners (lossval_fast.valuation.learners.LEARNERS), or one by one for any
scikit-learn-style learner.

One module per stage: inputs (checks), clustering, subsets, trainings, cluster_values, propagation,
out_of_sample (value()), checkpoint; estimator (the EcoVal class) runs them.
"""
# The built-in "logreg" solver, the same on both paths so that batched = loop. L-BFGS: two GEMMs per iteration over
# all subset models instead of a per-model O(n d^2 C^2) Hessian, and its tolerance (1e-8) lands closer to the
# optimum than Newton's 1e-6 stop; "newton" (learners.LogReg / BatchedLogReg) is the alternative. Read at fit time
# from this module (trainings.logreg_solver), so setting it here takes effect.
LOGREG_SOLVER = "lbfgs"

from .checkpoint import _digest  # noqa: E402
from .cluster_values import CLIP  # noqa: E402
from .clustering import cluster_quotas  # noqa: E402
from .estimator import EcoVal  # noqa: E402
from .inputs import (BACKENDS, BUILTIN_LEARNERS, CLUSTER_VALUES, EFFICIENCIES, INTRINSICS, METRICS,  # noqa: E402
                     TASKS, EcoValWarning, NotFittedError, _features, _is_int, _is_real,
                     _numpy, _targets)
from .propagation import _mean_rows, _scores  # noqa: E402
from .subsets import _seed  # noqa: E402
from .trainings import LOG_FLOOR, _Utility  # noqa: E402

__all__ = ["EcoVal", "NotFittedError", "EcoValWarning", "cluster_quotas"]
