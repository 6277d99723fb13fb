"""Pure-PyTorch oracles: obviously correct, materialised, slow. Tests and benchmarks compare against these."""
from .pairwise import half_sqdist, nearest, plan_colsum, softmin, softmin_barycenter, softmin_stored

__all__ = ["half_sqdist", "softmin", "softmin_barycenter", "plan_colsum", "nearest", "softmin_stored"]
