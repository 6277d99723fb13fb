"""EcoVal's subsets (docs/ecoval.md §2): the full set, the p leave-cluster-out sets and the pairs P, as removal
masks; which of them are not trained (the constant predictor); the seeds."""
from __future__ import annotations

import itertools

import numpy as np


def _seed(*words) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0])


def repeat_seeds(random_state: int, repeats: int) -> list[int]:
    """seed_r of each repeat: every subset model of repeat r uses it (common random numbers)."""
    return [_seed(random_state, 2, r) for r in range(repeats)]


def pair_list(pairs, p: int, random_state: int) -> list[tuple[int, int]]:
    """The pairs P: all of them ("all", or an int m >= p - 1), none (0), or m partners per cluster drawn without
    replacement and deduplicated (sorted)."""
    if pairs == "all" or (pairs >= p - 1 and pairs > 0):
        return list(itertools.combinations(range(p), 2))
    if pairs == 0:
        return []
    rng = np.random.default_rng(np.random.SeedSequence([random_state, 1]))
    chosen = set()
    for i in range(p):
        others = np.array([j for j in range(p) if j != i])
        for j in rng.choice(others, size=pairs, replace=False):
            chosen.add((min(i, int(j)), max(i, int(j))))
    return sorted(chosen)


def removal_masks(p: int, pairs) -> np.ndarray:
    """(S, p) bool, S = 1 + p + |P|: row 0 removes nothing, row 1 + i removes cluster i, row 1 + p + q pair q."""
    removed = np.zeros((1 + p + len(pairs), p), dtype=bool)
    removed[1 + np.arange(p), np.arange(p)] = True
    for q, (i, j) in enumerate(pairs):
        removed[1 + p + q, [i, j]] = True
    return removed


def skipped(removed: np.ndarray, cluster_classes: np.ndarray | None) -> np.ndarray:
    """(S,) bool: subsets not trained, whose utility is u0's: fewer than 2 classes left (classification), or no
    cluster left (regression, cluster_classes None)."""
    if cluster_classes is not None:
        kept_classes = (~removed).astype(np.int64) @ cluster_classes.astype(np.int64)
        return (kept_classes > 0).sum(1) < 2
    return np.array([not (~r).any() for r in removed])
