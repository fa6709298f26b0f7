"""Japanese tokenizer: normalisation → MeCab words → SentencePiece pieces, with exact offsets.

Every token carries the ``(start, end)`` character span of the *original* text it came from, so
QA answers (given as character offsets into the raw context) map to token spans exactly.

Pipeline for ``encode(text)``:

1. **Literal specials.** The original text is split on the literal strings ``[SEP]`` and
   ``[MASK]`` *before* normalisation, and each literal becomes its special id with the literal's
   exact span. JSQuAD contexts read ``"<title> [SEP] <paragraph>"`` and JGLUE's BERT read that
   literal as its separator token; we do the same instead of spelling it out as ``[``, ``sep``,
   ``]``. (Lower-casing would otherwise also make the literal indistinguishable from ``[sep]``.)
2. **Normalisation** (:mod:`nami.text.normalize`): NFKC + lower-case per character with an
   offset map; whitespace separates words and never becomes a token.
3. **Words** (:mod:`nami.text.segment`): MeCab (unidic-lite) segments each normalised chunk.
4. **Pieces**: SentencePiece, trained on the corpus' MeCab words, encodes each word on its own,
   so pieces never cross word boundaries. Characters outside the vocabulary become one
   ``[UNK]`` each, spanning exactly that character.

Special ids are fixed: ``[PAD]``=0, ``[UNK]``=1, ``[CLS]``=2, ``[SEP]``=3, ``[MASK]``=4.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece as spm
from tqdm import tqdm

from nami.text.normalize import NORMALIZATION_DESCRIPTION, NormalizedText, normalize
from nami.text.segment import MECAB_DESCRIPTION, word_spans, words

__all__ = [
    "CLS_ID",
    "MASK_ID",
    "PAD_ID",
    "SEP_ID",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "Encoding",
    "JapaneseTokenizer",
    "TokenizerError",
    "count_words",
    "split_literals",
    "train_tokenizer",
]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
LITERAL_SPECIALS = {"[SEP]": SEP_ID, "[MASK]": MASK_ID}
_LITERAL_RE = re.compile("|".join(re.escape(literal) for literal in LITERAL_SPECIALS))

FORMAT_VERSION = 1
MODEL_FILE = "spm.model"
CONFIG_FILE = "tokenizer.json"
MODEL_TYPES = ("unigram", "bpe")
MIN_VOCAB_SIZE = 16
# One piece per digit: answer boundaries inside numbers (gold "714年" in "1714年") become token
# boundaries, and no vocabulary is spent on number pieces. Measured on JSQuAD dev: +0.10 points of
# recoverable gold answers for 2.7% more context tokens.
SPLIT_DIGITS = True
_WORD_CACHE_LIMIT = 1_000_000


class TokenizerError(Exception):
    """A tokenizer cannot be trained, saved or loaded as asked."""


@dataclass(frozen=True)
class Encoding:
    """Token ids and, per token, its ``(start, end)`` character span in the original text.

    Spans are in order and never overlap: ``offsets[i][1] <= offsets[i + 1][0]``. Nearly every
    span is non-empty (``start < end``) and is the exact source of its token. The exception is a
    source character (cluster) that normalises to several characters which end up in different
    tokens (``㍿`` → ``株式|会社``, ``½`` → ``1|⁄|2``, ``℡`` → ``te|l``):

    * the first token with a character from it carries its span (``株式`` → the span of ``㍿``);
    * each following token made only of its characters is a *continuation*: it gets the empty span
      ``(end, end)`` at the end of that character (``会社`` → ``(e, e)``); the QA windows never
      start or end an answer on one (:mod:`nami.data.features`);
    * a token that starts inside it and goes on (``℡a`` → ``te|la``) spans only the characters
      after it (``la`` → the span of ``a``).

    Characters in no span are separators (whitespace and control characters) and format
    characters (``Cf``, e.g. zero-width space/joiner, soft hyphen, BOM) between tokens; a format
    character between two characters of the same token lies inside that token's span. Every other
    character lies in exactly one span (a literal ``[SEP]``/``[MASK]`` is one token spanning it).

    ``word_ids[i]`` numbers the MeCab word token ``i`` belongs to, like ``word_ids()`` of Hugging
    Face tokenizers: increasing along the text, equal for the pieces of one word (a literal special
    token is a word of its own). QA decoding uses it to begin and end answers on word boundaries.
    """

    ids: list[int]
    offsets: list[tuple[int, int]]
    word_ids: list[int]

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.offsets) == len(self.word_ids):
            raise ValueError(f"{len(self.ids)} ids, {len(self.offsets)} offsets and {len(self.word_ids)} word ids: "
                             "expected one of each per token")

    def __len__(self) -> int:
        return len(self.ids)


def split_literals(text: str) -> Iterator[tuple[int, int, int | None]]:
    """``(start, end, special_id)`` for literal specials, ``(start, end, None)`` for plain text."""
    pos = 0
    for match in _LITERAL_RE.finditer(text):
        if match.start() > pos:
            yield pos, match.start(), None
        yield match.start(), match.end(), LITERAL_SPECIALS[match.group()]
        pos = match.end()
    if pos < len(text):
        yield pos, len(text), None


def _token_span(norm: NormalizedText, start: int, end: int, claimed: int) -> tuple[int, int]:
    """Source span of the token made of normalised characters ``start..end-1``.

    Source characters before ``claimed`` already belong to earlier tokens, so the span starts at
    the first source cluster the token has to itself; a token with none (a continuation of an
    expanded character) gets the empty span at that character's end (see :class:`Encoding`).
    """
    source_start, source_end = norm.source_span(start, end)
    if source_start < claimed:
        first_own = bisect.bisect_left(norm.starts, claimed, start, end)
        source_start = norm.starts[first_own] if first_own < end else source_end
    return source_start, source_end


def _canonical_json(config: dict[str, Any]) -> bytes:
    return json.dumps(config, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


class JapaneseTokenizer:
    """A trained tokenizer; build one with :func:`train_tokenizer` or :meth:`load`."""

    def __init__(self, model: bytes, config: dict[str, Any]) -> None:
        self._model = model
        self._config = config
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model)
        except RuntimeError as exc:
            raise TokenizerError(f"corrupt SentencePiece model: {exc}") from exc
        reserved = range(min(len(SPECIAL_TOKENS), self._sp.get_piece_size()))
        pieces = tuple(self._sp.id_to_piece(i) for i in reserved)
        if pieces != SPECIAL_TOKENS:
            raise TokenizerError(f"SentencePiece model has specials {pieces}, expected {SPECIAL_TOKENS}")
        # word -> ((piece id, length in chars), ...); word frequencies are Zipfian, so this
        # cache serves nearly every word after the first few thousand texts.
        self._word_cache: dict[str, tuple[tuple[int, int], ...]] = {}

    # ----------------------------------------------------------------------------- encoding

    def encode(self, text: str) -> Encoding:
        """Tokens of ``text`` with original-text offsets; no ``[CLS]``/``[SEP]`` is added."""
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        word_ids: list[int] = []
        word = 0
        for start, end, special_id in split_literals(text):
            if special_id is not None:
                ids.append(special_id)
                offsets.append((start, end))
                word_ids.append(word)
                word += 1
                continue
            norm = normalize(text[start:end])
            claimed = 0  # source characters of this chunk before here belong to earlier tokens
            for word_start, word_end in word_spans(norm.text):
                pos = word_start
                for piece_id, length in self._word_pieces(norm.text[word_start:word_end]):
                    piece_start, piece_end = _token_span(norm, pos, pos + length, claimed)
                    ids.append(piece_id)
                    offsets.append((start + piece_start, start + piece_end))
                    word_ids.append(word)
                    claimed = piece_end
                    pos += length
                word += 1
        return Encoding(ids, offsets, word_ids)

    def _word_pieces(self, word: str) -> tuple[tuple[int, int], ...]:
        pieces = self._word_cache.get(word)
        if pieces is None:
            if len(self._word_cache) >= _WORD_CACHE_LIMIT:
                self._word_cache.clear()
            pieces = self._word_cache[word] = tuple(self._segment_word(word))
        return pieces

    def _segment_word(self, word: str) -> Iterator[tuple[int, int]]:
        """Pieces of one word; each out-of-vocabulary character is one ``[UNK]``.

        Known runs are encoded separately: SentencePiece would merge an unknown character with its
        neighbours into one ``[UNK]`` whose length we could not recover.
        """
        run_start = 0
        for i, char in enumerate(word):
            if self._sp.piece_to_id(char) == UNK_ID:
                yield from self._known_pieces(word[run_start:i])
                yield UNK_ID, 1
                run_start = i + 1
        yield from self._known_pieces(word[run_start:])

    def _known_pieces(self, run: str) -> list[tuple[int, int]]:
        if not run:
            return []
        pieces = self._sp.encode(run, out_type=str)
        if sum(map(len, pieces)) != len(run):  # identity normalisation + no dummy prefix
            raise TokenizerError(f"SentencePiece pieces {pieces} do not spell {run!r}")
        return [(self._sp.piece_to_id(piece), len(piece)) for piece in pieces]

    def decode(self, ids: Iterable[int]) -> str:
        """Concatenated pieces (best effort, for debugging: word spacing is not restored)."""
        return "".join(self.id_to_piece(int(i)) for i in ids)

    def id_to_piece(self, i: int) -> str:
        """The piece (or special token) with id ``i``."""
        if not 0 <= i < self.vocab_size:
            raise IndexError(f"token id {i} out of range for vocabulary of {self.vocab_size}")
        return self._sp.id_to_piece(i)

    # --------------------------------------------------------------------------- properties

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included."""
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def cls_id(self) -> int:
        return CLS_ID

    @property
    def sep_id(self) -> int:
        return SEP_ID

    @property
    def mask_id(self) -> int:
        return MASK_ID

    @property
    def config(self) -> dict[str, Any]:
        """The saved configuration (a copy)."""
        return json.loads(_canonical_json(self._config))

    @property
    def fingerprint(self) -> str:
        """Short sha256 of model + config: a checkpoint records it to detect a tokenizer mismatch."""
        digest = hashlib.sha256(self._model + b"\n" + _canonical_json(self._config))
        return digest.hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"JapaneseTokenizer(vocab_size={self.vocab_size}, "
            f"model_type={self._config.get('model_type')!r}, fingerprint={self.fingerprint!r})"
        )

    # Pickling (e.g. for DataLoader workers) rebuilds the SentencePiece processor from bytes.
    def __getstate__(self) -> dict[str, Any]:
        return {"model": self._model, "config": self._config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model"], state["config"])

    # ------------------------------------------------------------------------------ storage

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``spm.model`` and ``tokenizer.json`` into ``directory`` (created if needed)."""
        from nami.io import atomic_write

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        # Each file written to a temporary name and renamed: a full disk or a crash never leaves a
        # truncated spm.model under its real name.
        atomic_write(path / MODEL_FILE, lambda tmp: tmp.write_bytes(self._model))
        text = json.dumps(self._config, ensure_ascii=False, indent=2, sort_keys=True)
        atomic_write(path / CONFIG_FILE, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> JapaneseTokenizer:
        """Load a tokenizer saved by :meth:`save`; :class:`TokenizerError` if absent or corrupt."""
        path = Path(directory)
        missing = [name for name in (MODEL_FILE, CONFIG_FILE) if not (path / name).is_file()]
        if missing:
            raise TokenizerError(f"no tokenizer in {path}: missing {', '.join(missing)}")
        try:
            config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TokenizerError(f"corrupt {path / CONFIG_FILE}: {exc}") from exc
        if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
            found = config.get("format_version") if isinstance(config, dict) else None
            raise TokenizerError(f"{path / CONFIG_FILE}: format version {found!r}, expected {FORMAT_VERSION}")
        if config.get("special_tokens") != {token: i for i, token in enumerate(SPECIAL_TOKENS)}:
            raise TokenizerError(f"{path / CONFIG_FILE}: special tokens differ from {SPECIAL_TOKENS}")
        tokenizer = cls((path / MODEL_FILE).read_bytes(), config)
        if tokenizer.vocab_size != config.get("vocab_size"):
            raise TokenizerError(
                f"{path}: model has {tokenizer.vocab_size} pieces, config says {config.get('vocab_size')}"
            )
        return tokenizer


# ---------------------------------------------------------------------------------- training


def count_words(texts: Iterable[str], *, show_progress: bool = False) -> Counter[str]:
    """MeCab word frequencies of ``texts``, normalised exactly as :meth:`JapaneseTokenizer.encode` does."""
    counts: Counter[str] = Counter()
    for text in tqdm(texts, desc="MeCab", unit=" texts", disable=not show_progress):
        for chunk in _LITERAL_RE.split(text):
            counts.update(words(normalize(chunk).text))
    return counts


def _check_options(texts: Iterable[str], vocab_size: int, model_type: str) -> None:
    if isinstance(texts, str):
        raise TokenizerError("texts must be an iterable of strings, not a single string")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(f"vocab_size must be an int >= {MIN_VOCAB_SIZE}, got {vocab_size!r}")
    if model_type not in MODEL_TYPES:
        raise TokenizerError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike[str],
    *,
    vocab_size: int = 32000,
    model_type: str = "unigram",
    show_progress: bool = True,
    corpus_description: str = "user-supplied texts",
    verbose: bool = False,
) -> JapaneseTokenizer:
    """Train a tokenizer on ``texts``, save it to ``out_dir`` and return it.

    SentencePiece learns pieces from the corpus' MeCab word frequencies (``word<TAB>count``
    lines), so the vocabulary is spent on within-word units. ``vocab_size`` is an upper bound
    (``hard_vocab_limit=False``): a corpus with too few distinct words yields a smaller
    vocabulary instead of failing; check :attr:`JapaneseTokenizer.vocab_size`. It must still
    hold every character of the corpus (``character_coverage=1.0``), else SentencePiece's
    error is raised as :class:`TokenizerError`. ``verbose`` shows SentencePiece's training log.
    """
    _check_options(texts, vocab_size, model_type)
    counts = count_words(texts, show_progress=show_progress)
    if not counts:
        raise TokenizerError("cannot train a tokenizer on an empty corpus (the texts contain no words)")
    sentencepiece_options: dict[str, Any] = {
        "vocab_size": vocab_size,
        "model_type": model_type,
        "character_coverage": 1.0,
        "byte_fallback": False,
        "add_dummy_prefix": False,
        "normalization_rule_name": "identity",  # normalised by nami.text.normalize
        "remove_extra_whitespaces": False,
        "split_digits": SPLIT_DIGITS,
        "hard_vocab_limit": False,
        "pad_id": PAD_ID,
        "unk_id": UNK_ID,
        "bos_id": -1,
        "eos_id": -1,
        "pad_piece": SPECIAL_TOKENS[PAD_ID],
        "unk_piece": SPECIAL_TOKENS[UNK_ID],
        # Control symbols take the next ids (2, 3, 4) and are never produced from text.
        "control_symbols": list(SPECIAL_TOKENS[CLS_ID:]),
    }
    # In-memory input and output: no temporary paths end up in the model, so the same corpus and
    # options give byte-identical models (and fingerprints).
    model_writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=(f"{word}\t{count}" for word, count in counts.most_common()),
            input_format="tsv",
            model_writer=model_writer,
            num_threads=min(2, os.cpu_count() or 1),
            minloglevel=0 if verbose else 2,
            **sentencepiece_options,
        )
    except RuntimeError as exc:
        raise TokenizerError(f"SentencePiece training failed: {exc}") from exc
    model = model_writer.getvalue()
    config = {
        "format_version": FORMAT_VERSION,
        "vocab_size": spm.SentencePieceProcessor(model_proto=model).get_piece_size(),
        "model_type": model_type,
        "special_tokens": {token: i for i, token in enumerate(SPECIAL_TOKENS)},
        "literal_specials": LITERAL_SPECIALS,
        "normalization": NORMALIZATION_DESCRIPTION,
        "word_segmentation": MECAB_DESCRIPTION,
        "sentencepiece": sentencepiece_options,
        "training_corpus": {
            "description": corpus_description,
            "distinct_words": len(counts),
            "words": sum(counts.values()),
        },
    }
    tokenizer = JapaneseTokenizer(model, config)
    tokenizer.save(out_dir)
    return tokenizer
