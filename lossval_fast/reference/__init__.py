"""Pure-PyTorch oracles: obviously correct, materialised, slow. Tests and benchmarks compare against these."""
from .pairwise import half_sqdist, nearest, plan_colsum, softmin, softmin_barycenter, softmin_stored
from .sinkhorn import epsilon_schedule, log_weights, max_diameter, sinkhorn_divergence, sinkhorn_potentials
from .weighted_loss import weighted_cross_entropy, weighted_mse
from .lossval import lossval

__all__ = ["half_sqdist", "softmin", "softmin_barycenter", "plan_colsum", "nearest", "softmin_stored",
           "sinkhorn_divergence", "sinkhorn_potentials", "epsilon_schedule", "max_diameter", "log_weights",
           "lossval", "weighted_cross_entropy", "weighted_mse"]

from .kmeans import kmeans_lloyd  # noqa: E402

__all__ += ["kmeans_lloyd"]
