"""Lloyd's k-means the plain way, in float64 on the materialised N x K distance matrix: the oracle for
`lossval_fast.ops.kmeans`. It follows scikit-learn's `KMeans(algorithm="lloyd")` step by step:

- every iteration assigns each row to its nearest centroid (first index on ties), re-seeds empty clusters and
  replaces every centroid by the mean of its rows;
- it stops when the labels did not change ("strict" convergence), when the total squared centroid shift is
  <= tol * (mean of the per-feature variances of x), or after max_iter iterations;
- without strict convergence, one last assignment makes the labels match the returned centroids;
- an empty cluster takes the row farthest from its assigned centroid (farthest first, ties to the lower row),
  which leaves its old cluster; a cluster still empty (all distances zero) sits on the centroid of the largest one.
"""
from __future__ import annotations

import torch

__all__ = ["kmeans_lloyd", "kmeans_tolerance", "relocate_empty_clusters"]


def kmeans_tolerance(x: torch.Tensor, tol: float) -> float:
    """scikit-learn's absolute tolerance: tol times the mean of the per-feature (population) variances of x."""
    if tol == 0:
        return 0.0
    return float(x.double().var(dim=0, unbiased=False).mean()) * float(tol)


def _sqdist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (x.pow(2).sum(1)[:, None] - 2 * x @ c.T + c.pow(2).sum(1)[None, :]).clamp_min(0)


def relocate_empty_clusters(x: torch.Tensor, labels: torch.Tensor, distances: torch.Tensor, sums: torch.Tensor,
                            counts: torch.Tensor) -> None:
    """scikit-learn's `_relocate_empty_clusters_dense`, in place on (sums, counts): the e-th empty cluster (in
    increasing order) takes the e-th farthest row from its assigned centroid, which leaves its old cluster. Rows
    keep their labels. Nothing moves when every distance is zero (more clusters than distinct rows)."""
    empty = torch.nonzero(counts == 0).flatten()
    n_empty = int(empty.numel())
    if n_empty == 0 or float(distances.max()) == 0:
        return
    # the n_empty largest distances, farthest first, ties to the lower row (deterministic on every device)
    threshold = torch.topk(distances, n_empty).values.min()
    candidates = torch.nonzero(distances >= threshold).flatten()
    order = torch.sort(-distances[candidates].double(), stable=True).indices[:n_empty]
    far = candidates[order]
    for new, row in zip(empty.tolist(), far.tolist()):
        old = int(labels[row])
        sums[old] -= x[row].to(sums.dtype)
        counts[old] -= 1
        sums[new] = x[row].to(sums.dtype)
        counts[new] = 1


def _average(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Means of the non-empty clusters; an empty one sits on the centroid of the largest cluster (first on ties)."""
    filled = counts > 0
    centroids = sums / counts.clamp_min(1).to(sums.dtype)[:, None]
    if not bool(filled.all()):
        centroids[~filled] = centroids[int(torch.argmax(counts))].clone()
    return centroids


def kmeans_lloyd(x: torch.Tensor, centroids: torch.Tensor, max_iter: int = 100, tol: float = 1e-4):
    """Lloyd from the given centroids in float64. Returns (centroids (K, d) float64, labels (N,) int64,
    inertia float, n_iter int), with scikit-learn's stopping rule and empty-cluster re-seeding."""
    x = x.double()
    c = centroids.double().clone()
    k = c.shape[0]
    threshold = kmeans_tolerance(x, tol)
    labels_old = None
    strict = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        labels = _sqdist(x, c).argmin(dim=1)
        # the relocation rule measures each row against its assigned centroid directly, as scikit-learn does
        direct = (x - c[labels]).pow(2).sum(1)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        relocate_empty_clusters(x, labels, direct, sums, counts)
        new = _average(sums, counts)
        shift = float((new - c).pow(2).sum())
        c = new
        if labels_old is not None and torch.equal(labels, labels_old):
            strict = True
            break
        if shift <= threshold:
            break
        labels_old = labels
    if not strict:
        labels = _sqdist(x, c).argmin(dim=1)
    inertia = float((x - c[labels]).pow(2).sum())
    return c, labels, inertia, n_iter
