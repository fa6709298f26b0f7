"""Evaluation: the official JSQuAD metric (:mod:`nami.evaluation.metric`)."""

from nami.evaluation.metric import (
    evaluate_predictions,
    exact_match_score,
    f1_score,
    load_predictions,
    normalize_answer,
)

__all__ = [
    "evaluate_predictions",
    "exact_match_score",
    "f1_score",
    "load_predictions",
    "normalize_answer",
]
