"""QA windows: ``[CLS] question [SEP] context-window [SEP]`` with start/end token labels.

Long contexts are cut into overlapping windows. ``doc_stride`` follows the original BERT
``run_squad.py`` meaning: the distance in tokens between the starts of consecutive windows.
A window that does not contain the whole (first) gold answer is labelled ``start = end = 0``
(the ``[CLS]`` position). Every window keeps the character span of each context token, so a
predicted token span maps back to the exact substring of the original context.

Answers begin and end on MeCab word boundaries: ``word_starts`` / ``word_ends`` flag the context
tokens that begin / end a word (SentencePiece pieces never cross words, see :mod:`nami.text`), and
decoding with ``answer_boundaries="word"`` (:func:`nami.evaluation.predict.predict_answers`) only
picks spans from such a start to such an end — the analogue of BERT's ``run_squad.py`` mapping its
predictions back to whole whitespace words. 99.4 % of JSQuAD dev gold answers are word-aligned
(``results/answer_boundaries.md``). Training labels are token spans and do not depend on it.

Two kinds of context token can never start or end an answer (their window offsets are
``(-1, -1)``, like the question's): a literal ``[SEP]``, and a *continuation* token — the empty
span ``(e, e)`` of the second and later tokens of one expanded source character (``㍿`` →
``株式|会社``, see :class:`nami.text.Encoding`). An answer that ends with such a character is
labelled up to the character's first token, whose span already covers the whole character, so
the decoded substring is the same and an empty answer can never be predicted.

``question_match`` flags the context tokens whose MeCab word also occurs in the question (the
*exact match* input feature of DrQA, Chen et al. 2017: "Reading Wikipedia to Answer Open-Domain
Questions"). Two words are equal when their normalised text is (NFKC + lower case), which is when
their SentencePiece pieces are: pieces are a deterministic function of the normalised word (see
:mod:`nami.text`), so the comparison needs no text. Words holding a special token (``[UNK]``,
a literal ``[SEP]``) never match. With ``TrainConfig.question_match`` the collator turns the flag
into a third token type (:class:`nami.data.batching.QACollator`); the encoders are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from nami.data.choices import ANSWER_BOUNDARIES  # noqa: F401  (re-exported: word or token answer boundaries)
from nami.data.squad import QAExample


class Tokenizer(Protocol):
    cls_id: int
    sep_id: int
    pad_id: int

    def encode(self, text: str): ...  # -> nami.text.Encoding (ids, offsets, word_ids)


@dataclass(frozen=True)
class FeatureConfig:
    """How examples become fixed-size windows.

    Questions are cut to ``min(max_question_tokens, max_length // 2)`` tokens so that at least
    half of every window is context.
    """

    max_length: int = 384
    doc_stride: int = 128
    max_question_tokens: int = 64

    def __post_init__(self) -> None:
        if self.max_question_tokens < 1:
            raise ValueError(f"max_question_tokens={self.max_question_tokens}: expected >= 1")
        if self.max_length < 8:
            raise ValueError(f"max_length={self.max_length}: expected >= 8")
        if self.doc_stride < 1:
            raise ValueError(f"doc_stride={self.doc_stride}: expected >= 1")

    @classmethod
    def from_config(cls, config) -> "FeatureConfig":
        """The windows of a training config (any object with ``max_length``, ``doc_stride`` and
        ``max_question_tokens``, e.g. :class:`nami.runs.config.TrainConfig`)."""
        return cls(config.max_length, config.doc_stride, config.max_question_tokens)


@dataclass
class QAFeatures:
    """Columnar windows (one entry per window).

    ``context_offsets[i]`` is an ``(L_i, 2)`` int array: the character span in the example's
    context of each input token, ``(-1, -1)`` for question/special tokens (not selectable).
    ``word_starts[i]`` / ``word_ends[i]`` are ``(L_i,)`` bool arrays: True for a selectable context
    token that begins / ends a MeCab word (the last token of a word that has a span of its own).
    ``question_match[i]`` is ``(L_i,)`` bool: True for a context token whose word also occurs in the
    question (see the module docstring). ``context_starts[i]``: where the context begins (after
    ``[CLS] question [SEP]``; not the first ``[SEP]`` id, which a question may contain literally).
    """

    input_ids: list[np.ndarray] = field(default_factory=list)
    context_offsets: list[np.ndarray] = field(default_factory=list)
    word_starts: list[np.ndarray] = field(default_factory=list)
    word_ends: list[np.ndarray] = field(default_factory=list)
    question_match: list[np.ndarray] = field(default_factory=list)
    context_starts: list[int] = field(default_factory=list)  # len([CLS] question [SEP]): token type 1 from here
    start_positions: list[int] = field(default_factory=list)
    end_positions: list[int] = field(default_factory=list)
    example_index: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))

    @property
    def has_answer(self) -> np.ndarray:
        return np.asarray(self.start_positions) > 0

    def subset(self, indices: Sequence[int]) -> "QAFeatures":
        out = QAFeatures()
        for i in indices:
            out.input_ids.append(self.input_ids[i])
            out.context_offsets.append(self.context_offsets[i])
            out.word_starts.append(self.word_starts[i])
            out.word_ends.append(self.word_ends[i])
            out.question_match.append(self.question_match[i])
            out.context_starts.append(self.context_starts[i])
            out.start_positions.append(self.start_positions[i])
            out.end_positions.append(self.end_positions[i])
            out.example_index.append(self.example_index[i])
        return out

    def for_examples(self, examples: Sequence[int]) -> "QAFeatures":
        """The windows of the given examples, re-indexed to their positions in ``examples`` (the
        features of ``[all_examples[i] for i in examples]``: a shard for distributed evaluation)."""
        position = {e: p for p, e in enumerate(examples)}
        out = self.subset([i for i, e in enumerate(self.example_index) if e in position])
        out.example_index = [position[e] for e in out.example_index]
        return out


def answer_token_span(offsets: np.ndarray, char_start: int, char_end: int) -> tuple[int, int] | None:
    """Indices (first, last) of the context tokens covering ``[char_start, char_end)``.

    ``offsets`` are ordered, non-overlapping spans (:class:`nami.text.Encoding`). Neither index is
    ever an empty-span continuation token: the first token ending after ``char_start`` is never
    one (the token before a continuation ends at the same place), and trailing continuations are
    dropped from the end. ``None`` when no non-empty token lies in the range.
    """
    if len(offsets) == 0:
        return None
    first = int(np.searchsorted(offsets[:, 1], char_start, side="right"))  # first token ending after start
    last = int(np.searchsorted(offsets[:, 0], char_end, side="left")) - 1  # last token starting before end
    while last >= first and offsets[last, 0] == offsets[last, 1]:
        last -= 1
    if first >= len(offsets) or last < first:
        return None
    return first, last


def word_edges(word_ids: Sequence[int], selectable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)``: per token, whether it begins / ends its word among ``selectable`` tokens.

    A word's first token begins it and its last *selectable* token ends it, so a word whose last
    pieces are empty-span continuations (``㍿`` → ``株式|会社`` inside one word) still ends on the
    token whose span covers the whole character. Unselectable tokens neither begin nor end.
    """
    word_ids = np.asarray(word_ids, dtype=np.int64)
    selectable = np.asarray(selectable, dtype=bool)
    starts = np.ones(len(word_ids), dtype=bool)
    starts[1:] = word_ids[1:] != word_ids[:-1]
    ends = np.zeros(len(word_ids), dtype=bool)
    chosen = np.flatnonzero(selectable)  # the last selectable token of each word ends it
    last_of_word = np.ones(len(chosen), dtype=bool)
    last_of_word[:-1] = word_ids[chosen[1:]] != word_ids[chosen[:-1]]
    ends[chosen[last_of_word]] = True
    return starts & selectable, ends


def word_keys(ids: Sequence[int], word_ids: Sequence[int], special_ids: frozenset[int],
              vocabulary: dict[tuple[int, ...], int]) -> np.ndarray:
    """Per token, an integer naming its word (equal piece sequences get equal keys), ``-1`` for words
    holding a special token. ``vocabulary`` maps piece sequences to keys and grows as words are seen.
    """
    ids = np.asarray(ids, dtype=np.int64)
    word_ids = np.asarray(word_ids, dtype=np.int64)
    keys = np.full(len(ids), -1, dtype=np.int64)
    edges = [0, *(np.flatnonzero(np.diff(word_ids)) + 1).tolist(), len(ids)]
    for start, end in zip(edges[:-1], edges[1:]):
        word = tuple(ids[start:end].tolist())
        if word and special_ids.isdisjoint(word):
            keys[start:end] = vocabulary.setdefault(word, len(vocabulary))
    return keys


def special_token_ids(tokenizer) -> frozenset[int]:
    """The ids of ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (those the tokenizer has)."""
    names = ("pad_id", "unk_id", "cls_id", "sep_id", "mask_id")
    return frozenset(int(getattr(tokenizer, name)) for name in names if hasattr(tokenizer, name))


def context_tokens(encoding, sep_id: int) -> tuple[np.ndarray, ...]:
    """``(ids, offsets, selectable_offsets, word_starts, word_ends)`` of one encoded context.

    A literal ``[SEP]`` in the context (JSQuAD's ``title [SEP] paragraph``) is a separator, never
    part of an answer, and an empty-span continuation token would make an empty answer: both get
    ``(-1, -1)`` in ``selectable_offsets`` and neither begins nor ends a word (:func:`word_edges`).
    """
    ids = np.asarray(encoding.ids, dtype=np.int64)
    offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    unselectable = (ids == sep_id) | (offsets[:, 0] == offsets[:, 1])
    selectable_offsets = offsets.copy()
    selectable_offsets[unselectable] = -1
    starts, ends = word_edges(encoding.word_ids, ~unselectable)
    return ids, offsets, selectable_offsets, starts, ends


def build_features(
    examples: Sequence[QAExample],
    tokenizer: Tokenizer,
    config: FeatureConfig = FeatureConfig(),
    *,
    show_progress: bool = True,
    desc: str = "windows",
) -> QAFeatures:
    """Tokenize examples (each distinct context once) and cut them into labelled windows."""
    features = QAFeatures()
    context_cache: dict[str, tuple[np.ndarray, ...]] = {}
    specials = special_token_ids(tokenizer)
    vocabulary: dict[tuple[int, ...], int] = {}
    for ex_index, example in enumerate(tqdm(examples, desc=desc, disable=not show_progress, unit="q")):
        question_encoding = tokenizer.encode(example.question)
        question_length = min(config.max_question_tokens, config.max_length // 2)
        question = question_encoding.ids[:question_length]
        question_keys = word_keys(question_encoding.ids, question_encoding.word_ids, specials, vocabulary)
        question_keys = question_keys[:question_length]
        if example.context not in context_cache:
            encoding = tokenizer.encode(example.context)
            keys = word_keys(encoding.ids, encoding.word_ids, specials, vocabulary)
            context_cache[example.context] = (*context_tokens(encoding, tokenizer.sep_id), keys)
        ctx_ids, ctx_offsets, ctx_selectable, ctx_word_starts, ctx_word_ends, ctx_keys = context_cache[example.context]
        ctx_match = np.isin(ctx_keys, question_keys[question_keys >= 0])
        answer = None
        if example.answers:
            gold = example.answers[0]
            answer = answer_token_span(ctx_offsets, gold.start, gold.start + len(gold.text))
        prefix = np.asarray([tokenizer.cls_id, *question, tokenizer.sep_id], dtype=np.int64)
        room = config.max_length - len(prefix) - 1
        step = min(config.doc_stride, room)
        window_start = 0
        while True:
            window_end = min(window_start + room, len(ctx_ids))
            ids = np.concatenate([prefix, ctx_ids[window_start:window_end], [tokenizer.sep_id]])
            offsets = np.full((len(ids), 2), -1, dtype=np.int64)
            in_window = slice(len(prefix), len(prefix) + window_end - window_start)
            offsets[in_window] = ctx_selectable[window_start:window_end]
            # A word cut by the window's left edge has no start here (an overlapping window has it);
            # one cut by the right edge has no end.
            word_starts = np.zeros(len(ids), dtype=bool)
            word_ends = np.zeros(len(ids), dtype=bool)
            word_starts[in_window] = ctx_word_starts[window_start:window_end]
            word_ends[in_window] = ctx_word_ends[window_start:window_end]
            question_match = np.zeros(len(ids), dtype=bool)
            question_match[in_window] = ctx_match[window_start:window_end]
            start = end = 0
            if answer is not None and window_start <= answer[0] and answer[1] < window_end:
                start = answer[0] - window_start + len(prefix)
                end = answer[1] - window_start + len(prefix)
            features.input_ids.append(ids)
            features.context_offsets.append(offsets)
            features.word_starts.append(word_starts)
            features.word_ends.append(word_ends)
            features.question_match.append(question_match)
            features.context_starts.append(len(prefix))
            features.start_positions.append(start)
            features.end_positions.append(end)
            features.example_index.append(ex_index)
            if window_end >= len(ctx_ids):
                break
            window_start += step
    return features
