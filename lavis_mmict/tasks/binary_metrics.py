"""Binary classification metrics in percent, as scikit-learn defines them (it is not a dependency):
ROC-AUC (Hateful Memes), average precision and F1 (VizWiz's unanswerability).

``labels``: 0/1 ground truth; ``scores``: any real numbers, higher = more positive; ties count as
sklearn counts them (ROC-AUC: half a pair; average precision: one threshold per distinct score).
"""
from typing import Sequence

import numpy as np

__all__ = ["roc_auc", "average_precision", "f1_score"]


def _checked(labels, values, what):
    labels = np.asarray(labels, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    if labels.shape != values.shape or labels.ndim != 1:
        raise ValueError(f"{what}: labels {labels.shape} and scores {values.shape} must be equal 1-d shapes")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{what}: labels must be 0 or 1")
    return labels, values


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (percent): the chance that a random positive scores above a random
    negative, ties counting one half (the Mann-Whitney U / (P * N)). NaN without both classes."""
    labels, scores = _checked(labels, scores, "roc_auc")
    positives, negatives = scores[labels == 1], scores[labels == 0]
    if not len(positives) or not len(negatives):
        return float("nan")
    # average ranks over ties: the U statistic from the positives' rank sum
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    rank_sum = ranks[labels == 1].sum()
    u = rank_sum - len(positives) * (len(positives) + 1) / 2.0
    return 100.0 * u / (len(positives) * len(negatives))


def average_precision(labels: Sequence[int], scores: Sequence[float]) -> float:
    """sum_t (R_t - R_{t-1}) * P_t over the distinct scores t, highest first (percent; no
    interpolation, as sklearn's ``average_precision_score``). NaN without positives."""
    labels, scores = _checked(labels, scores, "average_precision")
    total_positives = int(labels.sum())
    if not total_positives:
        return float("nan")
    ap, previous_recall = 0.0, 0.0
    for threshold in np.unique(scores)[::-1]:
        chosen = scores >= threshold
        true_positives = int(labels[chosen].sum())
        recall = true_positives / total_positives
        ap += (recall - previous_recall) * true_positives / int(chosen.sum())
        previous_recall = recall
    return 100.0 * ap


def f1_score(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """F1 of the positive class (percent): 2 TP / (2 TP + FP + FN); 0 when there is no TP."""
    labels, predictions = _checked(labels, predictions, "f1_score")
    true_positives = int(((labels == 1) & (predictions == 1)).sum())
    wrong = int((labels != predictions).sum())
    return 100.0 * 2 * true_positives / (2 * true_positives + wrong) if true_positives else 0.0
