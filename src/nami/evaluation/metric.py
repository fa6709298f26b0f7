"""The official JSQuAD metric: exact match and character-level F1.

JGLUE scores JSQuAD with the SQuAD v1.1 metric of ``transformers``
(``src/transformers/data/metrics/squad_metrics.py``) as modified by its patch
(yahoojapan/JGLUE ``fine-tuning/patch/transformers-4.*_jglue-1.1.0.patch``):

* normalisation: lower-case, drop trailing ``。``, collapse whitespace runs to one space
  and trim (``" ".join(s.split())``, so the ideographic space U+3000 counts as whitespace);
  no punctuation or article removal, no Unicode normalisation;
* EM: the normalised strings are equal;
* F1: precision/recall/F1 over the *characters* of the normalised strings, counted as
  multisets (``Counter(list(normalised))``);
* per question the maximum over the gold answers; the mean over questions, in percent.

Details that matter for matching the official numbers, reproduced here:

* Whitespace characters count. The patch computes ``list(normalize_answer(text))``, so the
  single spaces left by whitespace collapsing are characters like any other: prediction
  "a b" vs gold "ab" has P = 2/3, R = 1, F1 = 0.8. Only leading/trailing and repeated whitespace is removed, by the
  normalisation itself.
* The order is the patch's: lower-case, strip ``。``, then collapse whitespace. So
  "東京。 " keeps its ``。`` (the string does not end in ``。`` when it is stripped).
* Every trailing ``。`` is removed ("東京。。" -> "東京"), because the JGLUE patch uses
  ``text.rstrip("。")``. (nami's data README says "strip one trailing 。"; the code is what
  produced the published numbers, so nami follows the code. The two differ only on strings
  ending in ``。。``; no JSQuAD dev gold answer does.)
* Empty strings (after normalisation): F1 and EM are 1 if both prediction and gold are
  empty, else 0 (the ``transformers`` rule). Gold answers that normalise to empty are dropped
  before taking the maximum; a question left with no gold answer (or loaded without answers)
  has the single gold "", so only an empty prediction scores on it.

Where nami deliberately differs from ``squad_metrics.squad_evaluate``: a question with no
prediction counts as wrong (0 EM, 0 F1) and is listed under ``"missing"`` instead of being
left out of the mean, so a partial prediction file cannot inflate the score.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from nami.data.squad import QAExample
from nami.io import read_input_json

__all__ = [
    "evaluate_predictions",
    "exact_match_score",
    "f1_score",
    "load_predictions",
    "normalize_answer",
]

_FULL_STOP = "。"


def normalize_answer(s: str) -> str:
    """JSQuAD answer normalisation: lower-case, strip trailing "。", collapse whitespace."""
    return " ".join(s.lower().rstrip(_FULL_STOP).split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    """1.0 if the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Character-level F1 in [0, 1] between the normalised strings (spaces count).

    If either normalised string is empty the score is 1.0 when both are, else 0.0.
    """
    pred_chars = list(normalize_answer(prediction))
    gold_chars = list(normalize_answer(ground_truth))
    if not pred_chars or not gold_chars:
        return float(pred_chars == gold_chars)
    num_same = sum((Counter(pred_chars) & Counter(gold_chars)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_chars)
    recall = num_same / len(gold_chars)
    return 2 * precision * recall / (precision + recall)


def _gold_texts(example: QAExample) -> list[str]:
    """Gold answers that survive normalisation, or [""] if none does (transformers' rule)."""
    golds = [answer.text for answer in example.answers if normalize_answer(answer.text)]
    return golds or [""]


def evaluate_predictions(
    examples: Sequence[QAExample], predictions: Mapping[str, str]
) -> dict[str, Any]:
    """Score predicted answer texts against the gold answers with the JSQuAD metric.

    Args:
        examples: the questions to score (every one counts).
        predictions: question id -> predicted answer text.

    Returns:
        ``{"exact_match": EM %, "f1": F1 %, "count": len(examples), "missing": [ids of
        examples without a prediction, in example order; scored 0], "unexpected": [prediction
        ids that match no example, in prediction order; ignored]}``.

    Raises:
        ValueError: ``examples`` is empty.
        TypeError: a prediction for a scored question is not a string.
    """
    if not examples:
        raise ValueError("evaluate_predictions needs at least one example to score")
    total_em = 0.0
    total_f1 = 0.0
    missing: list[str] = []
    for example in examples:
        prediction = predictions.get(example.id)
        if prediction is None:
            missing.append(example.id)
            continue
        if not isinstance(prediction, str):
            raise TypeError(
                f"prediction for question {example.id!r} must be a string, "
                f"got {type(prediction).__name__}"
            )
        golds = _gold_texts(example)
        total_em += max(exact_match_score(prediction, gold) for gold in golds)
        total_f1 += max(f1_score(prediction, gold) for gold in golds)
    known = {example.id for example in examples}
    count = len(examples)
    return {
        "exact_match": 100.0 * total_em / count,
        "f1": 100.0 * total_f1 / count,
        "count": count,
        "missing": missing,
        "unexpected": [qid for qid in predictions if qid not in known],
    }


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", int: "integer", float: "number"}
    names.update({bool: "boolean", type(None): "null"})
    return names.get(type(value), type(value).__name__)


def load_predictions(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a predictions file: a JSON object ``{question_id: answer_text}``.

    Raises:
        ValueError: the file is missing, not a regular file, not UTF-8, not valid JSON, not an
            object, or maps some id to a non-string; the message names the file (and the first
            offending id).
    """
    data = read_input_json(path)  # regular files only; every failure names the file
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: predictions must be a JSON object {{question_id: answer_text}}, "
            f"got {_json_type(data)}"
        )
    for qid, answer in data.items():
        if not isinstance(answer, str):
            shown = f" ({json.dumps(answer)})" if isinstance(answer, (int, float)) else ""
            raise ValueError(
                f"{path}: prediction for question {qid!r} must be a string, "
                f"got {_json_type(answer)}{shown}"
            )
    return data
