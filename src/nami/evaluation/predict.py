"""Run a QA model over examples and return answer strings.

Inference is deterministic for a given model, data and thread count: windows are batched in a
fixed length-sorted order and every batch is padded to a multiple of 16.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from nami.data.batching import QACollator, sorted_batches, token_type_count
from nami.data.features import ANSWER_BOUNDARIES, QAFeatures
from nami.data.squad import QAExample
from nami.evaluation.decoding import Span, best_token_spans, decode_example_spans
from nami.resources import resolve_precision


@dataclass
class PredictionOutput:
    answers: dict[str, str]  # question id -> answer text ("" when no span was found)
    nbest: dict[str, list[Span]]
    seconds: float  # model + decoding time (not tokenisation)

    @property
    def questions_per_second(self) -> float:
        return len(self.answers) / self.seconds if self.seconds > 0 else float("nan")


def autocast_context(device: torch.device, precision: str):
    """``torch.autocast`` for bf16, a no-op for fp32 (``auto``: :func:`nami.resources.resolve_precision`)."""
    if resolve_precision(precision, device.type) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_answers(
    model: torch.nn.Module,
    examples: list[QAExample],
    features: QAFeatures,
    *,
    pad_id: int,
    sep_id: int | None = None,
    batch_size: int = 64,
    max_answer_tokens: int = 30,
    answer_boundaries: str = "word",
    question_match: bool = False,
    n_best: int = 1,
    precision: str = "bf16",
    device: torch.device | str = "cpu",
    show_progress: bool = True,
) -> PredictionOutput:
    """Best answer substring per example (``features`` built from ``examples``).

    ``answer_boundaries``: ``"word"`` picks only spans that begin and end on MeCab word boundaries
    (see :mod:`nami.data.features`); ``"token"`` allows any context token span (runs saved before
    the option existed decoded this way). ``question_match``: the run's
    ``TrainConfig.question_match`` (context words found in the question get token type 2); it must
    agree with the model's number of segment embeddings.
    """
    if answer_boundaries not in ANSWER_BOUNDARIES:
        raise ValueError(f"answer_boundaries={answer_boundaries!r}: expected one of {', '.join(ANSWER_BOUNDARIES)}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    # Token types the model was trained with must be the ones the batches carry: a question-match
    # model fed plain types (or the reverse) would decode without error but wrongly.
    type_vocab_size = getattr(getattr(model, "config", None), "type_vocab_size", None)
    if type_vocab_size is not None and (question_match or type_vocab_size) and sep_id is not None \
            and type_vocab_size != token_type_count(question_match):
        raise ValueError(f"question_match={question_match} makes {token_type_count(question_match)} token types; "
                         f"the model has {type_vocab_size} segment embeddings (decode with the run's question_match)")
    collate = QACollator(features, pad_id, sep_id=sep_id, question_match=question_match)
    per_example: dict[int, list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]] = defaultdict(list)
    started = time.perf_counter()
    batches = sorted_batches(features.lengths, batch_size)
    for batch_indices in tqdm(batches, desc="predict", disable=not show_progress, unit="batch"):
        batch = collate(batch_indices)
        input_ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        token_types = batch["token_type_ids"].to(device) if "token_type_ids" in batch else None
        with autocast_context(device, precision):
            logits = model(input_ids, mask, token_types)
        real = mask.bool()
        if not (torch.isfinite(logits.start[real]).all() and torch.isfinite(logits.end[real]).all()):
            # Otherwise every span scores NaN and every answer comes back empty, with exit status 0.
            raise ValueError("the model's span scores are non-finite (NaN or inf) on real tokens; no answer would be "
                             "meaningful (a diverged run? check its weights and training log)")
        can_start = torch.zeros(mask.shape, dtype=torch.bool)
        can_end = torch.zeros(mask.shape, dtype=torch.bool)
        for row, w in enumerate(batch_indices):
            if answer_boundaries == "word":
                starts_w, ends_w = features.word_starts[w], features.word_ends[w]
            else:
                starts_w = ends_w = features.context_offsets[w][:, 0] >= 0
            can_start[row, : len(starts_w)] = torch.from_numpy(starts_w)
            can_end[row, : len(ends_w)] = torch.from_numpy(ends_w)
        # A context's literal [SEP] (JSQuAD's title separator) is never inside an answer.
        barrier = input_ids == sep_id if sep_id is not None else None
        scores, starts, ends = best_token_spans(
            logits.start, logits.end, can_start.to(device), can_end.to(device),
            max_answer_tokens=max_answer_tokens, n_best=n_best, barrier=barrier,
        )
        scores, starts, ends = scores.cpu().numpy(), starts.cpu().numpy(), ends.cpu().numpy()
        for row, w in enumerate(batch_indices):
            per_example[features.example_index[w]].append((w, scores[row], starts[row], ends[row]))
    answers: dict[str, str] = {}
    nbest: dict[str, list[Span]] = {}
    for ex_index, example in enumerate(examples):
        windows = sorted(per_example.get(ex_index, []), key=lambda item: item[0])
        spans = decode_example_spans(
            [w for w, *_ in windows],
            [s for _, s, _, _ in windows],
            [s for _, _, s, _ in windows],
            [e for *_, e in windows],
            features.context_offsets,
            n_best=n_best,
        )
        nbest[example.id] = spans
        answers[example.id] = example.context[spans[0].char_start : spans[0].char_end] if spans else ""
    seconds = time.perf_counter() - started
    model.train(was_training)
    return PredictionOutput(answers=answers, nbest=nbest, seconds=seconds)
