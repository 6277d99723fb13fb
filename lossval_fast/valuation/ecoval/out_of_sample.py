"""EcoVal's values of new points without retraining (docs/ecoval.md §5): the nearest centroid of the point's class,
the agreement from the stored LCO models (refit once per cluster without keep_models), the share of that
cluster's value. A copy of training point k gets values_[k]."""
from __future__ import annotations

import numpy as np
import torch

from ... import ops
from .clustering import embed
from .inputs import NotFittedError, _features, _targets
from .propagation import EXPERTS, _mean_rows, _scores, knn, residual_agreement, value_new_additive


def value(est, X_new, y_new) -> np.ndarray:
    if not hasattr(est, "values_"):
        raise NotFittedError("this EcoVal instance is not fitted yet; call fit(X, y, X_val, y_val) before "
                             "value()")
    data = est._data
    d = data.X.shape[1]
    X_new = _features(X_new, "X_new", d)
    m = X_new.shape[0]
    y_new = _targets(y_new, "y_new", m, "X_new")
    classification = est.task_ == "classification"
    if classification:
        known = np.isin(y_new, est.classes_)
        if not known.all():
            raise ValueError(f"y_new holds label(s) {np.unique(y_new[~known]).tolist()} not seen in y; "
                             f"expected labels among {est.classes_.tolist()}")
        codes = np.searchsorted(est.classes_, y_new)
    else:
        try:
            y_new = y_new.astype(np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"y_new must be numeric for regression, got dtype {y_new.dtype}") from error
        codes = None
    Xs_new = data.standardize(X_new)
    Z = embed(est.embed, X_new, Xs_new, "X_new")
    if not classification:
        Z = np.concatenate([Z, ((y_new - data.y_mu) / data.y_sigma)[:, None]], 1)
    if Z.shape[1] != est.centroids_.shape[1]:
        raise ValueError(f"embed(X_new) has {Z.shape[1]} columns, the training embedding had "
                         f"{est.centroids_.shape[1]}")
    clusters = nearest_cluster(est, Z, codes)

    if est.propagation == "additive":
        held = lco_outputs(est, clusters, X_new, Xs_new) if "lco" in EXPERTS[est.intrinsic_kind_] else None
        return value_new_additive(est, clusters, Z, codes, y_new, held)
    if est.intrinsic_kind_ == "uniform":
        g = np.ones(m)
    elif est.intrinsic_kind_ == "knn_agreement":
        g = knn(est, Z, codes, exclude_self=False)
    else:
        held = lco_outputs(est, clusters, X_new, Xs_new)
        g = held[np.arange(m), codes] if classification else residual_agreement(est, y_new - held, clusters)
    negative = est.cluster_values_[clusters] < 0
    s = _scores(g, est.eps, est.gamma, negative)
    return (est.cluster_values_[clusters] * s) / est._score_sum[clusters]


def lco_outputs(est, clusters, X_new, Xs_new) -> np.ndarray:
    """The LCO models of the new points' clusters on them, averaged over the repeats: (m, C) class probabilities
    or (m,) predictions."""
    classification = est.task_ == "classification"
    m = len(clusters)
    held = np.zeros((est.n_repeats, m, est._data.C) if classification else (est.n_repeats, m))
    for i in np.unique(clusters):
        rows = np.flatnonzero(clusters == i)
        for r in range(est.n_repeats):
            held[r, rows] = est._trainings.predict_model(lco_model(est, r, int(i)), X_new[rows], Xs_new[rows])
    return _mean_rows(held)


def nearest_cluster(est, Z, codes):
    """Nearest centroid, among the clusters of the point's class when the clusters are label-pure."""
    c = torch.as_tensor(est.centroids_, dtype=torch.float64)
    x = torch.as_tensor(Z, dtype=torch.float64)
    if not est._stratified:
        return ops.nearest(x, c).index.numpy().astype(np.int64)
    out = np.empty(len(Z), dtype=np.int64)
    for code in np.unique(codes):
        rows = np.flatnonzero(codes == code)
        cands = np.flatnonzero(est._cluster_classes[:, code])
        out[rows] = cands[ops.nearest(x[rows], c[cands]).index.numpy()]
    return out


def lco_model(est, r, i):
    """f_{-i} of repeat r: stored, cached, or refit once (keep_models=False); None where fewer than 2 classes
    remain (the constant predictor)."""
    if (r, i) in est._lco_models:
        return est._lco_models[(r, i)]
    if (r, i) in est._lco_cache:
        return est._lco_cache[(r, i)]
    removed = est.subsets_[1 + i]
    if est.task_ == "classification":
        kept = est._cluster_classes[~removed].any(0)
        if kept.sum() < 2:
            for rr in range(est.n_repeats):
                est._lco_cache[(rr, i)] = None
            return None
    for rr, model in enumerate(est._trainings.refit(removed, est.n_repeats)):
        est._lco_cache[(rr, i)] = model
    return est._lco_cache[(r, i)]
