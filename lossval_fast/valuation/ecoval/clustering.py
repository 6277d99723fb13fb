"""EcoVal's clusters (docs/ecoval.md §2): the clustering space, per-class quotas, stratified k-means (or clusters
given by the caller) and the assignment of points to their nearest centroid."""
from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import torch

from ... import ops
from .inputs import EcoValWarning, _numpy
from .subsets import _seed


def cluster_quotas(p: int, counts) -> list[int]:
    """Per-class cluster counts p_c (docs/ecoval.md §2) for p >= 2 * #classes: p_c = max(2, floor(p n_c / n + 1/2)),
    then decrement the largest p_c > 2 (ties: larger n_c, then smaller label) while the sum exceeds p, and
    increment the largest n_c / p_c (ties: smaller label) while it falls short."""
    counts = [int(c) for c in counts]
    n = sum(counts)
    quotas = [max(2, (2 * p * c + n) // (2 * n)) for c in counts]   # floor(p c / n + 1/2) in integers
    while sum(quotas) > p:
        c = max((k for k in range(len(counts)) if quotas[k] > 2), key=lambda k: (quotas[k], counts[k], -k))
        quotas[c] -= 1
    while sum(quotas) < p:
        c = max(range(len(counts)), key=lambda k: (Fraction(counts[k], quotas[k]), -k))
        quotas[c] += 1
    return quotas


def embed(embed_fn, X, Xs, name) -> np.ndarray:
    """The clustering (and kNN) space: standardised X, or embed_fn(X) checked."""
    if embed_fn is None:
        return Xs
    Z = _numpy(embed_fn(X), f"embed({name})")
    if Z.ndim != 2 or Z.shape[0] != X.shape[0]:
        raise ValueError(f"embed({name}) must return a 2-D array with one row per row of {name} "
                         f"({X.shape[0]}), got shape {Z.shape}")
    Z = Z.astype(np.float64)
    if not np.all(np.isfinite(Z)):
        raise ValueError(f"embed({name}) returned NaN or inf values")
    return Z


class Space:
    """The clustering space, row subsets on demand: a materialised (n, d_z) float64 array, or (data given) the
    standardised X made for the rows asked (``Data.standardized``: the same bits as those rows of the whole), so
    that a stratified k-means holds one class's rows in float64 at a time, not a float64 copy of all of X."""

    def __init__(self, array=None, data=None):
        self.array, self.data = array, data
        self.shape = array.shape if array is not None else data.X.shape

    def __len__(self):
        return self.shape[0]

    def rows(self, idx=None) -> np.ndarray:
        """The rows idx (None: all) in float64."""
        if self.array is not None:
            return self.array if idx is None else self.array[idx]
        return self.data.standardized(idx)


def _space(Z) -> Space:
    return Z if isinstance(Z, Space) else Space(np.asarray(Z))


def cluster(Z, y_code, classes, *, n_clusters, stratify, n_init, random_state, cluster_labels=None, ranks=None):
    """-> labels (n,) int64 numbered 0..p-1, centroids (p, d_z). Z: the clustering space (an (n, d_z) array or a
    Space). cluster_labels fixes the clusters; otherwise k-means, per class with quotas when stratify and y_code
    (classification) are given; ranks (a base.Ranks) spreads k-means' n_init runs over processes."""
    Z = _space(Z)
    n = Z.shape[0]
    if cluster_labels is not None:
        return fixed_clusters(cluster_labels, Z, n)
    if n_clusters > n:
        raise ValueError(f"n_clusters must be <= the number of training points ({n}), got {n_clusters}")
    return kmeans(Z, y_code if stratify else None, classes, n_clusters, n_init, random_state, ranks)


def fixed_clusters(cluster_labels, Z, n):
    raw = _numpy(cluster_labels, "cluster_labels")
    if raw.ndim != 1 or raw.shape[0] != n:
        raise ValueError(f"cluster_labels must have one entry per row of X: expected shape ({n},), got "
                         f"{raw.shape}")
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):
        raise ValueError("cluster_labels contains NaN or inf")
    ids, labels = np.unique(raw, return_inverse=True)
    if len(ids) < 2:
        raise ValueError(f"cluster_labels must name at least 2 clusters, got {len(ids)}")
    labels = labels.astype(np.int64)
    centroids = np.stack([_space(Z).rows(np.flatnonzero(labels == i)).mean(0) for i in range(len(ids))])
    return labels, centroids


def kmeans(Z, y_code, classes, p, n_init, random_state, ranks=None):
    """k-means with p clusters; with y_code, label-pure clusters with per-class quotas (p raised to 2 per class).
    Clusters left empty by the final assignment are dropped (with a warning)."""
    n = Z.shape[0]
    if y_code is not None:
        C = len(classes)
        if p < 2 * C:
            warnings.warn(f"n_clusters={p} is below 2 per class for {C} classes; raised to p={2 * C}",
                          EcoValWarning, stacklevel=4)
            p = 2 * C
        counts = np.bincount(y_code, minlength=C)
        quotas = cluster_quotas(p, counts)
        short = [(classes.tolist()[c], int(counts[c]), quotas[c]) for c in range(C) if counts[c] < quotas[c]]
        if short:
            label, have, need = short[0]
            raise ValueError(f"class {label!r} has {have} training point(s), fewer than its quota of {need} "
                             f"clusters (n_clusters={p}); lower n_clusters")
        groups = y_code
    else:
        quotas, groups = [p], np.zeros(n, dtype=np.int64)
    centroids, centroid_groups = run_kmeans(Z, groups, quotas, n_init, random_state, ranks)
    labels = assign(Z, groups, centroids, centroid_groups)
    sizes = np.bincount(labels, minlength=len(centroids))
    if (sizes == 0).any():
        empty = np.flatnonzero(sizes == 0)
        warnings.warn(f"{len(empty)} cluster(s) {empty.tolist()} received no point in the final assignment and "
                      f"were dropped ({len(centroids) - len(empty)} clusters remain)", EcoValWarning,
                      stacklevel=4)
        keep = sizes > 0
        renumber = np.cumsum(keep) - 1
        labels = renumber[labels]
        centroids = centroids[keep]
    return labels.astype(np.int64, copy=False), centroids   # int64 already: no second (n,) array


def run_kmeans(Z, groups, quotas, n_init, random_state, ranks=None):
    """Centroids (k, d_z) numbered group by group, and each centroid's group: one call of the k-means op with
    the groups (stratified: one group's rows made at a time, ``ops.kmeans_groups``) and n_init restarts, lowest
    inertia kept."""
    Z = _space(Z)
    seed = _seed(random_state, 0)
    if len(quotas) > 1:   # a group's row indices are made when its rows are (not all groups' held through the fit)
        sizes = np.bincount(groups, minlength=len(quotas)).tolist()
        result = ops.kmeans_groups(lambda gid: torch.from_numpy(Z.rows(_rows_of(groups, gid))), sizes, quotas,
                                   init="k-means++", n_init=n_init, random_state=seed, ranks=ranks)
    else:
        result = ops.kmeans(torch.as_tensor(Z.rows(), dtype=torch.float64), quotas[0], init="k-means++",
                            n_init=n_init, random_state=seed, ranks=ranks)
    centroids = result.centroids.detach().cpu().to(torch.float64).numpy()
    if len(quotas) > 1:
        centroid_groups = result.centroid_groups.detach().cpu().numpy().astype(np.int64)
    else:
        centroid_groups = np.zeros(len(centroids), dtype=np.int64)
    return centroids, centroid_groups


def _rows_of(groups, gid) -> np.ndarray:
    """The indices of group gid's rows, int32 where they fit (half the bytes of int64; the same rows)."""
    rows = np.flatnonzero(groups == gid)
    return rows.astype(np.int32) if len(groups) <= np.iinfo(np.int32).max else rows


def assign(Z, groups, centroids, centroid_groups):
    """Nearest centroid within the point's group, ties to the lower index (the op's rule)."""
    Z = _space(Z)
    labels = np.empty(len(Z), dtype=np.int64)
    c = torch.as_tensor(centroids, dtype=torch.float64)
    for gid in np.unique(groups):
        rows = _rows_of(groups, gid)
        cands = np.flatnonzero(centroid_groups == gid)
        x = Z.rows() if len(rows) == len(Z) else Z.rows(rows)
        found = ops.nearest(torch.as_tensor(x, dtype=torch.float64), c[cands]).index.numpy()
        del x
        labels[rows] = cands[found]
    return labels


def cluster_classes(labels, y_code, p, C) -> np.ndarray:
    """(p, C) bool: which classes each cluster holds."""
    out = np.zeros((p, C), dtype=bool)
    out[labels, y_code] = True
    return out
