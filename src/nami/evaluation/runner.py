"""Prediction with a trained run: whole SQuAD files (``nami predict``) or one question (``nami ask``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from nami.data.features import build_features
from nami.data.squad import QAExample, load_squad
from nami.evaluation.metric import evaluate_predictions
from nami.evaluation.predict import predict_answers
from nami.training import checkpoint as ckpt
from nami.training.tasks import feature_config


def predict_file(
    run_dir: str | Path,
    data: str | Sequence[str],
    output: str | Path,
    *,
    batch_size: int | None = None,
    threads: int | None = None,
    answer_boundaries: str | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Write ``{question_id: answer}`` for every question in ``data``; score it when answers exist.

    Returns a summary with EM / F1 (when the data has answers), questions/s, and whether the F1
    equals the one recorded in the run's ``final_eval.json`` for the same data file (checked only
    when decoding with the run's own ``answer_boundaries``; ``answer_boundaries=None`` uses it).
    """
    if threads:
        torch.set_num_threads(threads)
    model, tokenizer, config = ckpt.load_run(run_dir)
    examples = load_squad(data, require_answers=False, on_bad_record=config.on_bad_record)
    features = build_features(examples, tokenizer, feature_config(config), show_progress=not quiet)
    boundaries = answer_boundaries or config.answer_boundaries
    output_data = predict_answers(
        model,
        examples,
        features,
        pad_id=tokenizer.pad_id, sep_id=tokenizer.sep_id,
        batch_size=batch_size or config.eval_batch_size,
        max_answer_tokens=config.max_answer_tokens,
        answer_boundaries=boundaries,
        question_match=config.question_match,
        precision=config.precision,
        show_progress=not quiet,
    )
    ckpt.write_json(Path(output), output_data.answers)
    summary: dict[str, Any] = {
        "output": str(output),
        "count": len(examples),
        "questions_per_s": round(output_data.questions_per_second, 2),
        "answer_boundaries": boundaries,
    }
    if all(ex.answers for ex in examples):
        scores = evaluate_predictions(examples, output_data.answers)
        summary.update(exact_match=scores["exact_match"], f1=scores["f1"])
        recorded = Path(run_dir) / ckpt.FINAL_EVAL_FILE
        data_paths = [str(Path(d).resolve()) for d in ([data] if isinstance(data, (str, Path)) else data)]
        if recorded.is_file() and boundaries == config.answer_boundaries:
            final = ckpt.read_json(recorded)
            if [str(Path(final["data"]).resolve())] == data_paths:
                summary["recorded_f1"] = final["f1"]
                summary["matches_recorded"] = (final["f1"], final["exact_match"]) == (scores["f1"],
                                                                                      scores["exact_match"])
    return summary


def ask(run_dir: str | Path, *, context: str, question: str, n_best: int = 3) -> dict[str, Any]:
    """The ``n_best`` answer spans of ``context`` for ``question``, with scores and char offsets.

    Any context length works: a context longer than one window is cut into overlapping windows
    (``"windows"`` in the result) and the best spans of all of them compete. Every candidate is
    ``{"text", "score", "start", "end"}`` with ``text == context[start:end]`` (never empty), the
    offsets counting characters of ``context`` exactly as given. Control characters other than
    tab and newline (NUL, ESC, DEL, C1 controls) are accepted and, like whitespace, separate
    words: no token contains one, though an answer may run across one. Format characters
    (zero-width space/joiners, BOM) are ignored inside words. A context with no answerable token
    (e.g. only a literal ``[SEP]``) gives ``{"answer": "", "candidates": []}``.

    Raises:
        ValueError: naming the option (``--context``, ``--question``, ``--n-best``) when the
            context or question is empty, has no visible character (only whitespace, control or
            format characters) or holds a lone surrogate (undecodable bytes in a command-line
            argument), or when ``n_best < 1``.
    """
    import re

    from nami.text.normalize import normalize

    for option, text in (("--context", context), ("--question", question)):
        if not text:
            raise ValueError(f"{option} is empty")
        surrogate = re.search("[\ud800-\udfff]", text)
        if surrogate:
            code, at = ord(surrogate.group()), surrogate.start()
            raise ValueError(
                f"{option} is not valid text: undecodable byte 0x{code - 0xDC00:02x} at character {at} (pass UTF-8)"
                if 0xDC80 <= code <= 0xDCFF
                else f"{option} is not valid text: lone surrogate U+{code:04X} at character {at}"
            )
        if not normalize(text).text.strip():
            raise ValueError(f"{option} has no visible text (only whitespace, control or format characters)")
    if n_best < 1:
        raise ValueError(f"--n-best={n_best}: expected >= 1")
    model, tokenizer, config = ckpt.load_run(run_dir)
    example = QAExample(id="ask", question=question, context=context, answers=(), title="", source="<ask>")
    features = build_features([example], tokenizer, feature_config(config), show_progress=False)
    output = predict_answers(
        model, [example], features, pad_id=tokenizer.pad_id, sep_id=tokenizer.sep_id,
        max_answer_tokens=config.max_answer_tokens, answer_boundaries=config.answer_boundaries,
        question_match=config.question_match, n_best=n_best, precision=config.precision, show_progress=False,
    )
    candidates = [
        {"text": context[s.char_start : s.char_end], "score": s.score, "start": s.char_start, "end": s.char_end}
        for s in output.nbest["ask"]
    ]
    return {"answer": candidates[0]["text"] if candidates else "", "candidates": candidates, "windows": len(features)}
