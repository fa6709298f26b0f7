"""Generative QA data: ``[CLS] context [SEP] question [SEP]`` prompts with the answer as the target.

The model reads the prompt and is trained to write the answer's tokens followed by ``[SEP]``
(nami's end-of-sequence token); only those tokens carry loss. A context too long for
``max_length`` is cut to a window of whole tokens — around the gold answer for training, from the
start for prediction — and the window's character offset is kept, so a generated answer can be
found in the original context (:func:`locate_answer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from nami.data.batching import PAD_MULTIPLE
from nami.data.squad import QAExample


@dataclass
class GenerativeExample:
    """One prompt (``[CLS] context [SEP] question [SEP]``) and, for training, its target ids."""

    prompt: list[int]
    target: list[int]  # answer ids + [SEP]; empty for prediction
    context_ids: list[int]  # the context tokens in the prompt
    context_offsets: list[tuple[int, int]]  # their character spans in the example's context


def build_generative(examples: Sequence[QAExample], tokenizer, max_length: int, *, max_question_tokens: int = 64,
                     max_answer_tokens: int = 16, training: bool = True) -> list[GenerativeExample]:
    """Prompts (and targets) of ``examples``; training drops examples whose answer cannot fit.

    Prediction keeps every example: its prompt plus ``max_answer_tokens + 1`` generated tokens fit
    in ``max_length`` (a long question is cut further, so that 4 context tokens still fit)."""
    # [CLS] ≥4 context tokens [SEP] ≥1 question token [SEP], then the answer and its [SEP]
    shortest = 4 + 1 + 3 + max_answer_tokens + 1
    if max_length < shortest:
        raise ValueError(f"generative QA: max_length={max_length} cannot hold a prompt and an answer of "
                         f"max_answer_tokens={max_answer_tokens}; expected max_length >= {shortest}")
    question_room = max_question_tokens if training else min(max_question_tokens, max_length - shortest + 1)
    out = []
    for ex in examples:
        question = tokenizer.encode(ex.question).ids[:question_room]
        context = tokenizer.encode(ex.context)
        target: list[int] = []
        if training:
            target = [*tokenizer.encode(ex.answers[0].text).ids, tokenizer.sep_id]
            if len(target) > max_answer_tokens + 1:
                continue
        room = max_length - len(question) - 3 - (len(target) if training else max_answer_tokens + 1)
        if room < 4:  # training only: prediction's questions are cut to leave 4 context tokens
            continue
        start = 0
        if training and len(context.ids) > room:
            answer = ex.answers[0]
            first = next((i for i, (s, e) in enumerate(context.offsets) if e > answer.start), 0)
            start = max(0, min(first - room // 2, len(context.ids) - room))
        ids = list(context.ids[start : start + room])
        offsets = [tuple(o) for o in context.offsets[start : start + room]]
        prompt = [tokenizer.cls_id, *ids, tokenizer.sep_id, *question, tokenizer.sep_id]
        out.append(GenerativeExample(prompt, target, ids, offsets))
    if not out:
        raise ValueError("generative QA: no example fits max_length (raise --max-length)")
    return out


class GenerativeCollator:
    """Example indices → ``input_ids / attention_mask (B, S)`` of prompt + target, ``targets (B, S)``:
    the next token where it is an answer token or the final ``[SEP]``, else ``-100``."""

    def __init__(self, examples: Sequence[GenerativeExample], *, pad_id: int, pad_multiple: int = PAD_MULTIPLE) -> None:
        self.examples = examples
        self.pad_id = pad_id
        self.pad_multiple = pad_multiple

    def __call__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = [self.examples[i] for i in indices]
        lengths = [len(r.prompt) + len(r.target) for r in rows]
        width = -(-max(lengths) // self.pad_multiple) * self.pad_multiple
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        targets = np.full((len(rows), width), -100, dtype=np.int64)
        for b, row in enumerate(rows):
            seq = row.prompt + row.target
            input_ids[b, : len(seq)] = seq
            p = len(row.prompt)
            targets[b, p - 1 : p - 1 + len(row.target)] = row.target  # position t predicts token t + 1
        return {"input_ids": torch.from_numpy(input_ids),
                "attention_mask": torch.arange(width)[None, :] < torch.tensor(lengths)[:, None],
                "targets": torch.from_numpy(targets)}


def locate_span(generated: Sequence[int], example: GenerativeExample) -> tuple[int, int] | None:
    """Character span ``(start, end)`` in the original context of the first place where the generated
    token ids occur contiguously among the prompt's context tokens, else None."""
    ids, n = example.context_ids, len(generated)
    if n:
        for start in range(len(ids) - n + 1):
            if ids[start : start + n] == list(generated):
                return example.context_offsets[start][0], example.context_offsets[start + n - 1][1]
    return None


def span_constraint(example: GenerativeExample, eos_id: int):
    """Decoding constrained to spans of the context (``--constrain context``): a function from the
    tokens generated so far to the tokens that may come next — any context token first, then only a
    token that continues one of the places where the answer so far occurs among the prompt's context
    tokens, or ``eos_id`` — so every answer is a contiguous span of the context (found by
    :func:`locate_span`)."""
    ids = list(example.context_ids)
    first = sorted(set(ids))

    def allowed(generated: Sequence[int]) -> list[int]:
        n = len(generated)
        if n == 0:
            return first
        tail = list(generated)
        following = {ids[p + n] for p in range(len(ids) - n) if ids[p : p + n] == tail}
        return sorted(following | {eos_id})

    return allowed


def locate_answer(generated: Sequence[int], example: GenerativeExample, context: str) -> tuple[str, bool]:
    """The generated answer as text of the original ``context``: where :func:`locate_span` finds it,
    the exact original characters (``True``); otherwise ``("", False)``."""
    span = locate_span(generated, example)
    return (context[span[0] : span[1]], True) if span else ("", False)
