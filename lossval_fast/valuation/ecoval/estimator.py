"""The EcoVal estimator: fit runs the stages (inputs, clustering, subsets, trainings, cluster values,
propagation) of the sibling modules; value() values new points (out_of_sample)."""
from __future__ import annotations

import os
import time

import numpy as np

from ...base import Estimator
from ...ops.memory import release_freed_memory
from . import checkpoint, clustering, inputs, out_of_sample, subsets
from .cluster_values import cluster_value_se, cluster_values, pure_groups
from .propagation import propagate, propagate_additive
from .trainings import Trainings, _Utility


class EcoVal(Estimator):
    """EcoVal data valuation (docs/ecoval.md), scikit-learn style.

    Parameters
    ----------
    n_clusters : p, the number of clusters (>= 2 * #classes when stratified; raised with a warning otherwise).
    learner : None (built-in "logreg" for classification, "ridge" for regression), "logreg", "ridge", "mlp", or any
        object with ``fit`` and ``predict_proba`` (regression: ``predict``), cloned per subset (loop path).
        Built-in learners see X standardised with D's mean and std (and, in regression, y standardised alike);
        objects see X and y as given. "logreg" is solved by L-BFGS to ||grad||_inf <= 1e-8 on both paths
        (module constant LOGREG_SOLVER; "newton" stops at 1e-6).
    task : "auto" (the package's rule, lossval_fast.base.infer_task: integer labels with at most 20 distinct values
        and text labels are classes, other targets regression), "classification" or "regression".
    stratify_by_label : label-pure clusters with per-class quotas (classification).
    embed : None (cluster standardised X) or a callable X -> Z (n, d_z) for the clustering and the kNN space.
    pairs : "all", an int m (m partners per cluster, drawn without replacement, deduplicated) or 0.
    n_repeats : R; repeat r uses seed_r for every subset model (common random numbers).
    lam : weight of the pair interactions (0 gives LCO).
    cluster_value : "pairwise_shapley" (Variant A) or "cobb_douglas" (Variant B, classification).
    propagation : "additive" (docs/ecoval.md §4.1: values_ = cluster share + intrinsic part) or "multiplicative"
        (§4.3, EcoVal-R v1: values_ = cluster value * agreement share; sums to the cluster values).
    intrinsic : the held-out experts of the intrinsic part: None ("lco_knn" for additive, "lco_proba" for
        multiplicative), "lco_knn" (the LCO models and the knn_k nearest other points), "lco_proba", "knn_agreement"
        or "uniform" (none).
    intrinsic_weight : w, utility per nat of evidence against a label is w / n (additive).
    relevance_weight : b, utility per validation vote is b / (knn_k * m) (additive, classification; 0: no votes).
    evidence_margin : tau >= 0 nats; the intrinsic part counts only the evidence beyond it:
        intrinsic_ = (w / n) * min(0, evidence_ + tau) (additive; docs/ecoval.md §4.1). None: (1/4) log2 C
        in classification with C classes (0.25 for two, 0.83 for ten: a label at most e^tau times less likely than
        another is not held against the point), 0 in regression.
    shrinkage : shrink each cluster's share towards 0 by its standard error over the validation points (additive).
    gamma, eps : multiplicative scores s = max(g, eps)^gamma.   knn_k : neighbours of the kNN expert.
    knn_reference : the kNN expert searches at most this many training rows (a seeded sample beyond it).
    efficiency : None or "global" (Variant A: rescale so that sum of cluster values = U(N) - u0).
    metric : None (classification: "expected_accuracy", the mean probability of the validation labels; regression:
        "r2"; docs/ecoval.md §2), "accuracy", "expected_accuracy", "log_likelihood", "r2", or a callable
        metric(y_true, proba_or_pred) -> float (y_true as given; proba columns in the order of classes_).
    keep_models : keep the R*p LCO models for value() (else refit once per cluster value() needs).
    n_init : k-means restarts (lowest inertia kept).
    backend : "auto" (batched for built-in learners, loop for objects), "batched" or "loop" (built-in learners
        then run their single-model versions one subset at a time).
    device : None (CUDA if available) or a device for the batched trainers; clustering runs on the CPU.
    max_models_per_batch : models trained at once (default: from the memory budget). Results do not depend on it.
    n_jobs : parallel fits on the loop path (threads; -1: one per core).
    checkpoint : path; finished utilities (and the LCO models) are saved there atomically, so a killed fit resumes
        without retraining them. A fit with another configuration or data set refuses the file.
    random_state : int or None (seeds k-means, pair sampling and the repeats).
    verbose : progress bar over subset trainings (only on a terminal).

    Attributes (after fit)
    ----------------------
    values_, cluster_labels_, centroids_, lco_, extrinsic_, interactions_, cluster_values_, beta_star_,
    intrinsic_ (additive: (w / n) * evidence_; multiplicative: the scores s), weights_ (share of the cluster value),
    evidence_ (additive: delta <= 0, nats), evidence_margin_ (tau used), relevance_ (additive: the validation votes' part, 0 in regression),
    cluster_shares_ (additive: shrunk cluster values), cluster_value_se_,
    intrinsic_kind_, utility_full_, u0_, gamma_beta_star_, n_trainings_ (fits run by this call), classes_,
    backend_ (path and device); also n_clusters_, pairs_ (|P|, 2), subsets_ (S, p) removal masks, utilities_
    (R, S), utility_points_ (R, S, m) per validation point, mean over m = utilities_ (None for a callable
    metric), agreement_ (n,) g (multiplicative), converged_ (all built-in fits reached their tolerance),
    random_state_, task_, metric_, timings_ (seconds: clustering, trainings, values).
    """

    _checkpoint_interval = 2.0   # seconds between checkpoint writes on the loop path (always on exit, too)
    _ranks = None  # fit(ranks=...) during the fit: this rank's share of the trainings, and their merge

    def __init__(self, n_clusters=20, learner=None, *, task="auto", stratify_by_label=True, embed=None, pairs="all",
                 n_repeats=1, lam=1.0, cluster_value="pairwise_shapley", propagation="additive", intrinsic=None,
                 intrinsic_weight=100.0, relevance_weight=30.0, evidence_margin=None, shrinkage=True, gamma=1.0, eps=1e-3, knn_k=10,
                 knn_reference=50_000, efficiency=None, metric=None, keep_models=True, n_init=10, backend="auto",
                 device=None, max_models_per_batch=None, n_jobs=1, checkpoint=None, random_state=0, verbose=True):
        self.n_clusters = n_clusters
        self.learner = learner
        self.task = task
        self.stratify_by_label = stratify_by_label
        self.embed = embed
        self.pairs = pairs
        self.n_repeats = n_repeats
        self.lam = lam
        self.cluster_value = cluster_value
        self.propagation = propagation
        self.intrinsic = intrinsic
        self.intrinsic_weight = intrinsic_weight
        self.relevance_weight = relevance_weight
        self.evidence_margin = evidence_margin
        self.shrinkage = shrinkage
        self.gamma = gamma
        self.eps = eps
        self.knn_k = knn_k
        self.knn_reference = knn_reference
        self.efficiency = efficiency
        self.metric = metric
        self.keep_models = keep_models
        self.n_init = n_init
        self.backend = backend
        self.device = device
        self.max_models_per_batch = max_models_per_batch
        self.n_jobs = n_jobs
        self.checkpoint = checkpoint
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------------------------------ fit
    def _check_params(self):
        inputs.check_params(self)

    def fit(self, X, y, X_val, y_val, cluster_labels=None, *, ranks=None) -> "EcoVal":
        """Value the training points. X (n, d), y (n,) labels or float targets, X_val (m, d), y_val (m,) (arrays,
        tensors, or paths of .npy files, which are loaded); cluster_labels (n,) fixes the clusters (ids of any kind;
        numbered in sorted order). ranks: a base.Ranks (lossval_fast.distributed.fit passes one; every rank calls
        fit with the same arguments): k-means' restarts and the subset trainings are spread over the ranks and
        merged, and every rank ends with the same values. A float32 or float64 X is kept by reference, not copied
        (value() may refit from it): do not modify it in place in between."""
        self._check_params()
        self._ranks = ranks
        try:
            data, entry = self._prepare(X, y, X_val, y_val)
            labels, members = self._fit_clusters(data, cluster_labels)
            removed, skip, pair_list = self._fit_trainings(data, labels, members, entry)
            self._fit_values(data, labels, members, removed, skip, pair_list)
        finally:
            self._ranks = None
        return self

    def _prepare(self, X, y, X_val, y_val):
        """The checked data (inputs.prepare), the learner's registry entry, and the settings they resolve."""
        data = inputs.check_data(*(inputs.load_path(a) for a in (X, y, X_val, y_val)), self.task)
        entry = inputs.check_task_params(self, data.classification)
        self.task_ = data.task
        self.metric_ = self.metric if self.metric is not None else ("expected_accuracy" if data.classification else "r2")
        self.intrinsic_kind_ = inputs.resolve_intrinsic(self)
        self.random_state_ = (self.random_state if self.random_state is not None
                              else int(np.random.SeedSequence().entropy % (2**63)))
        self._data = data = inputs.prepare(data, self.metric_)
        self.evidence_margin_ = inputs.resolve_evidence_margin(self, data.classification, data.C)
        release_freed_memory()   # the row chunks of the checks and moments (glibc keeps them in the heap)
        self.classes_, self._y_code = data.classes, data.y_code
        self._utility = _Utility(self.metric_, data.classification, data.y_val, data.y_val_code)
        return data, entry

    def _fit_clusters(self, data, cluster_labels):
        """The clusters, in standardised X (or embed(X)), and in regression the standardised target too."""
        began = time.perf_counter()
        Z = self._clustering_space(data, lazy=True)
        labels, centroids = clustering.cluster(Z, data.y_code, data.classes, n_clusters=self.n_clusters,
                                               stratify=self.stratify_by_label, n_init=self.n_init,
                                               random_state=self.random_state_, cluster_labels=cluster_labels,
                                               ranks=self._ranks)
        p = centroids.shape[0]
        self.cluster_labels_, self.centroids_, self.n_clusters_ = labels, centroids, p
        self._Z = Z.array if self.embed is not None else None   # standardised X: made again if the values need it
        del Z
        release_freed_memory()
        self.timings_ = {"clustering": time.perf_counter() - began}
        self._members = members = [clustering._rows_of(labels, i) for i in range(p)]   # int32 where n fits
        self._cluster_classes = clustering.cluster_classes(labels, data.y_code, p, data.C) \
            if data.classification else None
        self._stratified = bool(data.classification and self.stratify_by_label)
        return labels, members

    def _fit_trainings(self, data, labels, members, entry):
        """The subsets (full, LCO, pairs: the same P in every repeat) and their trainings."""
        p = self.n_clusters_
        pair_list = subsets.pair_list(self.pairs, p, self.random_state_)
        self.pairs_ = np.array(pair_list, dtype=np.int64).reshape(-1, 2)
        self.subsets_ = removed = subsets.removal_masks(p, pair_list)
        skip = subsets.skipped(removed, self._cluster_classes)
        self._seeds = subsets.repeat_seeds(self.random_state_, self.n_repeats)
        self._trainings = Trainings(data, labels, members, entry, self.learner, self._seeds, device=self.device,
                                    backend=self.backend, keep_models=self.keep_models,
                                    max_models_per_batch=self.max_models_per_batch, n_jobs=self.n_jobs,
                                    verbose=self.verbose, ranks=self._ranks,
                                    checkpointing=self.checkpoint is not None)
        self.u0_ = self._trainings.constant_utility(self._utility)
        began = time.perf_counter()
        state = self._train(removed, skip)
        self.timings_["trainings"] = time.perf_counter() - began
        self._collect(state, skip)
        return removed, skip, pair_list

    def _fit_values(self, data, labels, members, removed, skip, pair_list):
        """The cluster values and their hand-down to the points."""
        p = self.n_clusters_
        began = time.perf_counter()
        if self._Z is None and self._needs_space():
            self._Z = self._clustering_space(data)
        self.backend_ = self._trainings.describe()
        groups = pure_groups(self._cluster_classes)     # the one-class rule (docs/ecoval.md §3)
        vars(self).update(cluster_values(self.utilities_, removed, pair_list, p, u0=self.u0_, lam=self.lam,
                                         cluster_value=self.cluster_value, efficiency=self.efficiency,
                                         metric=self.metric_, groups=groups))
        if self.propagation == "additive":
            se = cluster_value_se(self.utility_points_, pair_list, p, lam=self.lam, scale=self.gamma_beta_star_,
                                  groups=groups, u0_points=self._trainings.constant_points(self._utility)
                                  if self.utility_points_ is not None else None) \
                if self.cluster_value == "pairwise_shapley" else np.full(p, np.nan)
            propagate_additive(self, labels, members, se)
        else:
            propagate(self, labels, members, data.y_code, data.y)
        if self.embed is None and self.intrinsic_kind_ != "knn_agreement":
            self._Z = None   # only the multiplicative kNN agreement searches all training points in value()
        release_freed_memory()
        self.timings_["values"] = time.perf_counter() - began

    def _needs_space(self) -> bool:
        """Whether the values need the clustering space of all training points held at once: only the
        multiplicative kNN agreement (its search, also in value()); the additive propagation's kNN expert and
        validation votes make the rows they search block by block (propagation.TrainingRows), and the
        multiplicative LCO agreement needs only the held-out outputs."""
        return self.propagation == "multiplicative" and self.intrinsic_kind_ == "knn_agreement"

    def _clustering_space(self, data, lazy=False):
        """Z: standardised X (or embed(X)), and in regression the standardised target as a last column. lazy: a
        clustering.Space, whose standardised rows (classification without embed) are made only when asked for."""
        if lazy:
            if self.embed is None and data.classification:
                return clustering.Space(data=data)
            return clustering.Space(self._clustering_space(data))
        if self.embed is not None:
            Z = clustering.embed(self.embed, data.raw(), None, "X")
            if data.classification:
                return Z
            return np.concatenate([Z, ((data.y - data.y_mu) / data.y_sigma)[:, None]], 1)
        return data.standardized(extra=None if data.classification else (data.y - data.y_mu) / data.y_sigma)

    def _train(self, removed, skip) -> dict:
        """The state after every subset training: resumed from the checkpoint, this process's share trained,
        the ranks' shares merged (distributed fit)."""
        R, S = self.n_repeats, removed.shape[0]
        state = checkpoint.load(self, R, S, len(self.cluster_labels_), self.n_clusters_)
        if self._ranks is not None:  # every rank has read the same files before any writes its own
            self._ranks.barrier()
        try:
            self._trainings.run(state, removed, skip, self._utility, self._save_checkpoint)
        finally:
            self.n_trainings_, self.converged_ = self._trainings.count, self._trainings.converged
            self._save_checkpoint(state, force=True)
        if self._ranks is not None:  # every rank's trainings, on every rank (collective)
            state = self._merge_ranks(state)
        return state

    def _merge_ranks(self, state: dict) -> dict:
        """Every rank's finished trainings into `state` (collective); rank 0 then saves the merged checkpoint and
        the other ranks remove their own files."""
        ranks, p = self._ranks, self.n_clusters_
        lco = [(r, j - 1) for r, j in zip(*np.nonzero(state["done"])) if 1 <= j <= p]
        mine = {"done": state["done"], "U": state["U"], "Uv": state.get("Uv"), "models": state["models"],
                "heldout_rows": {(r, i): state["heldout"][r, self._members[i]] for r, i in lco},
                "trainings": self.n_trainings_, "converged": self.converged_}
        parts = ranks.all_gather(mine)
        for part in parts:
            state = self.merge_state(state, part)
        self.n_trainings_ = sum(part["trainings"] for part in parts)
        self.converged_ = all(part["converged"] for part in parts)
        if self.checkpoint is not None:
            if ranks.rank == 0:
                self._save_checkpoint(state, force=True)
            ranks.barrier()  # the merged state is on disk before the ranks' partial files go
            if ranks.rank != 0 and os.path.exists(self._checkpoint_path()):
                os.remove(self._checkpoint_path())
        return state

    def _collect(self, state, skip):
        """utilities_ and utility_points_ (skipped subsets: u0's), the LCO models and the held-out outputs (LCO
        subsets not fitted, with fewer than 2 classes: the constant predictor's)."""
        self.utilities_ = np.where(skip[None, :], self.u0_, state["U"])
        Uv = state.get("Uv")
        if Uv is not None and skip.any():
            Uv[:, skip] = self._trainings.constant_points(self._utility)
        self.utility_points_ = Uv
        self._lco_models = state["models"] if self.keep_models else {}
        self._lco_cache = {}
        heldout = state["heldout"]
        for r in range(self.n_repeats):
            for i, rows in enumerate(self._members):
                if skip[1 + i]:
                    heldout[r, rows] = self._trainings.constant_heldout(rows)
        self._heldout = heldout

    # ------------------------------------------------------------------------------------------ checkpoint
    def merge_state(self, state, other):
        """Add to `state` the trainings `other` (a state of the same fit: another rank's, another checkpoint
        file's) has done and `state` has not: utilities, LCO held-out outputs and models."""
        return checkpoint.merge_state(state, other, self._members)

    def _checkpoint_path(self):
        return checkpoint.checkpoint_path(self)

    def _save_checkpoint(self, state, force=False):
        checkpoint.save(self, state, force)

    # ------------------------------------------------------------------------------------------ out of sample
    def value(self, X_new, y_new) -> np.ndarray:
        """Values of new points without retraining (docs/ecoval.md §5): nearest centroid of the point's class,
        agreement from the stored LCO models, share of that cluster's value. A copy of training point k gets
        values_[k]."""
        return out_of_sample.value(self, X_new, y_new)
