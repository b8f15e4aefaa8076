"""The two untrained ensembles the meta-learner must beat: soft voting and majority voting.

Takes: member probabilities [N, M, K]. Makes: soft voting's mean probabilities [N, K]; majority voting's
labels [N] and vote shares [N, K] (votes / M, used as its scores for ROC-AUC and calibration). A tied vote
goes to the tied class with the highest mean probability, then to the first class in class-list order.
"""

from __future__ import annotations

import numpy as np


def soft_vote(member_probs: np.ndarray) -> np.ndarray:
    """Mean of the members' probabilities: [N, M, K] -> [N, K]."""
    return np.asarray(member_probs, dtype=np.float64).mean(axis=1)


def majority_vote(member_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels [N], vote shares [N, K]); ties broken by soft-vote probability, then class order."""
    p = np.asarray(member_probs, dtype=np.float64)
    n, m, k = p.shape
    votes = np.zeros((n, k), dtype=np.int64)
    np.add.at(votes, (np.repeat(np.arange(n), m), np.argmax(p, axis=2).ravel()), 1)
    mean = p.mean(axis=1)
    top = votes == votes.max(axis=1, keepdims=True)
    labels = np.argmax(np.where(top, mean, -np.inf), axis=1)
    return labels, votes / float(m)
