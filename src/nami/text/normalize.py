"""Text normalisation that keeps an exact map back to the original characters.

QA labels are character offsets into the *original* context, so normalisation may never lose
track of where a character came from. We therefore normalise piece by piece instead of calling
NFKC on the whole string:

* each *cluster* (a character plus any combining marks that follow it, including the half-width
  sound marks ``ﾞ``/``ﾟ``) is NFKC-normalised and lower-cased on its own, so ``ｶﾞ`` and ``カ`` +
  U+3099 both become ``ガ`` like the precomposed form. Whitespace, control and format characters
  never take marks: a mark after them starts its own cluster, so a visible token never spans a
  separator (NFKC composes nothing with them, so the normalised text is the same either way);
* every output character records the ``[start, end)`` span of the cluster it came from; an
  expansion such as ``㍿`` → ``株式会社`` maps all four characters to the one source character
  (:class:`nami.text.tokenizer.Encoding` explains how tokens share such a character);
* each whitespace or control character (Unicode ``Cc``: NUL, ESC, DEL, C1 controls, ...) becomes
  ``" "`` — a separator that never ends up inside a token — and invisible format characters
  (``Cf``: zero-width space/joiners, soft hyphen, BOM, bidi marks) are dropped, so MeCab sees the
  text around them as contiguous;
* a lone surrogate (``"\\udcff"``: what Python makes of undecodable bytes in a command-line
  argument, or a ``"\\ud800"`` escape in JSON) cannot be passed to MeCab and becomes U+FFFD
  (``�``), which the tokenizer encodes like any other character (as ``[UNK]`` unless the training
  corpus had it), with the surrogate's span.

Whole-string NFKC + lower-casing gives the same text on every JaQuAD train and JSQuAD dev context
and question (checked when this was written); the cluster-wise form only adds the offset map.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

__all__ = ["NORMALIZATION_DESCRIPTION", "NormalizedText", "is_separator", "normalize"]

NORMALIZATION_DESCRIPTION = (
    "NFKC + lower-case per cluster (base character + following combining marks, incl. U+FF9E/U+FF9F); "
    "whitespace and control characters -> separator ' '; format characters (Cf) dropped"
)

SEPARATOR = " "
REPLACEMENT_CHARACTER = "\ufffd"
# Half-width katakana sound marks are not Unicode combining marks, but NFKC composes them with the
# preceding kana, so they must be normalised together with it.
_HALFWIDTH_SOUND_MARKS = frozenset("\uff9e\uff9f")
_char_cache: dict[str, str] = {}


@dataclass(frozen=True)
class NormalizedText:
    """Normalised text plus, for each of its characters, the source span in the original."""

    text: str
    starts: list[int]
    ends: list[int]

    def source_span(self, start: int, end: int) -> tuple[int, int]:
        """Original ``[start, end)`` span covered by normalised characters ``start..end-1``."""
        return self.starts[start], self.ends[end - 1]


def is_separator(char: str) -> bool:
    """Whitespace and control characters separate words and never belong to a token."""
    return char.isspace() or unicodedata.category(char) == "Cc"


def _normalize_cluster(cluster: str) -> str:
    out = []
    for char in unicodedata.normalize("NFKC", cluster).lower():
        category = unicodedata.category(char)
        if is_separator(char):
            out.append(SEPARATOR)
        elif category == "Cs":
            out.append(REPLACEMENT_CHARACTER)
        elif category != "Cf":
            out.append(char)
    return "".join(out)


def _normalize_char(char: str) -> str:
    # Texts reuse a few thousand distinct characters: memoise the per-character work.
    out = _char_cache.get(char)
    if out is None:
        out = _char_cache[char] = _normalize_cluster(char)
    return out


def _is_combining(char: str) -> bool:
    return char in _HALFWIDTH_SOUND_MARKS or unicodedata.combining(char) != 0


def _takes_marks(char: str) -> bool:
    """Whether combining marks after ``char`` belong to its cluster (not after separators/format chars)."""
    return not is_separator(char) and unicodedata.category(char) != "Cf"


def normalize(text: str) -> NormalizedText:
    """Normalise ``text`` (see the module docstring) and keep the offset map."""
    pieces: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i, n = 0, len(text)
    while i < n:
        j = i + 1
        if _takes_marks(text[i]):
            while j < n and _is_combining(text[j]):
                j += 1
        out = _normalize_char(text[i]) if j == i + 1 else _normalize_cluster(text[i:j])
        pieces.append(out)
        starts.extend([i] * len(out))
        ends.extend([j] * len(out))
        i = j
    return NormalizedText("".join(pieces), starts, ends)
