"""Public ops: tensors in, tensors out, on the caller's device; each picks a backend (see ``lossval_fast.info()``)."""
from .memory import choose_cost_mode, default_memory_budget
from .nearest import Nearest, nearest
from .sinkhorn import SinkhornCache, SinkhornLoss, epsilon_schedule, max_diameter, sinkhorn_divergence
from .softmin import half_sqdist, pairwise_softmin, plan_colsum, softmin_barycenter, softmin_stored
from .weighted_loss import weighted_cross_entropy, weighted_mse

__all__ = ["pairwise_softmin", "softmin_barycenter", "plan_colsum", "softmin_stored", "half_sqdist", "nearest",
           "Nearest", "choose_cost_mode", "default_memory_budget", "sinkhorn_divergence", "SinkhornLoss",
           "SinkhornCache", "epsilon_schedule", "max_diameter",
           "weighted_cross_entropy", "weighted_mse"]

from .kmeans import KMeans, KMeansResult, kmeans, kmeans_groups  # noqa: E402

__all__ += ["kmeans", "kmeans_groups", "KMeans", "KMeansResult"]
