"""MeCab word segmentation (fugashi + unidic-lite) with character spans.

SentencePiece pieces are learned and applied *inside* MeCab words, so no token ever straddles a
word boundary — the boundaries that extractive-QA answers almost always respect.
"""

from __future__ import annotations

import os
from importlib import metadata

import fugashi

__all__ = ["MECAB_DESCRIPTION", "word_spans", "words"]


def _dictionary_version() -> str:
    try:
        return f"unidic-lite {metadata.version('unidic-lite')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - fugashi found another dictionary
        return "unknown dictionary"


MECAB_DESCRIPTION = f"MeCab via fugashi, {_dictionary_version()}"

# One tagger per process: a forked worker builds its own instead of sharing the parent's MeCab state.
_taggers: dict[int, fugashi.GenericTagger] = {}


def _tagger() -> fugashi.GenericTagger:
    pid = os.getpid()
    tagger = _taggers.get(pid)
    if tagger is None:
        _taggers.clear()
        # Wakati (space-separated surfaces) output skips building per-word feature objects.
        tagger = _taggers[pid] = fugashi.Tagger("-Owakati")
    return tagger


def words(text: str) -> list[str]:
    """Surfaces of the MeCab words of ``text``; whitespace separates words and is dropped."""
    if not text or text.isspace():
        return []
    return _tagger().parse(text).split()


def word_spans(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` spans in ``text`` of its MeCab words, in order.

    The spans are recovered by walking ``text``; anything MeCab skips (its own notion of
    whitespace) falls between two spans.
    """
    spans: list[tuple[int, int]] = []
    pos = 0
    for word in words(text):
        start = text.find(word, pos)
        if start < 0:
            raise RuntimeError(f"MeCab returned {word!r}, which is not in the input after position {pos}")
        pos = start + len(word)
        spans.append((start, pos))
    return spans
