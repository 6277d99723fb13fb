"""Data valuation: the LossVal and EcoVal estimators, the KNN-Shapley baseline, and the evaluation toolkit of
OpenDataVal's protocol (docs/algorithms.md §4): splits, noise injection, noisy-point detection metrics."""
from .ecoval import EcoVal
from .knn_shapley import KNNShapley
from .lossval import LossVal
from .metrics import discovery_curve, f1_score, noisy_detection_auc, noisy_detection_f1, two_means_split
from .noise import (KINDS, add_feature_noise, add_label_noise, add_mixed_noise, inject_noise, noisify_split,
                    noisy_count)
from .splits import Split, check_random_state, standardize_split, zscore

__all__ = [
    "EcoVal", "KINDS", "KNNShapley", "LossVal", "Split", "add_feature_noise", "add_label_noise", "add_mixed_noise",
    "check_random_state", "discovery_curve", "f1_score", "inject_noise", "noisify_split", "noisy_count",
    "noisy_detection_auc", "noisy_detection_f1", "standardize_split", "two_means_split", "zscore",
]
